"""Stage 4: run a trained head on held-out clips; write predictions, metrics, report, plots and renders.

export_predictions(run=RUN_DIR, out=DIR, cache=CACHE_DIR)                     # features already cached
export_predictions(run=RUN_DIR, out=DIR, videos=DIR, annotations=FILE)       # features made on the fly

Writes into `out`:
  predictions.h5    id [N] str, label [N] str, length [N] int32, target [N, T] float32, pred [N, T] float32
  predictions.csv   one row per clip: per-clip metrics, then target_00..target_{T-1}, pred_00..pred_{T-1}
  metrics.json      model / mean_envelope / shuffled evaluate() blocks (per_class included), peak-picking
                    settings, run and cache fingerprints, the run's config, counts
  report.md         the seed's table, then the metric table (model vs baselines) and a verdict line
  report.html       the same tables, every plot and every render, in one offline page
  plots/{id}.png    target vs prediction over time (s), onsets marked, padding shaded
  renders/{id}.gif  the clip's frames with both curves and a moving cursor (needs the videos)

Where the features come from:
- `--cache`: a cache whose fingerprint must equal the one the run was trained on (the checkpoint
  carries it): the same backbone weights, preprocessing, envelope and dtype. Anything else is refused.
- `--videos/--annotations`: features are extracted into OUT/cache with `pipeline.extract` (a normal,
  resumable cache, reusable later with --cache), using the network the run expects:
  * a train-head run: the backbone weights recorded in its train cache (the calibrated
    TRAIN_CACHE/backbone.safetensors for `--checkpoint none`, else the checkpoint path it was
    extracted with, which must still exist) and the same frames/fps/size/envelope/dtype/precision;
    the resulting fingerprint must equal the run's.
  * a finetune run (the head checkpoint also holds a finetuned backbone): that backbone's weights are
    written to OUT/backbone-finetuned.safetensors and used the same way (see `_finetuned_backbone`).
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm

from pipeline import metrics as M
from pipeline import report as R
from pipeline.errors import FoleyError

log = logging.getLogger("foleycache")

DEFAULT_PLOTS = 24          # plots (and report cards) when --plots is not given
SELECTION_SEED = 0          # which clips get plots: a seeded random sample, like the seed's random 100
SHUFFLE_SEED = 0            # derangement of the `shuffled` baseline
PREDICT_BATCH = 16          # clips per head forward
CHECKPOINTS = ("best", "last")
RUN_CACHE_DIR = "cache"     # OUT/cache: features extracted on the fly from --videos
FINETUNED_WEIGHTS = "backbone-finetuned.safetensors"
H5_STR = h5py.string_dtype("utf-8")


# ----------------------------------------------------------------------------- the run

def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FoleyError(f"{what} {path} does not exist") from None
    except (OSError, ValueError) as e:
        raise FoleyError(f"{what} {path} cannot be read ({type(e).__name__}: {e})") from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_run(run: Path, checkpoint: str = "best", device: torch.device | None = None) -> dict:
    """Open a run directory: config.json and checkpoint-{best,last}.pt, rebuilt with `head.load_head`.

    Returns {dir, config, checkpoint_path, checkpoint_name, checkpoint_sha256, ckpt, head, transform,
    fingerprint (the cache fingerprint the run was trained on), cache_config (that cache's config),
    epoch, input, kind ("train-head" | "finetune"), backbone (finetuned backbone or None)}.
    """
    from pipeline.head import load_head

    run = Path(run)
    if not run.is_dir():
        raise FoleyError(f"--run {run} is not a directory")
    if checkpoint not in CHECKPOINTS:
        raise FoleyError(f"--checkpoint must be one of {CHECKPOINTS}, got {checkpoint!r}")
    config = _read_json(run / "config.json", "run config")
    path = run / f"checkpoint-{checkpoint}.pt"
    if not path.is_file():
        raise FoleyError(f"{run} has no checkpoint-{checkpoint}.pt (is training finished? "
                         f"try --checkpoint {'last' if checkpoint == 'best' else 'best'})")
    head, transform, ckpt = load_head(path, map_location=device or "cpu")
    fingerprint = ckpt.get("fingerprint")
    if not fingerprint:
        raise FoleyError(f"{path} records no cache fingerprint: cannot check which features it expects")
    info = {"dir": str(run), "config": config, "checkpoint_path": str(path), "checkpoint_name": checkpoint,
            "checkpoint_sha256": _sha256(path), "ckpt": ckpt, "head": head, "transform": transform,
            "fingerprint": fingerprint, "cache_config": ckpt.get("cache_config") or config.get("cache_config") or {},
            "epoch": ckpt.get("epoch"), "input": ckpt["head_config"].get("input", "features"),
            "kind": ckpt.get("kind") or config.get("command", "train-head")}
    info["backbone"] = _finetuned_backbone(info)
    return info


def _train_cache_path(run: dict) -> Path | None:
    """The run's train cache directory (train-head records {"path": ...} under config["train_cache"])."""
    for source in (run["config"], run["ckpt"].get("config") or {}):
        entry = source.get("train_cache")
        if isinstance(entry, dict) and entry.get("path"):
            return Path(entry["path"])
        if isinstance(entry, str) and entry:
            return Path(entry)
    return None


def train_mean_envelope(run: dict, progress: bool = False) -> tuple[np.ndarray, str]:
    """The `mean_envelope` baseline [T]: per-frame mean of the train set's envelopes (valid frames).

    Returns (mean [T] float64, where it came from). Looked for, in order: the checkpoint's
    `train_mean_envelope`; the train cache named in the run's config (envelopes only, no feature
    is read); for a finetune run started from --init-head, that head's train cache; else the run's
    training videos (config `videos` + `annotations`), decoded for their audio envelope.
    """
    from pipeline.cache import FeatureCache

    stored = run["ckpt"].get("train_mean_envelope")
    if stored is not None:
        return np.asarray(stored, dtype=np.float64), "checkpoint"
    candidates = [_train_cache_path(run)]
    init_head = (run["ckpt"].get("config") or run["config"]).get("init_head")
    if init_head and Path(init_head).is_file():
        try:
            init_cfg = torch.load(init_head, map_location="cpu", weights_only=True).get("config") or {}
            candidates.append(_train_cache_path({"config": init_cfg, "ckpt": {}}))
        except Exception:       # an unreadable --init-head only removes one candidate
            pass
    for path in candidates:
        if path is not None and (Path(path) / "cache.json").is_file():
            train = FeatureCache(path)
            return M.mean_envelope(train.envelopes, train.lengths), f"train cache {path}"
    config = run["ckpt"].get("config") or run["config"]
    if config.get("videos") and config.get("annotations") and Path(config["videos"]).is_dir():
        return _mean_envelope_from_videos(run, Path(config["videos"]), Path(config["annotations"]), progress), \
            f"training videos {config['videos']}"
    raise FoleyError(f"the mean_envelope baseline needs the run's training envelopes: {run['dir']} names no train "
                     f"cache that still exists ({candidates[0]}) and no training videos")


def _mean_envelope_from_videos(run: dict, videos: Path, annotations: Path, progress: bool) -> np.ndarray:
    """Train mean envelope from the run's training videos (audio decoded, frames at a tiny size)."""
    from pipeline.data import find_video, load_annotations
    from pipeline.media import FaultyVideo, load_clip

    config = run["ckpt"].get("config") or run["config"]
    settings = run_extract_settings(run)
    entries = load_annotations(annotations, classes=config.get("classes", "sound12"),
                               labels_path=config.get("labels"), videos=videos,
                               window_stride=config.get("window_stride"), frames=settings["frames"],
                               fps=settings["fps"])
    envelopes, lengths = [], []
    for a in tqdm(entries, desc="train envelopes", unit="clip", disable=not progress, leave=False):
        try:
            clip = load_clip(find_video(videos, a), settings["frames"], settings["fps"], 32,
                             reduce=settings["envelope_reduce"], threads=1, start=a.start)
        except FaultyVideo:
            continue
        envelopes.append(clip.envelope)
        lengths.append(clip.length)
    if not envelopes:
        raise FoleyError(f"none of the training videos in {videos} could be decoded for the mean_envelope baseline")
    return M.mean_envelope(np.stack(envelopes), np.asarray(lengths))


# ----------------------------------------------------------------------------- features

BACKBONE_PREFIX = "backbone."


def _finetuned_backbone(run: dict) -> dict | None:
    """The finetuned backbone a finetune run carries, or None for a train-head run.

    pipeline.finetune saves checkpoint["model"] = EndToEnd(backbone, transform, head).state_dict():
    load_head takes the `head.*` keys, the `backbone.*` keys are the finetuned backbone, and
    checkpoint["backbone"] names it in the registry. Returns {"name", "state_dict"} or None.
    """
    ckpt = run["ckpt"]
    state = {k[len(BACKBONE_PREFIX):]: v for k, v in (ckpt.get("model") or {}).items() if k.startswith(BACKBONE_PREFIX)}
    if not state:
        return None
    name = ckpt.get("backbone") if isinstance(ckpt.get("backbone"), str) else None
    return {"name": name or (run["cache_config"] or {}).get("backbone", "model3d_1"), "state_dict": state}


def _extract_settings(cfg: dict) -> dict:
    """extract_features keyword arguments that reproduce a cache's numbers (its fingerprint inputs)."""
    try:
        return {"backbone": cfg["backbone"], "frames": int(cfg["frames"]), "fps": float(cfg["fps"]),
                "size": int(cfg["preprocess"]["size"]), "envelope_reduce": cfg["envelope"]["reduce"],
                "dtype": cfg["dtype"], "precision": cfg["precision"], "pool": cfg.get("pool", "none")}
    except (KeyError, TypeError, ValueError) as e:
        raise FoleyError(f"the run does not record how its features were extracted (missing {e}); "
                         "extract the clips yourself and pass --cache") from None


def run_extract_settings(run: dict) -> dict:
    """extract_features keyword arguments (backbone, frames, fps, size, envelope_reduce, dtype,
    precision) giving the features the run's head reads.

    train-head: exactly its train cache's settings (so the fingerprint matches). finetune: the
    clip settings it trained with (checkpoint `frames`, `fps`, `size`), features stored float32
    (the head saw unrounded backbone outputs), precision auto.
    """
    if run["backbone"] is None:
        return _extract_settings(run["cache_config"])
    ckpt, reduce = run["ckpt"], ((run["cache_config"] or {}).get("envelope") or {}).get("reduce", "max")
    try:
        return {"backbone": run["backbone"]["name"], "frames": int(ckpt["frames"]), "fps": float(ckpt["fps"]),
                "size": int(ckpt["size"]), "envelope_reduce": reduce, "dtype": "float32", "precision": "auto",
                "pool": ckpt.get("pool")}
    except (KeyError, TypeError, ValueError) as e:
        raise FoleyError(f"the finetune checkpoint {run['checkpoint_path']} lacks its clip setting {e}") from None


def _finetuned_weights_sha256(run: dict) -> str:
    """weights_sha256 (as extract fingerprints it) of the finetuned backbone."""
    from pipeline import backbones
    from pipeline.extract import weights_sha256
    model = backbones.create_backbone(run["backbone"]["name"])
    model.load_state_dict(run["backbone"]["state_dict"])
    return weights_sha256(model)


def _backbone_for_videos(run: dict, out: Path) -> tuple[Path, dict]:
    """(weights file, extract settings) that make the features the run reads."""
    settings = run_extract_settings(run)
    if run["backbone"] is not None:
        from safetensors.torch import save_file
        weights = out / FINETUNED_WEIGHTS
        weights.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in run["backbone"]["state_dict"].items()}, str(weights))
        return weights, settings

    from pipeline.extract import CALIBRATED_WEIGHTS
    provenance = run["cache_config"].get("backbone_provenance") or {}
    if provenance.get("checkpoint") == "none":
        train = _train_cache_path(run)
        weights = Path(train) / CALIBRATED_WEIGHTS if train else None
        if weights is None or not weights.is_file():
            raise FoleyError(f"the run was trained on a random-init backbone whose calibrated weights "
                             f"({weights}) are gone: --videos cannot rebuild its features (pass --cache)")
    elif provenance.get("weights_name"):
        # named published weights ("imagenet"): found again wherever this machine keeps them, sha256-checked
        from pipeline.backbones import find_named_weights
        weights = find_named_weights(settings["backbone"], provenance["weights_name"])
    else:
        weights = Path(str(provenance.get("checkpoint", "")))
        if not provenance.get("checkpoint") or not weights.is_file():
            raise FoleyError(f"the backbone checkpoint the run's features came from ({weights}) is not "
                             "available: --videos cannot rebuild its features (pass --cache)")
    return weights, settings


