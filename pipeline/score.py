"""The numbers of an export: a run's predictions on a cache, scored next to both baselines.

pred = predict(run, cache, device)                    # [N, T] float32, through loop's evaluate_model
scores = score_predictions(run, cache, pred)          # model / mean_envelope / shuffled blocks, per clip
metrics = metrics_record(run, cache, scores, amp)     # metrics.json
scores = unscored(cache, pred)                        # a cache without targets: predictions, no metric
write_predictions_h5(...), write_predictions_csv(...)

Predictions go through `evaluate_model`, the function training validates with every epoch, under
the autocast the run trained with: "export scores what training scored" holds by construction. The
model and both baselines go through the same `metrics.evaluate`.

This module owns the predictions, the baselines' inputs and the files that hold numbers
(predictions.h5, predictions.csv, metrics.json's content). It does not decide which features fit a
run (`pipeline.run_features`) and draws nothing (`pipeline.figures`, `pipeline.report`).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm

from pipeline import metrics as M
from pipeline.errors import FoleyError
from pipeline.fsio import atomic_write
from pipeline.run_features import TrainedRun, run_extract_settings, train_cache_of
from pipeline.runs import RunCheckpoint

SHUFFLE_SEED = 0            # derangement of the `shuffled` baseline
PREDICT_BATCH = 16          # clips per head forward
ENVELOPE_SIZE = 32          # frame size when training videos are decoded only for their audio envelope
H5_STR = h5py.string_dtype("utf-8")
CSV_CLIP_COLUMNS = ("seed_category", "pearson", "peak_error", "pred_peak", "target_peak",
                    "n_target_onsets", "n_pred_onsets", "mae", "bce")


# ----------------------------------------------------------------------------- prediction

def prediction_amp(run: TrainedRun, device: torch.device) -> str:
    """The autocast predictions run under: the run's own ("bf16", "fp16" or "off"; fp16 → off on
    CPU, which has no fp16 LSTM)."""
    amp = run.config.get("amp", "off")
    if amp not in ("bf16", "fp16") or (amp == "fp16" and device.type == "cpu"):
        return "off"
    return amp


class _InOrder:
    """The cache in order as evaluate_model's batches: {"inputs" [B, T, d] transformed on `device`,
    "target" [B, T], "length" [B], "index" [B]}, like the training loader gives them."""

    def __init__(self, run: TrainedRun, cache, device: torch.device, batch_size: int):
        self.run, self.cache, self.device, self.batch_size = run, cache, device, batch_size

    def __len__(self) -> int:
        return -(-len(self.cache) // self.batch_size)

    def __iter__(self):
        n = len(self.cache)
        for lo in range(0, n, self.batch_size):
            index = np.arange(lo, min(n, lo + self.batch_size))
            batch = self.cache.read_many(index)
            features = torch.from_numpy(batch["features"]).to(self.device)     # [B, T, D] stored dtype
            length = torch.from_numpy(batch["length"])
            yield {"inputs": self.run.transform(features, length), "target": torch.from_numpy(batch["envelope"]),
                   "length": length, "index": torch.from_numpy(index)}


def predict(run: TrainedRun, cache, device: torch.device, batch_size: int = PREDICT_BATCH,
            progress: bool = False) -> np.ndarray:
    """Head probabilities [N, T] float32 for every clip of `cache`, in cache order (padding kept)."""
    from pipeline.loop import evaluate_model

    out = evaluate_model(run.head, _InOrder(run, cache, device, batch_size), device, prediction_amp(run, device),
                         progress=progress)
    return out["pred"]


# ----------------------------------------------------------------------------- the train mean

def train_mean_envelope(run: TrainedRun, progress: bool = False) -> tuple[np.ndarray, str]:
    """The `mean_envelope` baseline [T]: per-frame mean of the train set's envelopes (valid frames).

    Returns (mean [T] float64, where it came from). Training does not store the mean; it is
    computed from, in order: the train cache the run's config names (envelopes only, no feature is
    read); for a finetune run started from --init-head, that head's train cache; else the run's
    training videos (config `videos` + `annotations`), decoded for their audio envelope.
    """
    from pipeline.cache import FeatureCache

    candidates = [run.train_cache]
    init_head = run.options.get("init_head")
    if init_head and Path(init_head).is_file():
        try:
            candidates.append(train_cache_of(RunCheckpoint.read(init_head).config or {}))
        except FoleyError:      # an unreadable --init-head only removes one candidate
            pass
    for path in candidates:
        if path is not None and (Path(path) / "cache.json").is_file():
            train = FeatureCache(path)
            return M.mean_envelope(train.envelopes, train.lengths), f"train cache {path}"
    videos, annotations = run.options.get("videos"), run.options.get("annotations")
    if videos and annotations and Path(videos).is_dir():
        return _mean_envelope_from_videos(run, Path(videos), Path(annotations), progress), \
            f"training videos {videos}"
    raise FoleyError(f"the mean_envelope baseline needs the run's training envelopes: {run.dir} names no train "
                     f"cache that still exists ({candidates[0]}) and no training videos")


def _mean_envelope_from_videos(run: TrainedRun, videos: Path, annotations: Path, progress: bool) -> np.ndarray:
    """Train mean envelope [T] from the run's training videos (audio decoded, frames at a tiny size)."""
    from pipeline.data import find_video, load_annotations
    from pipeline.media import FaultyVideo, load_clip

    options, settings = run.options, run_extract_settings(run)
    entries = load_annotations(annotations, classes=options.get("classes", "sound12"),
                               labels_path=options.get("labels"), videos=videos,
                               window_stride=options.get("window_stride"), frames=settings["frames"],
                               fps=settings["fps"])
    envelopes, lengths = [], []
    for a in tqdm(entries, desc="train envelopes", unit="clip", disable=not progress, leave=False):
        try:
            clip = load_clip(find_video(videos, a), settings["frames"], settings["fps"], ENVELOPE_SIZE,
                             reduce=settings["envelope_reduce"], threads=1, start=a.start)
        except FaultyVideo:
            continue
        envelopes.append(clip.envelope)
        lengths.append(clip.length)
    if not envelopes:
        raise FoleyError(f"none of the training videos in {videos} could be decoded for the mean_envelope baseline")
    return M.mean_envelope(np.stack(envelopes), np.asarray(lengths))


