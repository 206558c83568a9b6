"""pretrain: train a backbone from videos to classify their labels, optionally with the sound as an
auxiliary target or as the only one (docs/pretraining.md).

    frames [B, 3, T, S, S] ─► stem (the first N stages, frozen: computed once) ─► trunk ─► [B, C, T, h, w]
        ─► mean over h, w ─► [B, C, T] ─┬ mean over T ─► Linear ─► class logits [B, K]   (CE)
                                        └ per frame ──► Linear ─► envelope logits [B, T] (masked BCE x W)
    loss = CE + W x BCE   (--aux-envelope W; --envelope-only: W x BCE, no labels)

This is how the SSv2 baseline was trained (a classifier on the pooled final map, cross-entropy), plus
the seed's question: does predicting the sound make the video features better? (`pipeline.compare`
answers it over seeds.) The model, its batches, its objective and its accuracy are
`pipeline.pretrainer`'s; the frozen stages' outputs `pipeline.stemcache`'s; the loop (schedule,
steps, resume, DDP, checkpoints) is `pipeline.loop.fit`, the one train-head and finetune use.

Run directory (train-head's): config.json, metrics.jsonl (per epoch: train loss, val objective, top-1,
top-5, per-class accuracy, aux BCE, clips/s), checkpoint-last.pt / -best.pt (`pipeline.runs`; best =
lowest validation objective), failures.jsonl, the frame caches (frames-{train,val}.*) and stem caches
(stem-{train,val}.*), and backbone.pth.tar (published layout) + backbone.safetensors from the LAST
epoch (no selection on the validation clips, which `pipeline.compare` scores on). `--resume`
continues checkpoint-last.pt; a run killed with `kill -9` and resumed ends where an uninterrupted one
ends.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline import backbones
from pipeline.backbones import BACKBONE_PT, BACKBONE_ST
from pipeline.data import load_annotations, manifest_source
from pipeline.distributed import Distributed
from pipeline.errors import FoleyError
from pipeline.framecache import FrameCache, build_frame_cache, cache_files, frame_cache_fingerprint
from pipeline.fsio import atomic_write_text, sha256_file
from pipeline.loop import ADAM_BETAS, GRAD_CLIP, MIN_LR_RATIO, fit
from pipeline.options import PretrainOptions
from pipeline.pretrainer import (COLOUR_JITTER, CROP_MARGIN, FLIP_P, ClipBatches, Prefetched, PretrainObjective,
                                 Pretrainer, StemBatches, class_list)
from pipeline.runs import (CKPT_LAST, CONFIG_JSON, PretrainDescription, RunCheckpoint, on_main, prepare_run_dir,
                           read_checkpoint, read_metrics, read_run_config, versions, write_config)
from pipeline.runtime import decode_workers, resolve_device, resolve_precision, usable_cores
from pipeline.stemcache import StemCache, build_stem_cache

log = logging.getLogger("foleycache")

# ----------------------------------------------------------------------------- constants

# Options and their defaults: pipeline.options.PretrainOptions, from float32 measurements
# (docs/pretraining.md). The schedule, clipping and AdamW betas are the training loop's (pipeline.loop).
EVAL_BATCH = 16                 # validation clips per step

FAILURES = "failures.jsonl"
SPLITS = ("train", "val")
FRAME_CACHE_FILES = tuple(p.name for split in SPLITS for p in cache_files(Path(f"frames-{split}")))
STEM_CACHE_FILES = tuple(f"stem-{split}.{part}" for split in SPLITS for part in ("json", "maps.npy", "done.npy"))
EXTRA_FILES = (BACKBONE_PT, BACKBONE_ST, FAILURES) + FRAME_CACHE_FILES + STEM_CACHE_FILES


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


def _check_backbone(o: PretrainOptions):
    """What the backbone must allow: one feature per frame for the envelope, a stage split for freezing."""
    spec = backbones.get_spec(o.backbone)
    if spec.time_stride != 1 and o.aux_envelope is not None:
        raise FoleyError(f"--aux-envelope needs one feature per frame; backbone {o.backbone} pools time")
    if not o.freeze_blocks:
        return
    net = backbones.create_backbone(o.backbone)         # builders may be partials: ask the network itself
    if not isinstance(net, backbones.Backbone):
        raise FoleyError(f"--freeze-blocks: backbone {o.backbone} has no stages to freeze")
    read = len(net.blocks()) - len(net.unread())
    if o.freeze_blocks >= read:
        raise FoleyError(f"--freeze-blocks {o.freeze_blocks} leaves nothing of {o.backbone} to train: its map is "
                         f"read after stage {read} (freeze {read - 1} or fewer)")


def _resolve_options(given: dict, out: Path, resume: bool) -> PretrainOptions:
    """Given options over (the resumed run's options or the defaults); a resume that changes one is
    refused. The checkpoint is resolved to a file ("none" stays)."""
    opts = PretrainOptions.resolve(given, read_run_config(out) if resume else None)
    _check_backbone(opts)
    opts.checkpoint = resolve_weights(opts.backbone, opts.checkpoint)
    return opts


def resolve_weights(backbone: str, checkpoint: str | None) -> str:
    """--checkpoint as a file, or "none"; None = the backbone's named weights when it has some."""
    if checkpoint is None:
        names = [w.name for w in backbones.get_spec(backbone).weights]
        checkpoint = names[0] if names else "none"
    return checkpoint if checkpoint == "none" else str(backbones.resolve_checkpoint(backbone, checkpoint)[0])


def pretrain(*, videos: Path, annotations: Path | str, val_annotations: Path | str, out: Path,
             labels: Path | None = None, classes: str | None = None, window_stride: float | None = None,
             frame_cache: Path | None = None, device: str = "auto", workers: int | None = None,
             threads: int | None = None, limit: int | None = None, resume: bool = False, overwrite: bool = False,
             progress: bool = True, **options) -> dict:
    """Train a backbone from the videos of `annotations` to classify their labels (and / or predict
    their envelope); validate on `val_annotations` (same videos folder); write the run to `out` and
    export the backbone.

    options: PretrainOptions' fields (backbone, checkpoint, size, frames, fps, freeze_blocks, epochs,
    batch_size, lr, weight_decay, warmup, aux_envelope, envelope_only, seed, amp, flip,
    label_smoothing, dropout); None or absent takes the default (or, with resume=True, the run's
    own). frame_cache: a folder where the decoded frames (and frozen stages' maps) are kept under
    their fingerprint, so other runs on the same clips reuse them (default: inside `out`).
    threads: torch threads of each process (default: torch's). Returns a summary: "run_dir",
    "best_epoch", "best_val_top1", "last_metrics", "config", "backbone" (the export),
    "extract_command", "seconds".
    """
    t_start = time.perf_counter()
    out, videos = Path(out), Path(videos)
    unknown = set(options) - set(PretrainOptions.__dataclass_fields__)
    if unknown:
        raise TypeError(f"pretrain() got unknown options {sorted(unknown)}")
    if options.get("fps") is not None:
        options["fps"] = float(options["fps"])
    if options.get("checkpoint") is not None:
        options["checkpoint"] = str(options["checkpoint"])
    PretrainOptions.check_given(options)    # before anything touches --out
    if not videos.is_dir():
        raise FoleyError(f"--videos {videos} is not a directory")
    if workers is not None and workers < 0:
        raise FoleyError(f"--workers must be >= 0, got {workers}")
    if threads is not None and threads < 1:
        raise FoleyError(f"--threads must be >= 1, got {threads}")
    if threads is not None:
        torch.set_num_threads(threads)
    opts = _resolve_options(options, out, resume)
    dist = Distributed.from_env(resolve_device(device))
    source = ClipSource(videos=videos, annotations=annotations, val_annotations=val_annotations, labels=labels,
                        classes=classes, window_stride=window_stride, frame_cache=frame_cache, limit=limit)
    try:
        summary = _pretrain(source, out, opts, dist, workers, resume=resume, overwrite=overwrite, progress=progress)
    finally:
        dist.close()
    summary["seconds"] = round(time.perf_counter() - t_start, 2)
    return summary


def _decode_clips(out: Path, source: ClipSource, entries: dict, classes: list[str], opts: PretrainOptions,
                  workers: int, dist: Distributed, progress: bool) -> DecodedClips:
    """Decode every clip once into a frame cache per split (train frames CROP_MARGIN larger, room for
    crops, unless frozen stages fix the frames as they are: then both at the input size); the
    failures go to OUT/failures.jsonl."""
    margin = 1.0 if opts.freeze_blocks else CROP_MARGIN
    stored = {"train": int(math.ceil(opts.size * margin)), "val": opts.size}
    caches, builds = {}, {}
    for split in SPLITS:
        prefix = out / f"frames-{split}"
        if source.frame_cache is not None:
            fp = frame_cache_fingerprint(entries[split], opts.frames, opts.fps, stored[split], "max")
            prefix = Path(source.frame_cache) / f"{split}-{fp[:16]}"
        t0 = time.perf_counter()
        builds[split] = build_frame_cache(prefix, entries[split], source.videos, frames=opts.frames,
                                          fps=opts.fps, size=stored[split], workers=workers, rank=dist.rank,
                                          world_size=dist.world_size, barrier=dist.barrier, gather=dist.gather,
                                          progress=progress and dist.is_main, desc=f"decoding {split} clips")
        builds[split]["seconds"] = round(time.perf_counter() - t0, 3)
        caches[split] = FrameCache(prefix)
    failures = [dict(f, split=split) for split in SPLITS for f in caches[split].failures]
    if dist.is_main:
        atomic_write_text(out / FAILURES, "".join(json.dumps(f, sort_keys=True) + "\n" for f in failures))
    rows = {split: _usable_rows(caches[split], entries[split], classes) for split in SPLITS}
    return DecodedClips(caches=caches, builds=builds, stored=stored, failures=failures, rows=rows)


def _stem_caches(out: Path, source: ClipSource, decoded: DecodedClips, model: Pretrainer, opts: PretrainOptions,
                 dist: Distributed, progress: bool) -> dict:
    """The frozen stages' maps of every decoded clip, per split, computed once (kept beside the frame
    caches when they are shared, so every run on the same clips and weights reuses them)."""
    spec = backbones.get_spec(opts.backbone)
    weights = sha256_file(opts.checkpoint) if opts.checkpoint != "none" else f"seed {opts.seed}"
    caches = {}
    for split in SPLITS:
        frames = decoded.caches[split]
        prefix = out / f"stem-{split}"
        if source.frame_cache is not None:
            prefix = Path(frames.prefix.parent) / f"{frames.prefix.name}-stem{opts.freeze_blocks}-{weights[:12]}"
        t0 = time.perf_counter()
        build = build_stem_cache(prefix, frames, model.backbone, opts.freeze_blocks, backbone=opts.backbone,
                                 weights_sha256=weights, mean=spec.mean, std=spec.std, rank=dist.rank,
                                 world_size=dist.world_size, barrier=dist.barrier, progress=progress and dist.is_main,
                                 desc=f"frozen stages, {split} clips")
        decoded.builds[split]["stem"] = dict(build, seconds=round(time.perf_counter() - t0, 3))
        caches[split] = StemCache(prefix)
    return caches


def _usable_rows(cache: FrameCache, entries: list, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the decoded clips of a trained class, and their class indices."""
    index = {t: k for k, t in enumerate(classes)}
    rows = [int(r) for r in cache.decoded if entries[r].template in index]
    return np.asarray(rows, np.int64), np.asarray([index[entries[r].template] for r in rows], np.int64)


def _run_config(opts: PretrainOptions, source: ClipSource, schedule: Schedule, decoded: DecodedClips,
                dist: Distributed, classes: list[str], channels: int) -> dict:
    """The run's resolved config (config.json and every checkpoint): what was asked and what it became."""
    n_train, n_val = (len(decoded.rows[split][0]) for split in SPLITS)
    augment = {"flip_p": FLIP_P if opts.flip else 0.0, "time": "never moved"}
    if opts.freeze_blocks:
        augment["on"] = "the frozen stages' maps (left-right flip only)"
    else:
        augment.update(crop_margin=CROP_MARGIN, colour_jitter=list(COLOUR_JITTER))
    return {
        "command": "pretrain", "options": opts.to_dict(), "amp": schedule.amp, "device": str(dist.device),
        "workers": schedule.workers, "threads": torch.get_num_threads(), "world_size": dist.world_size,
        "global_batch_size": opts.batch_size * dist.world_size, "steps_per_epoch": schedule.steps_per_epoch,
        "total_steps": schedule.total_steps, "warmup_steps": schedule.warmup_steps, "min_lr_ratio": MIN_LR_RATIO,
        "grad_clip": GRAD_CLIP, "adam_betas": list(ADAM_BETAS), "augment": augment,
        "videos": str(source.videos.resolve()), "annotations": manifest_source(source.annotations),
        "val_annotations": manifest_source(source.val_annotations),
        "labels": str(source.labels) if source.labels else None,
        "classes_filter": None if source.classes is None else str(source.classes),
        "window_stride": source.window_stride, "classes": classes, "train_clips": n_train, "val_clips": n_val,
        "val_unknown_class": int(len(decoded.caches["val"].decoded) - n_val), "failed": len(decoded.failures),
        "frame_caches": {s: {"prefix": b["prefix"], "fingerprint": b["fingerprint"],
                             "stored_size": decoded.stored[s], "reused": b["reused"], "stem": b.get("stem")}
                         for s, b in decoded.builds.items()},
        "backbone": opts.backbone, "channels": channels,
        "preprocess": dict(backbones.get_spec(opts.backbone).preprocess(), size=opts.size),
        "export": {"checkpoint": CKPT_LAST, "files": [BACKBONE_PT, BACKBONE_ST]},
        "versions": versions(),
    }


def _load_entries(source: ClipSource, opts: PretrainOptions) -> tuple[dict, list[str]]:
    """Both manifests' entries (split -> list) and the classes the training list holds."""
    manifest = dict(classes=source.classes, labels_path=source.labels, videos=source.videos,
                    window_stride=source.window_stride, frames=opts.frames, fps=opts.fps)
    entries = {split: load_annotations(path, **manifest)[:source.limit]
               for split, path in zip(SPLITS, (source.annotations, source.val_annotations))}
    classes = class_list(entries["train"])
    if len(classes) < 2 and not opts.envelope_only:
        raise FoleyError(f"the training list holds {len(classes)} class; classifying needs at least 2")
    return entries, classes


def _build_model(opts: PretrainOptions, n_classes: int, device: torch.device) -> tuple[Pretrainer, torch.optim.Optimizer, int]:
    """A seeded init (or given weights) with its first freeze_blocks stages frozen, the heads seeded
    the same on every rank and run; AdamW over the trained parameters, no weight decay on biases and
    norms. Returns (model, optimizer, channels C of the last map)."""
    net = backbones.create_backbone(opts.backbone, seed=opts.seed)
    if not isinstance(net, backbones.Backbone):
        raise FoleyError(f"backbone {opts.backbone} has no feature map to pretrain")
    if opts.checkpoint != "none":
        backbones.load_checkpoint(net, opts.checkpoint)
    backbones.freeze_blocks(net, opts.freeze_blocks)
    backbones.freeze_unstaged(net)      # MobileNetV2's ImageNet classifier: kept as loaded
    torch.manual_seed(opts.seed)
    channels = int(net.feature_map(torch.zeros(1, 3, 1, opts.size, opts.size)).shape[1])
    model = Pretrainer(net, channels, 0 if opts.envelope_only else n_classes, opts.aux_envelope is not None,
                       opts.dropout, stem_blocks=opts.freeze_blocks).to(device)
    trained = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trained if p.dim() >= 2]                        # no weight decay on biases, BN
    rest = [p for p in trained if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": opts.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=opts.lr, betas=ADAM_BETAS)
    return model, optimizer, channels


def _prepare(out: Path, opts: PretrainOptions, dist: Distributed, resume: bool, overwrite: bool) -> bool:
    """Rank 0 checks (and with --overwrite empties) the run dir and writes the run's config before the
    frames are decoded, so a run killed while decoding resumes (--resume) with what is done.
    Returns whether the run has a checkpoint to resume from."""
    has_ckpt = on_main(dist, lambda: prepare_run_dir(out, resume, overwrite, extra_files=EXTRA_FILES) is not None)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if not (out / CONFIG_JSON).exists():
            write_config(out, {"command": "pretrain", "options": opts.to_dict()})
    dist.barrier()
    return has_ckpt


def _batches(decoded: DecodedClips, stems: dict | None, opts: PretrainOptions, dist: Distributed) -> tuple:
    """(train, val) ClipBatches: frames, or the frozen stages' maps when there are some."""
    spec = backbones.get_spec(opts.backbone)
    common = dict(flip=opts.flip, seed=opts.seed, dist=dist)
    if stems is not None:
        return tuple(StemBatches(decoded.caches[s], stems[s], *decoded.rows[s], augment=s == "train",
                                 batch_size=opts.batch_size if s == "train" else EVAL_BATCH, **common)
                     for s in SPLITS)
    return tuple(ClipBatches(decoded.caches[s], *decoded.rows[s], size=opts.size, mean=spec.mean, std=spec.std,
                             augment=s == "train", batch_size=opts.batch_size if s == "train" else EVAL_BATCH,
                             **common) for s in SPLITS)


def _resume_checkpoint(out: Path, has_ckpt: bool) -> RunCheckpoint | None:
    if not has_ckpt:
        return None
    return RunCheckpoint.from_dict(read_checkpoint(out / CKPT_LAST, hint="start over with --overwrite"),
                                   out / CKPT_LAST)


def _pretrain(source: ClipSource, out: Path, opts: PretrainOptions, dist: Distributed, workers: int | None, *,
              resume: bool, overwrite: bool, progress: bool) -> dict:
    device = dist.device
    amp = opts.amp
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
    model, optimizer, channels = _build_model(opts, len(classes), device)
    stems = _stem_caches(out, source, decoded, model, opts, dist, progress) if opts.freeze_blocks else None
    train, val = _batches(decoded, stems, opts, dist)
    steps_per_epoch = len(train.batches(0))
    total_steps = opts.epochs * steps_per_epoch
    schedule = Schedule(amp, workers, steps_per_epoch, total_steps, opts.warmup_steps(total_steps))
    config = _run_config(opts, source, schedule, decoded, dist, classes, channels)
    config["extract_command"] = extract_command(out, config)
    describe = PretrainDescription(kind="pretrain", backbone=opts.backbone, classes=classes, size=opts.size,
                                   frames=opts.frames, fps=opts.fps, aux_envelope=opts.aux_envelope,
                                   preprocess=config["preprocess"], freeze_blocks=opts.freeze_blocks,
                                   envelope_only=opts.envelope_only)
    objective = PretrainObjective(classes=classes, aux_weight=opts.aux_envelope,
                                  label_smoothing=opts.label_smoothing, class_loss=not opts.envelope_only)
    result = fit(model, optimizer, Prefetched(train), val, run_dir=out, epochs=opts.epochs,
                 warmup_steps=schedule.warmup_steps, dist=dist, description=describe, config=config, amp=amp,
                 seed=opts.seed, resume=_resume_checkpoint(out, has_ckpt), progress=progress, objective=objective,
                 sync_buffers=True)
    top1 = [h["val_top1"] for h in read_metrics(out) if h.get("val_top1") is not None]
    exported = on_main(dist, lambda: export_backbone(out))
    return {"run_dir": str(out), "epochs_run": result["epochs_run"], "best_epoch": result["best_epoch"],
            "best_val_top1": max(top1, default=None), "last_metrics": result["last_metrics"], "config": config,
            "backbone": exported, "extract_command": config["extract_command"], "frame_caches": decoded.builds}