def features_from_videos(run: dict, out: Path, videos: Path, annotations: Path | str, labels: Path | None,
                         classes: str | None, window_stride: float | None, device: str, progress: bool) -> Path:
    """Extract the clips of `annotations` into OUT/cache with the run's backbone; returns the cache dir."""
    from pipeline.extract import extract_features

    weights, settings = _backbone_for_videos(run, out)
    cache_dir = out / RUN_CACHE_DIR
    extract_features(videos=videos, annotations=annotations, out=cache_dir, labels=labels, classes=classes,
                     window_stride=window_stride,
                     checkpoint=weights, device=device, progress=progress, **settings)
    return cache_dir


def check_cache(run: dict, cache) -> None:
    """Refuse a cache whose features are not the ones the run reads.

    train-head run: the cache fingerprint must equal the run's (same backbone weights, preprocessing,
    envelope, dtype, precision). finetune run: the cache must come from the finetuned backbone's
    weights with the run's other extraction settings.
    """
    if run["backbone"] is None:
        if cache.fingerprint != run["fingerprint"]:
            raise FoleyError(
                f"cache {cache.path} has fingerprint {cache.fingerprint[:16]}…, but the run {run['dir']} was "
                f"trained on features with fingerprint {run['fingerprint'][:16]}… (another backbone, weights, "
                "size, envelope or dtype): extract this split with the train cache's settings "
                "(--checkpoint TRAIN_CACHE/backbone.safetensors for a random-init backbone)")
        return
    keys = ("backbone", "frames", "fps", "size", "envelope_reduce")     # stored dtype / precision may differ
    want = dict(run_extract_settings(run), weights_sha256=_finetuned_weights_sha256(run))
    have = dict(_extract_settings(cache.config), weights_sha256=cache.config.get("weights_sha256"))
    diff = sorted(k for k in keys + ("weights_sha256",) if want[k] != have[k])
    if diff:
        raise FoleyError(f"cache {cache.path} was not extracted with this finetune run's backbone and settings "
                         f"(differs in {', '.join(diff)}): use --videos/--annotations, which extracts them")


