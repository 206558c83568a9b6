"""pretrain: train a backbone from videos to classify their labels, optionally with the sound as an
auxiliary target (docs/pretraining.md).

    frames [B, 3, T, S, S] ─► backbone.feature_map ─► [B, C, T, h, w] ─► mean over h, w ─► [B, C, T]
                                                                              │ mean over T ─► Linear ─► class logits [B, K]  (CE)
                                                                              └ per frame ──► Linear ─► envelope logits [B, T]
                                                                                              (masked BCE, --aux-envelope W)
    loss = CE + W x BCE

This is how the SSv2 baseline was trained (a classifier on the pooled final map, cross-entropy), plus
the seed's question as an auxiliary task: does predicting the sound make the video features better?
(`pipeline.compare` answers it over seeds.) The model, its augmented batches and its accuracy are
`pipeline.pretrainer`'s. Read top to bottom: constants, the loop (`_train`, nanoGPT's train.py
shape), export, and `pretrain`, what `foleycache pretrain` calls.

Run directory (train-head's): config.json, metrics.jsonl (per epoch: train CE / BCE, val top-1, top-5,
per-class accuracy, aux BCE, clips/s, data_share: the share of the pass spent waiting for data the
reader thread did not hide), checkpoint-last.pt / -best.pt (best val top-1; weights, optimizer, step,
RNG states of every rank, history, config), failures.jsonl, the frame caches (frames-{train,val}.*),
and backbone.pth.tar (published layout) + backbone.safetensors from the LAST epoch (no selection on
the validation clips, which `pipeline.compare` scores the heads on). `--resume` continues
checkpoint-last.pt; a run killed with `kill -9` and resumed ends where an uninterrupted one ends.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pipeline import backbones
from pipeline.backbones import BACKBONE_PT, BACKBONE_ST
from pipeline.data import load_annotations, manifest_source
from pipeline.distributed import Distributed
from pipeline.errors import FoleyError
from pipeline.framecache import FrameCache, build_frame_cache, cache_files, frame_cache_fingerprint
from pipeline.fsio import atomic_write_text
from pipeline.head import masked_bce
from pipeline.runtime import (autocast, decode_workers, resolve_device, resolve_precision, rng_state, seed_everything,
                              set_rng_state, usable_cores)
from pipeline.loop import ADAM_BETAS, GRAD_CLIP, MIN_LR_RATIO, RESUME_SEED_STRIDE, get_lr
from pipeline.options import PRETRAIN_AMP_CHOICES, PRETRAIN_DEFAULTS, default_warmup
from pipeline.pretrainer import (COLOUR_JITTER, CROP_MARGIN, FLIP_P, ClipBatches, Pretrainer, class_list,
                                 classification_metrics, clip_gradients, evaluate_pretrainer)
from pipeline.runs import (CKPT_BEST, CKPT_LAST, CONFIG_JSON, on_main, prepare_run_dir, read_checkpoint, versions,
                           write_checkpoint, write_config, write_metrics)

log = logging.getLogger("foleycache")

# ----------------------------------------------------------------------------- constants

# Options and their defaults: pipeline.options.PRETRAIN_DEFAULTS, from float32 measurements
# (docs/pretraining.md): a width-0.25 model3d_1 train step (48 frames, batch 8, one thread, 2-core Xeon)
# costs 0.07 s per clip at 32 px, 0.19 at 48, 0.36 at 64: from scratch, steps matter more than pixels,
# so 32 px and 20 epochs (300 clips: ~25 s an epoch on a quiet 2-core CPU). The schedule, clipping and
# AdamW betas are the training loop's (pipeline.loop, pipeline.options).
DEFAULTS = PRETRAIN_DEFAULTS
RESUME_MUST_MATCH = tuple(DEFAULTS)     # options that change the numbers: a --resume may not change them
EVAL_BATCH = 16                 # validation clips per step

FAILURES = "failures.jsonl"
SPLITS = ("train", "val")
FRAME_CACHE_FILES = tuple(p.name for split in SPLITS for p in cache_files(Path(f"frames-{split}")))
EXTRA_FILES = (BACKBONE_PT, BACKBONE_ST, FAILURES) + FRAME_CACHE_FILES


# ----------------------------------------------------------------------------- the loop

def _train(model: Pretrainer, optimizer, train: ClipBatches, val: ClipBatches, *, run_dir: Path, opts: dict,
           classes: list[str], warmup_steps: int, dist: Distributed, amp: str, config: dict, describe: dict,
           resume: dict | None, progress: bool) -> dict:
    """Train for opts["epochs"] epochs, validating and checkpointing every epoch; returns the summary."""
    device = dist.device
    raw = model
    epochs = opts["epochs"]
    steps_per_epoch = len(train.batches(0))
    total_steps = epochs * steps_per_epoch

    start_epoch, step, best_top1, best_epoch, history = 0, 0, -math.inf, 0, []
    if resume is not None:
        raw.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        start_epoch, step = int(resume["epoch"]), int(resume["step"])
        best_top1, best_epoch, history = float(resume["best_top1"]), int(resume["best_epoch"]), list(resume["history"])
    if dist.enabled:
        model = nn.parallel.DistributedDataParallel(raw, device_ids=[device] if device.type == "cuda" else None)
    if dist.is_main:                        # the run's record: config, and metrics up to the checkpoint
        write_config(run_dir, config)
        write_metrics(run_dir, history)
    if resume is not None and len(resume["rng"]) == dist.world_size:
        set_rng_state(resume["rng"][dist.rank], device)
    else:                                   # each rank its own dropout stream (a resume on another world size: a fresh one)
        seed_everything(opts["seed"] + dist.rank + (0 if resume is None else RESUME_SEED_STRIDE * start_epoch))

    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        record, step = _train_epoch(model, raw, optimizer, train, epoch, step, total_steps, warmup_steps,
                                    opts, dist, amp, progress)
        record.update(_validate_epoch(raw, val, classes, dist, amp))
        record["seconds"] = round(time.perf_counter() - t0, 3)
        record = dist.broadcast(record)
        improved = record["val_top1"] > best_top1
        if improved:
            best_top1, best_epoch = record["val_top1"], epoch + 1
        record["best"] = improved
        history.append(record)
        _save_epoch(raw, optimizer, run_dir, describe, config, record, history, best_top1, best_epoch,
                    improved, dist)
    return {"epochs_run": len(history), "best_epoch": best_epoch, "best_val_top1": best_top1,
            "last_metrics": history[-1] if history else None, "history": history}


def _train_epoch(model, raw, optimizer, train: ClipBatches, epoch: int, step: int, total_steps: int,
                 warmup_steps: int, opts: dict, dist: Distributed, amp: str, progress: bool) -> tuple[dict, int]:
    """One epoch of optimizer steps; returns this epoch's train record (summed over ranks) and the step."""
    device, epochs, aux_w = dist.device, opts["epochs"], opts["aux_envelope"]
    t0 = time.perf_counter()
    data_s, seen, lr = 0.0, 0, opts["lr"]
    model.train()
    ce_sum = torch.zeros((), dtype=torch.float64)
    bce_sum = torch.zeros((), dtype=torch.float64)
    batches = train.batches(epoch)
    bar = tqdm(range(len(batches)), desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=False,
               disable=not (progress and dist.is_main))
    # the next batch is read and augmented in a thread while this one trains (load is a pure
    # function of (positions, epoch): the order of work changes nothing); data_s = time waited
    loader = ThreadPoolExecutor(max_workers=1)
    ahead = loader.submit(train.load, batches[0], epoch)
    for i in bar:
        positions = batches[i]
        td = time.perf_counter()
        b = ahead.result()
        if i + 1 < len(batches):
            ahead = loader.submit(train.load, batches[i + 1], epoch)
        x, y = b["inputs"].to(device, non_blocking=True), b["label"].to(device)
        data_s += time.perf_counter() - td
        lr = get_lr(step, warmup_steps, total_steps, opts["lr"], opts["lr"] * MIN_LR_RATIO)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast(device, amp):
            logits, aux = model(x)
        ce = F.cross_entropy(logits.float(), y, label_smoothing=opts["label_smoothing"])
        loss = ce
        if aux is not None:
            bce = masked_bce(aux, b["envelope"].to(device), b["length"].to(device))
            loss = ce + aux_w * bce
            bce_sum += bce.detach().double().cpu() * len(positions)
        loss.backward()
        clip_gradients(raw, GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ce_sum += ce.detach().double().cpu() * len(positions)
        seen += len(positions)
        step += 1
        bar.set_postfix(ce=f"{ce.item():.3f}")
    loader.shutdown()
    train_s = time.perf_counter() - t0
    seen_all = dist.sum(seen)
    record = {"epoch": epoch + 1, "step": step, "lr": lr,
              "train_ce": dist.sum(float(ce_sum)) / max(1, seen_all),
              "train_aux_bce": dist.sum(float(bce_sum)) / max(1, seen_all) if raw.aux is not None else None,
              "train_clips": int(seen_all), "train_seconds": round(train_s, 3),
              "clips_per_s": round(seen_all / train_s, 3) if train_s else None,
              "data_share": round(dist.sum(data_s / train_s) / dist.world_size, 4) if train_s else None}
    return record, step


def _validate_epoch(raw, val: ClipBatches, classes: list[str], dist: Distributed, amp: str) -> dict:
    """Every rank scores its share of the validation clips; rank 0 computes the metrics of all."""
    local = evaluate_pretrainer(raw, val, dist.device, amp)
    parts = dist.gather(local)
    record = {}
    if dist.is_main:
        order = np.argsort(np.concatenate([p["index"] for p in parts]), kind="stable")
        logits = np.concatenate([p["logits"] for p in parts if len(p["index"])])[order]
        labels = np.concatenate([p["label"] for p in parts if len(p["index"])])[order].astype(np.int64)
        m = classification_metrics(logits, labels, classes)
        frames = sum(p["frames"] for p in parts)
        record.update(val_top1=m["top1"], val_top5=m["top5"], val_ce=m["ce"], val_per_class=m["per_class"],
                      val_aux_bce=sum(p["bce_sum"] for p in parts) / frames if frames else None,
                      val_clips=len(labels), chance=1.0 / len(classes))
    return record


def _save_epoch(raw, optimizer, run_dir: Path, describe: dict, config: dict, record: dict, history: list,
                best_top1: float, best_epoch: int, improved: bool, dist: Distributed):
    """The epoch's checkpoint (atomic; best linked to the same bytes) and metrics.jsonl."""
    rngs = dist.gather(rng_state(dist.device))
    if dist.is_main:
        ckpt = {**describe, "model": {k: v.detach().cpu() for k, v in raw.state_dict().items()},
                "optimizer": optimizer.state_dict(), "epoch": record["epoch"], "step": record["step"],
                "metrics": record, "best_top1": best_top1, "best_epoch": best_epoch, "history": history,
                "rng": rngs, "config": config, "world_size": dist.world_size}
        write_checkpoint(run_dir / CKPT_LAST, ckpt, also=run_dir / CKPT_BEST if improved else None)
        write_metrics(run_dir, history)
    dist.barrier()


# ----------------------------------------------------------------------------- export

def export_backbone(run_dir: str | Path, checkpoint: str = CKPT_LAST) -> dict:
    """The trained backbone of a pretrain run in its published layout (RUN/backbone.pth.tar: for
    model3d_1 variants {'epoch', 'arch', 'state_dict': {'module.conv_column.' + key}, 'best_loss'}) and as
    safetensors (RUN/backbone.safetensors, bare keys). Returns {"backbone", "pth", "safetensors", "epoch"}."""
    run_dir = Path(run_dir)
    ckpt = read_checkpoint(run_dir / checkpoint)
    if ckpt.get("kind") != "pretrain":
        raise FoleyError(f"{run_dir / checkpoint} is not a pretrain run checkpoint")
    val_ce = (ckpt.get("metrics") or {}).get("val_ce")
    paths = backbones.export_trained_backbone(ckpt["model"], ckpt["backbone"], run_dir, epoch=int(ckpt["epoch"]),
                                              best_loss=float("nan") if val_ce is None else float(val_ce))
    return {"backbone": ckpt["backbone"], **paths, "epoch": int(ckpt["epoch"])}


def extract_command(run_dir: Path, config: dict, videos: str = "VIDEOS", annotations: str = "ANNOTATIONS",
                    out: str = "CACHE") -> str:
    """The extract-features command that caches features with a pretrain run's backbone."""
    o = config["options"]
    return (f"foleycache extract-features --videos {videos} --annotations {annotations} --out {out} "
            f"--backbone {o['backbone']} --size {o['size']} --frames {o['frames']} --fps {o['fps']:g} "
            f"--checkpoint {Path(run_dir) / BACKBONE_PT}")


# ----------------------------------------------------------------------------- pretrain

@dataclass(frozen=True)
class ClipSource:
    """Where a run's clips come from: the videos, the two manifests and how they are read."""
    videos: Path
    annotations: Path | str
    val_annotations: Path | str
    labels: Path | None = None
    classes: str | None = None          # --classes as given (None: the manifest's default)
    window_stride: float | None = None
    frame_cache: Path | None = None     # where decoded frames are shared between runs (None: inside the run)
    limit: int | None = None            # only the first N clips of each list


@dataclass(frozen=True)
class Schedule:
    """How a run trains, once resolved: autocast, decode workers and its optimizer steps."""
    amp: str
    workers: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int


@dataclass(frozen=True)
class DecodedClips:
    """The frame caches of both splits (`_decode_clips`) and the rows of them that train and validate."""
    caches: dict
    builds: dict
    stored: dict
    failures: list
    rows: dict          # split -> (rows [N] int64, class indices [N] int64)


def _check_options(o: dict):
    """Ranges and choices of the options that are set (None = not given): a one-line FoleyError."""
    ok = {"epochs": (lambda v: v >= 1, ">= 1"), "batch_size": (lambda v: v >= 1, ">= 1"),
          "lr": (lambda v: v > 0, "> 0"), "weight_decay": (lambda v: v >= 0, ">= 0"),
          "warmup": (lambda v: v >= 0, ">= 0"), "aux_envelope": (lambda v: v >= 0 and math.isfinite(v), ">= 0"),
          "size": (lambda v: v >= 32, ">= 32"), "frames": (lambda v: v >= 1, ">= 1"), "fps": (lambda v: v > 0, "> 0"),
          "label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"), "dropout": (lambda v: 0 <= v < 1, "in [0, 1)")}
    for name, (test, what) in ok.items():
        if o.get(name) is not None and not test(o[name]):
            raise FoleyError(f"--{name.replace('_', '-')} must be {what}, got {o[name]!r}")
    if o.get("amp") is not None and o["amp"] not in PRETRAIN_AMP_CHOICES:
        raise FoleyError(f"unknown --amp {o['amp']!r}; choose one of: {', '.join(PRETRAIN_AMP_CHOICES)}")
    if o.get("backbone") is not None:
        spec = backbones.get_spec(o["backbone"])
        if spec.time_stride != 1 and o.get("aux_envelope") is not None:
            raise FoleyError(f"--aux-envelope needs one feature per frame; backbone {o['backbone']} pools time")