# ----------------------------------------------------------------------------- scoring

@dataclass
class Scores:
    """Everything export writes about a cache's clips. Arrays are in cache order. A cache without
    targets (`unscored`) has target None and no blocks, per-clip metrics or seed rows."""
    ids: list[str]
    labels: list[str]
    length: np.ndarray          # [N] int64 real frames
    target: np.ndarray | None   # [N, T] float64 envelopes; None: the cache holds no targets
    pred: np.ndarray            # [N, T] float32 head probabilities
    fps: float
    blocks: dict                # {"model", "mean_envelope", "shuffled"}: metrics.evaluate() each
    clip: dict                  # metrics.per_clip() of the model: [N] arrays
    seed_rows: list[dict]       # metrics.seed_table() rows
    train_mean_source: str


def score_predictions(run: TrainedRun, cache, pred: np.ndarray, progress: bool = False) -> Scores:
    """Score `pred` [N, T] against the cache's envelopes, next to both baselines."""
    from pipeline.data import SOUND12

    labels, length = cache.labels, cache.lengths.astype(np.int64)
    target = cache.envelopes.astype(np.float64)
    train_mean, source = train_mean_envelope(run, progress)
    if train_mean.shape != (cache.frames,):
        raise FoleyError(f"the train mean envelope has {train_mean.shape[0]} frames, the cache {cache.frames}")
    base = M.baselines(target, length, train_mean, seed=SHUFFLE_SEED, pred=pred)
    blocks = {"model": M.evaluate(pred, target, length, labels=labels)}
    for name in M.BASELINES:
        blocks[name] = M.evaluate(np.clip(base[name], 0, 1), target, length, labels=labels)
    clip = M.per_clip(pred, target, length)
    # the seed's 12 templates first, in the seed's order, so the table reads like its table
    seed_rows = M.seed_table(clip["seed_category"], labels, class_order=list(SOUND12))
    return Scores(ids=cache.ids, labels=labels, length=length, target=target, pred=pred,
                  fps=float(cache.config.get("fps", 12.0)), blocks=blocks, clip=clip, seed_rows=seed_rows,
                  train_mean_source=source)