# ----------------------------------------------------------------------------- prediction

def prediction_amp(run: dict, device: torch.device) -> str:
    """The autocast predict() uses: the run's own ("bf16", "fp16" or "off"; fp16 → off on CPU)."""
    amp = run["config"].get("amp", "off")
    if amp not in ("bf16", "fp16") or (amp == "fp16" and device.type == "cpu"):
        return "off"
    return amp


def predict(run: dict, cache, device: torch.device, batch_size: int = PREDICT_BATCH,
            progress: bool = False) -> np.ndarray:
    """Head probabilities [N, T] float32 for every clip of `cache`, in cache order (padding kept).

    Under the autocast the run trained and validated with (its config's `amp`), so that the
    export scores what training scored (fp16 has no CPU LSTM: float32 there)."""
    from pipeline.train import autocast

    head, transform = run["head"], run["transform"]
    amp = prediction_amp(run, device)
    head.eval()
    n = len(cache)
    pred = np.zeros((n, cache.frames), dtype=np.float32)
    with torch.no_grad(), tqdm(total=n, desc="predict", unit="clip", disable=not progress, leave=False) as bar:
        for lo in range(0, n, batch_size):
            batch = cache.read_many(np.arange(lo, min(n, lo + batch_size)))
            features = torch.from_numpy(batch["features"]).to(device)         # [B, T, D] stored dtype
            with autocast(device, amp):
                logits = head(transform(features))                             # [B, T]
            pred[lo:lo + len(features)] = torch.sigmoid(logits.float()).cpu().numpy()
            bar.update(len(features))
    return pred