def _resolve_options(given: dict, saved: dict | None) -> dict:
    """Given options over (the resumed run's options or DEFAULTS); a resume that changes one of
    RESUME_MUST_MATCH is refused."""
    opts = dict(DEFAULTS)
    if saved is not None:
        changed = [k for k in RESUME_MUST_MATCH if given.get(k) is not None and given[k] != saved.get(k)]
        if changed:
            listed = ", ".join(f"--{k.replace('_', '-')} {saved.get(k)!r} -> {given[k]!r}" for k in changed)
            raise FoleyError(f"--resume with other training options than the run's ({listed}); resume with the "
                             "same options, or start over with --overwrite")
        opts.update(saved)
    opts.update({k: v for k, v in given.items() if v is not None})
    return opts


def pretrain(*, videos: Path, annotations: Path | str, val_annotations: Path | str, out: Path,
             labels: Path | None = None, classes: str | None = None, window_stride: float | None = None,
             backbone: str | None = None, checkpoint: str | Path | None = None, size: int | None = None,
             frames: int | None = None, fps: float | None = None, epochs: int | None = None,
             batch_size: int | None = None, lr: float | None = None, weight_decay: float | None = None,
             warmup: int | None = None, aux_envelope: float | None = None, seed: int | None = None,
             amp: str | None = None, flip: bool | None = None, label_smoothing: float | None = None,
             dropout: float | None = None, frame_cache: Path | None = None, device: str = "auto",
             workers: int | None = None, threads: int | None = None, limit: int | None = None,
             resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict:
    """Train `backbone` from the videos of `annotations` to classify their labels; validate on
    `val_annotations` (same videos folder); write the run to `out` and export the backbone.

    Options left None take DEFAULTS (or, with resume=True, the run's own). aux_envelope: the weight W
    of the per-frame envelope loss (None: no envelope head). checkpoint: "none" (a seeded random
    init) or weights to start from. frame_cache: a folder where the decoded frames are kept under
    their fingerprint, so other runs on the same clips reuse them (default: inside `out`).
    threads: torch threads of each process (default: torch's). warmup: optimizer steps (default
    5% of all). Returns a summary: "run_dir", "best_epoch", "best_val_top1", "last_metrics",
    "config", "backbone" (the export), "extract_command", "seconds".
    """
    t_start = time.perf_counter()
    out, videos = Path(out), Path(videos)
    given = dict(backbone=backbone, size=size, frames=frames, fps=None if fps is None else float(fps), epochs=epochs,
                 batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup=warmup, aux_envelope=aux_envelope,
                 seed=seed, amp=amp, flip=flip, label_smoothing=label_smoothing, dropout=dropout,
                 checkpoint=None if checkpoint is None else str(checkpoint))
    _check_options(given)                   # before anything touches --out
    if not videos.is_dir():
        raise FoleyError(f"--videos {videos} is not a directory")
    if workers is not None and workers < 0:
        raise FoleyError(f"--workers must be >= 0, got {workers}")
    if threads is not None and threads < 1:
        raise FoleyError(f"--threads must be >= 1, got {threads}")
    if threads is not None:
        torch.set_num_threads(threads)
    saved = None
    if resume:
        try:
            saved = json.loads((out / CONFIG_JSON).read_text(encoding="utf-8")).get("options")
        except (OSError, ValueError):
            saved = None                    # prepare_run_dir says what is wrong
    opts = _resolve_options(given, saved)
    _check_options(opts)
    if opts["checkpoint"] != "none":
        opts["checkpoint"] = str(backbones.resolve_checkpoint(opts["backbone"], opts["checkpoint"])[0])
    dist = Distributed.from_env(resolve_device(device))
    source = ClipSource(videos=videos, annotations=annotations, val_annotations=val_annotations, labels=labels,
                        classes=classes, window_stride=window_stride, frame_cache=frame_cache, limit=limit)
    try:
        summary = _pretrain(source, out, opts, dist, workers, resume=resume, overwrite=overwrite, progress=progress)
    finally:
        dist.close()
    summary["seconds"] = round(time.perf_counter() - t_start, 2)
    return summary


def _decode_clips(out: Path, source: ClipSource, entries: dict, classes: list[str], opts: dict, workers: int,
                  dist: Distributed, progress: bool) -> DecodedClips:
    """Decode every clip once into a frame cache per split: train frames CROP_MARGIN larger (room for
    crops), val at the input size; the failures go to OUT/failures.jsonl."""
    stored = {"train": int(math.ceil(opts["size"] * CROP_MARGIN)), "val": opts["size"]}
    caches, builds = {}, {}
    for split in SPLITS:
        prefix = out / f"frames-{split}"
        if source.frame_cache is not None:
            fp = frame_cache_fingerprint(entries[split], opts["frames"], opts["fps"], stored[split], "max")
            prefix = Path(source.frame_cache) / f"{split}-{fp[:16]}"
        t0 = time.perf_counter()
        builds[split] = build_frame_cache(prefix, entries[split], source.videos, frames=opts["frames"],
                                          fps=opts["fps"], size=stored[split], workers=workers, rank=dist.rank,
                                          world_size=dist.world_size, barrier=dist.barrier, gather=dist.gather,
                                          progress=progress and dist.is_main, desc=f"decoding {split} clips")
        builds[split]["seconds"] = round(time.perf_counter() - t0, 3)
        caches[split] = FrameCache(prefix)
    failures = [dict(f, split=split) for split in SPLITS for f in caches[split].failures]
    if dist.is_main:
        atomic_write_text(out / FAILURES, "".join(json.dumps(f, sort_keys=True) + "\n" for f in failures))
    rows = {split: _usable_rows(caches[split], entries[split], classes) for split in SPLITS}
    return DecodedClips(caches=caches, builds=builds, stored=stored, failures=failures, rows=rows)


def _usable_rows(cache: FrameCache, entries: list, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the decoded clips of a trained class, and their class indices."""
    index = {t: k for k, t in enumerate(classes)}
    rows = [int(r) for r in cache.decoded if entries[r].template in index]
    return np.asarray(rows, np.int64), np.asarray([index[entries[r].template] for r in rows], np.int64)


def _run_config(opts: dict, source: ClipSource, schedule: Schedule, decoded: DecodedClips, dist: Distributed,
                classes: list[str], channels: int) -> dict:
    """The run's resolved config (config.json and every checkpoint): what was asked and what it became."""
    n_train, n_val = (len(decoded.rows[split][0]) for split in SPLITS)
    return {
        "command": "pretrain", "options": opts, "amp": schedule.amp, "device": str(dist.device),
        "workers": schedule.workers, "threads": torch.get_num_threads(), "world_size": dist.world_size,
        "global_batch_size": opts["batch_size"] * dist.world_size, "steps_per_epoch": schedule.steps_per_epoch,
        "total_steps": schedule.total_steps, "warmup_steps": schedule.warmup_steps, "min_lr_ratio": MIN_LR_RATIO,
        "grad_clip": GRAD_CLIP, "adam_betas": list(ADAM_BETAS),
        "augment": {"crop_margin": CROP_MARGIN, "flip_p": FLIP_P if opts["flip"] else 0.0,
                    "colour_jitter": list(COLOUR_JITTER), "time": "never moved"},
        "videos": str(source.videos.resolve()), "annotations": manifest_source(source.annotations),
        "val_annotations": manifest_source(source.val_annotations),
        "labels": str(source.labels) if source.labels else None,
        "classes_filter": None if source.classes is None else str(source.classes),
        "window_stride": source.window_stride, "classes": classes, "train_clips": n_train, "val_clips": n_val,
        "val_unknown_class": int(len(decoded.caches["val"].decoded) - n_val), "failed": len(decoded.failures),
        "frame_caches": {s: {"prefix": b["prefix"], "fingerprint": b["fingerprint"],
                             "stored_size": decoded.stored[s], "reused": b["reused"]}
                         for s, b in decoded.builds.items()},
        "backbone": opts["backbone"], "channels": channels,
        "preprocess": dict(backbones.get_spec(opts["backbone"]).preprocess(), size=opts["size"]),
        "export": {"checkpoint": CKPT_LAST, "files": [BACKBONE_PT, BACKBONE_ST]},
        "versions": versions(),
    }


def _load_entries(source: ClipSource, opts: dict) -> tuple[dict, list[str]]:
    """Both manifests' entries (split -> list) and the classes the training list holds."""
    manifest = dict(classes=source.classes, labels_path=source.labels, videos=source.videos,
                    window_stride=source.window_stride, frames=opts["frames"], fps=opts["fps"])
    entries = {split: load_annotations(path, **manifest)[:source.limit]
               for split, path in zip(SPLITS, (source.annotations, source.val_annotations))}
    classes = class_list(entries["train"])
    if len(classes) < 2:
        raise FoleyError(f"the training list holds {len(classes)} class; classifying needs at least 2")
    return entries, classes


def _build_model(opts: dict, n_classes: int, device: torch.device) -> tuple[Pretrainer, torch.optim.Optimizer, int]:
    """A seeded init (or given weights), the heads seeded the same on every rank and run; AdamW with
    no weight decay on biases and norms. Returns (model, optimizer, channels C of the last map)."""
    net = backbones.create_backbone(opts["backbone"], seed=opts["seed"])
    if not isinstance(net, backbones.Backbone):
        raise FoleyError(f"backbone {opts['backbone']} has no feature map to pretrain")
    if opts["checkpoint"] != "none":
        backbones.load_checkpoint(net, opts["checkpoint"])
    torch.manual_seed(opts["seed"])
    channels = int(net.feature_map(torch.zeros(1, 3, 1, opts["size"], opts["size"])).shape[1])
    model = Pretrainer(net, channels, n_classes, opts["aux_envelope"] is not None, opts["dropout"]).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]             # no weight decay on biases, BN
    rest = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": opts["weight_decay"]},
                                   {"params": rest, "weight_decay": 0.0}], lr=opts["lr"], betas=ADAM_BETAS)
    return model, optimizer, channels