def unscored(cache, pred: np.ndarray) -> Scores:
    """The predictions `pred` [N, T] of a cache without targets: nothing to score them against."""
    return Scores(ids=cache.ids, labels=cache.labels, length=cache.lengths.astype(np.int64), target=None,
                  pred=pred, fps=float(cache.config.get("fps", 12.0)), blocks={}, clip={}, seed_rows=[],
                  train_mean_source="")


def metrics_record(run: TrainedRun, cache, scores: Scores, amp: str) -> dict:
    """metrics.json: the run and cache it scored, counts, the scoring settings, the three
    evaluate() blocks, the seed's table and the run's config. amp: the autocast predictions ran under."""
    blocks = scores.blocks
    return {
        "run": {"dir": run.dir, "checkpoint": run.checkpoint_path, "checkpoint_name": run.checkpoint_name,
                "checkpoint_sha256": run.checkpoint_sha256, "epoch": run.epoch, "input": run.input,
                "fingerprint": run.fingerprint, "kind": run.kind, "finetuned_backbone": run.backbone is not None,
                "amp": amp},
        "cache": {"path": str(cache.path), "fingerprint": cache.fingerprint, "clips": len(cache),
                  "failed": len(cache.failures)},
        "counts": {"clips": len(cache), "failed": len(cache.failures), "frames": cache.frames, "fps": scores.fps,
                   "classes": len(set(scores.labels)), "target_onsets": blocks["model"]["n_target_onsets"]},
        "peak_params": dict(M.PEAK_PARAMS), "onset_tolerances": dict(M.ONSET_TOLERANCES),
        "seed_rules": dict(M.SEED_RULES),
        "baselines": {"mean_envelope": "train-set mean envelope per frame, for every clip "
                                       f"(from {scores.train_mean_source})",
                      "shuffled": f"another clip's prediction (derangement, seed {SHUFFLE_SEED})"},
        "beats_baselines": M.beats_baselines(blocks),
        **blocks,
        "seed_table": scores.seed_rows,
        "run_config": run.config,
    }


# ----------------------------------------------------------------------------- prediction files

def write_predictions_h5(path: Path, scores: Scores, attrs: dict):
    """predictions.h5: id, label [N] str; length [N] int32; target (where there is one), pred [N, T]
    float32 (+ attrs)."""
    def write(tmp: Path):
        with h5py.File(tmp, "w") as f:
            f.create_dataset("id", data=np.asarray(scores.ids, dtype=object), dtype=H5_STR)
            f.create_dataset("label", data=np.asarray(scores.labels, dtype=object), dtype=H5_STR)
            f.create_dataset("length", data=np.asarray(scores.length, dtype=np.int32))
            if scores.target is not None:
                f.create_dataset("target", data=np.asarray(scores.target, dtype=np.float32))
            f.create_dataset("pred", data=np.asarray(scores.pred, dtype=np.float32))
            for k, v in attrs.items():
                f.attrs[k] = v
    atomic_write(path, write)


def _clip_cells(clip: dict, i: int) -> list:
    """Clip i's CSV_CLIP_COLUMNS: the category as is, floats to 4 decimals, counts as ints."""
    return [clip[k][i] if k == "seed_category" else
            (f"{clip[k][i]:.4f}" if np.issubdtype(np.asarray(clip[k]).dtype, np.floating) else int(clip[k][i]))
            for k in CSV_CLIP_COLUMNS]


def write_predictions_csv(path: Path, scores: Scores):
    """predictions.csv: id, label, length, per-clip metrics, then the two curves frame by frame
    (without targets: id, label, length and the prediction only)."""
    t = scores.pred.shape[1]
    width = len(str(t - 1))
    scored = scores.target is not None
    header = ["id", "label", "length", *(CSV_CLIP_COLUMNS if scored else ()),
              *[f"target_{i:0{width}d}" for i in range(t) if scored], *[f"pred_{i:0{width}d}" for i in range(t)]]

    def write(tmp: Path):
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header)
            for i in range(len(scores.ids)):
                cells = [*_clip_cells(scores.clip, i), *[f"{v:.4f}" for v in scores.target[i]]] if scored else []
                w.writerow([scores.ids[i], scores.labels[i], int(scores.length[i]), *cells,
                            *[f"{v:.4f}" for v in scores.pred[i]]])
    atomic_write(path, write)