# ----------------------------------------------------------------------------- writers

def write_predictions_h5(path: Path, ids, labels, length, target, pred, attrs: dict):
    """predictions.h5: id, label [N] str; length [N] int32; target, pred [N, T] float32 (+ attrs)."""
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("id", data=np.asarray(ids, dtype=object), dtype=H5_STR)
        f.create_dataset("label", data=np.asarray(labels, dtype=object), dtype=H5_STR)
        f.create_dataset("length", data=np.asarray(length, dtype=np.int32))
        f.create_dataset("target", data=np.asarray(target, dtype=np.float32))
        f.create_dataset("pred", data=np.asarray(pred, dtype=np.float32))
        for k, v in attrs.items():
            f.attrs[k] = v
    tmp.replace(path)


CSV_CLIP_COLUMNS = ("seed_category", "pearson", "peak_error", "pred_peak", "target_peak",
                    "n_target_onsets", "n_pred_onsets", "mae", "bce")


def write_predictions_csv(path: Path, ids, labels, length, target, pred, clip: dict):
    """predictions.csv: id, label, length, per-clip metrics, then the two curves frame by frame."""
    t = target.shape[1]
    width = len(str(t - 1))
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "label", "length", *CSV_CLIP_COLUMNS,
                    *[f"target_{i:0{width}d}" for i in range(t)], *[f"pred_{i:0{width}d}" for i in range(t)]])
        for i in range(len(ids)):
            stats = [clip[k][i] if k == "seed_category" else
                     (f"{clip[k][i]:.4f}" if np.issubdtype(np.asarray(clip[k]).dtype, np.floating) else int(clip[k][i]))
                     for k in CSV_CLIP_COLUMNS]
            w.writerow([ids[i], labels[i], int(length[i]), *stats,
                        *[f"{v:.4f}" for v in target[i]], *[f"{v:.4f}" for v in pred[i]]])