def _prepare(out: Path, opts: dict, dist: Distributed, resume: bool, overwrite: bool) -> bool:
    """Rank 0 checks (and with --overwrite empties) the run dir and writes the run's config before the
    frames are decoded, so a run killed while decoding resumes (--resume) with what is done.
    Returns whether the run has a checkpoint to resume from."""
    has_ckpt = on_main(dist, lambda: prepare_run_dir(out, resume, overwrite, extra_files=EXTRA_FILES) is not None)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if not (out / CONFIG_JSON).exists():
            write_config(out, {"command": "pretrain", "options": opts})
    dist.barrier()
    return has_ckpt


def _pretrain(source: ClipSource, out: Path, opts: dict, dist: Distributed, workers: int | None, *, resume: bool,
              overwrite: bool, progress: bool) -> dict:
    device = dist.device
    amp = opts["amp"]
    if amp == "auto":   # bf16 only where the hardware has it: emulated bf16 on an AVX2 CPU is ~50x slower
        amp = "bf16" if resolve_precision("auto", device) == "bf16" else "off"
    if workers is None:     # decoding happens before training: on a CPU it may take every core
        workers = decode_workers(device) if device.type == "cuda" else max(1, usable_cores() // dist.world_size)
    entries, classes = _load_entries(source, opts)
    has_ckpt = _prepare(out, opts, dist, resume, overwrite)
    decoded = _decode_clips(out, source, entries, classes, opts, workers, dist, progress)
    if any(len(decoded.rows[split][0]) == 0 for split in SPLITS):
        raise FoleyError("no decodable clip of a trained class left in the train or validation list "
                         f"(see {out / FAILURES})")
    ckpt = read_checkpoint(out / CKPT_LAST) if has_ckpt else None
    model, optimizer, channels = _build_model(opts, len(classes), device)

    spec = backbones.get_spec(opts["backbone"])
    common = dict(size=opts["size"], mean=spec.mean, std=spec.std, flip=opts["flip"], seed=opts["seed"],
                  batch_size=opts["batch_size"], dist=dist)
    train = ClipBatches(decoded.caches["train"], *decoded.rows["train"], augment=True, **common)
    val = ClipBatches(decoded.caches["val"], *decoded.rows["val"], augment=False, **dict(common, batch_size=EVAL_BATCH))
    steps_per_epoch = len(train.batches(0))
    total_steps = opts["epochs"] * steps_per_epoch
    warmup_steps = opts["warmup"] if opts["warmup"] is not None else default_warmup(total_steps)
    schedule = Schedule(amp, workers, steps_per_epoch, total_steps, warmup_steps)
    config = _run_config(opts, source, schedule, decoded, dist, classes, channels)
    config["extract_command"] = extract_command(out, config)
    describe = {"kind": "pretrain", "backbone": opts["backbone"], "classes": classes, "size": opts["size"],
                "frames": opts["frames"], "fps": opts["fps"], "aux_envelope": opts["aux_envelope"],
                "preprocess": config["preprocess"]}
    summary = _train(model, optimizer, train, val, run_dir=out, opts=opts, classes=classes,
                     warmup_steps=warmup_steps, dist=dist, amp=amp, config=config, describe=describe,
                     resume=ckpt, progress=progress)
    exported = on_main(dist, lambda: export_backbone(out))
    summary.update(run_dir=str(out), config=config, backbone=exported, extract_command=config["extract_command"],
                   frame_caches=decoded.builds)
    return summary