def select_clips(n: int, plots: int | str, seed: int = SELECTION_SEED) -> np.ndarray:
    """Indices of the clips to plot: all, or a seeded random sample of `plots`, in cache order."""
    if plots == "all" or int(plots) >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=int(plots), replace=False))


def _render_frames(videos: Path, clip, frames: int, fps: float) -> np.ndarray:
    """uint8 [T, S, S, 3] frames of a clip (a pipeline.data.Annotation) for a GIF (same frame picking
    as the model saw)."""
    from pipeline.data import find_video
    from pipeline.media import load_clip

    clip = load_clip(find_video(videos, clip), frames=frames, fps=fps, size=R.RENDER_SIZE, normalize=False,
                     start=clip.start)
    return np.clip(clip.frames.permute(1, 2, 3, 0).numpy(), 0, 255).round().astype(np.uint8)


def _clips_for_renders(cache, videos: Path) -> dict:
    """{id: Annotation} of the cache's recorded manifest (a clip's video path and start); {} when
    it cannot be read again, and then an id is taken for what it says (`clip_of_id`)."""
    from pipeline.data import load_annotations

    m = cache.config.get("manifest") or {}
    try:
        entries = load_annotations(m["annotations"], classes=m.get("classes", "sound12"),
                                   labels_path=m.get("labels"), videos=videos, window_stride=m.get("window_stride"),
                                   frames=cache.frames, fps=float(cache.config.get("fps", 12.0)))
    except (KeyError, TypeError, FoleyError):
        return {}
    return {a.id: a for a in entries}


def _videos_for_renders(videos: Path | None, cache) -> Path | None:
    if videos is not None:
        return Path(videos)
    recorded = (cache.config.get("manifest") or {}).get("videos")
    return Path(recorded) if recorded and Path(recorded).is_dir() else None


# ----------------------------------------------------------------------------- the command

def export_predictions(*, run: Path, out: Path, cache: Path | None = None, videos: Path | None = None,
                       annotations: Path | str | None = None, labels: Path | None = None,
                       classes: str | None = None, window_stride: float | None = None,
                       checkpoint: str = "best", plots: int | str = DEFAULT_PLOTS, render: int = 0,
                       device: str = "auto", batch_size: int = PREDICT_BATCH, progress: bool = True) -> dict:
    """Predict every clip of a cache (or of videos + annotations) with a trained run; write the report.

    plots: number of clips to plot (a seeded random sample) or "all"; the report shows the same clips.
    render: GIFs for the first `render` plotted clips (needs the videos: --videos, or a cache whose
    config records its videos folder). Returns a summary dict (paths, counts, headline metrics).
    """
    from pipeline.cache import FeatureCache
    from pipeline.extract import resolve_device

    t0 = time.time()
    out = Path(out)
    if (cache is None) == (annotations is None):
        raise FoleyError("give either --cache CACHE_DIR or --videos DIR --annotations FILE")
    if annotations is not None and videos is None:
        raise FoleyError("--annotations needs --videos (the folder of the videos it lists)")
    if plots != "all" and int(plots) < 0 or render < 0:
        raise FoleyError("--plots and --render must not be negative")
    dev = resolve_device(device)
    out.mkdir(parents=True, exist_ok=True)
    run_info = load_run(run, checkpoint, device=dev)

    if cache is None:
        cache = features_from_videos(run_info, out, Path(videos), annotations, labels, classes, window_stride,
                                     device, progress)
    c = FeatureCache(cache)
    check_cache(run_info, c)
    if len(c) == 0:
        raise FoleyError(f"cache {cache} holds no clips (all {len(c.failures)} were faulty)")

    pred = predict(run_info, c, dev, batch_size, progress)
    ids, labels_, length = c.ids, c.labels, c.lengths.astype(np.int64)
    target = c.envelopes.astype(np.float64)
    fps = float(c.config.get("fps", 12.0))
    train_mean, train_mean_source = train_mean_envelope(run_info, progress)
    if train_mean.shape != (c.frames,):
        raise FoleyError(f"the train mean envelope has {train_mean.shape[0]} frames, the cache {c.frames}")

    # the model and both baselines go through exactly the same evaluate()
    base = M.baselines(target, length, train_mean, seed=SHUFFLE_SEED, pred=pred)
    blocks = {"model": M.evaluate(pred, target, length, labels=labels_)}
    for name in R.BASELINES:
        blocks[name] = M.evaluate(np.clip(base[name], 0, 1), target, length, labels=labels_)
    clip = M.per_clip(pred, target, length)
    seed_rows = M.seed_table(clip["seed_category"], labels_, class_order=_class_order())

    metrics = {
        "run": {"dir": run_info["dir"], "checkpoint": run_info["checkpoint_path"],
                "checkpoint_name": checkpoint, "checkpoint_sha256": run_info["checkpoint_sha256"],
                "epoch": run_info["epoch"], "input": run_info["input"],
                "fingerprint": run_info["fingerprint"], "kind": run_info["kind"],
                "finetuned_backbone": run_info["backbone"] is not None,
                "amp": prediction_amp(run_info, dev)},      # the autocast the predictions ran under
        "cache": {"path": str(cache), "fingerprint": c.fingerprint, "clips": len(c), "failed": len(c.failures)},
        "counts": {"clips": len(c), "failed": len(c.failures), "frames": c.frames, "fps": fps,
                   "classes": len(set(labels_)), "target_onsets": blocks["model"]["n_target_onsets"]},
        "peak_params": dict(M.PEAK_PARAMS), "onset_tolerances": dict(M.ONSET_TOLERANCES),
        "seed_rules": dict(M.SEED_RULES),
        "baselines": {"mean_envelope": f"train-set mean envelope per frame, for every clip (from {train_mean_source})",
                      "shuffled": f"another clip's prediction (derangement, seed {SHUFFLE_SEED})"},
        "beats_baselines": R.beats_baselines(blocks),
        **blocks,
        "seed_table": seed_rows,
        "run_config": run_info["config"],
    }

    write_predictions_h5(out / "predictions.h5", ids, labels_, length, target, pred,
                         {"run": run_info["dir"], "checkpoint": run_info["checkpoint_path"],
                          "fingerprint": c.fingerprint, "fps": fps})
    write_predictions_csv(out / "predictions.csv", ids, labels_, length, target, pred, clip)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")

    shown = select_clips(len(c), plots)
    cards = []
    for i in tqdm(shown, desc="plots", unit="plot", disable=not progress, leave=False):
        title = (f"{ids[i]} · {labels_[i]} · {clip['seed_category'][i].replace('_', ' ')} · "
                 f"r {clip['pearson'][i]:.2f}")
        path = R.plot_clip(out / "plots" / f"{ids[i]}.png", target[i], pred[i], int(length[i]), fps, title)
        cards.append({"id": ids[i], "label": labels_[i], "seed_category": str(clip["seed_category"][i]),
                      "pearson": float(clip["pearson"][i]), "peak_error": int(clip["peak_error"][i]),
                      "plot": path, "render": None})

    rendered = []
    if render:
        source = _videos_for_renders(videos, c)
        if source is None:
            raise FoleyError("--render needs the videos: pass --videos DIR (the cache does not record them)")
        from pipeline.data import clip_of_id
        from pipeline.media import FaultyVideo
        clips = _clips_for_renders(c, source)
        for card, i in tqdm(list(zip(cards, shown))[:render], desc="renders", unit="gif", disable=not progress,
                            leave=False):
            try:
                frames = _render_frames(source, clips.get(ids[i]) or clip_of_id(ids[i]), c.frames, fps)
            except FaultyVideo as e:
                log.warning("render of %s skipped: %s", ids[i], e)
                continue
            card["render"] = R.render_gif(out / "renders" / f"{ids[i]}.gif", frames, target[i], pred[i],
                                          int(length[i]), fps)
            rendered.append(str(card["render"]))

    (out / "report.md").write_text(R.report_markdown(metrics, seed_rows), encoding="utf-8")
    (out / "report.html").write_text(R.report_html(metrics, seed_rows, cards), encoding="utf-8")

    headline = {k: {b: blocks[b][k] for b in blocks} for k in R.HEADLINE}
    return {"out": str(out), "clips": len(c), "plots": len(cards), "renders": len(rendered),
            "report": str(out / "report.md"), "html": str(out / "report.html"),
            "metrics": str(out / "metrics.json"), "headline": headline,
            "beats_baselines": metrics["beats_baselines"], "verdict": R.verdict(blocks),
            "wall_seconds": round(time.time() - t0, 2)}


def _class_order() -> list[str]:
    """The seed's 12 templates in the seed's order, so the table reads like its table."""
    from pipeline.data import SOUND12
    return list(SOUND12)
