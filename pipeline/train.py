"""train-head: train the LSTM+FC head from a feature cache, fast (docs/design.md, "Training").

    train_head(train_cache, val_cache, out, epochs=..., ...)   what `foleycache train-head` calls

Read top to bottom: the caches are checked (`_open_caches`); the options resolved
(`pipeline.options.TrainOptions`: defaults, ranges, what a --resume may not change); the run
directory prepared and the checkpoint to resume read (`pipeline.runs`); the input transform fitted
on the TRAIN cache and the batches built (`pipeline.loader.CacheBatches`); the head and AdamW
built; the run's config recorded; and `pipeline.loop.fit` trains.

This module decides what a train-head run is; it must not hold the loop, the loader or the run
directory's file formats (pipeline.loop, pipeline.loader, pipeline.runs do).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.cache import FeatureCache
from pipeline.distributed import Distributed
from pipeline.errors import FoleyError
from pipeline.extract import holds_targets
from pipeline.head import Head, HeadConfig, HeadLoss, InputTransform, splits_input
from pipeline.loader import CacheBatches
from pipeline.media import MIN_FRAMES
from pipeline.loop import ADAM_BETAS, GRAD_CLIP, MIN_LR_RATIO, WeightEMA, fit
from pipeline.options import TrainOptions, ema_decay_for
from pipeline.runs import (RUN_FILES, RunCheckpoint, RunDescription, on_main, prepare_run_dir, read_resume_checkpoint,
                           read_run_config, to_cpu, versions)
from pipeline.runtime import reader_workers, resolve_amp, resolve_device, seed_everything


@dataclass
class _Data:
    """A run's caches, transform and batches, as `_prepare_data` leaves them."""

    train_cache: FeatureCache
    val_cache: FeatureCache
    transform: InputTransform
    train_batches: CacheBatches
    val_batches: CacheBatches


def train_head(train_cache, val_cache, out, *, epochs: int | None = None, batch_size: int | None = None,
               lr: float | None = None, weight_decay: float | None = None, warmup: int | None = None,
               hidden: int | None = None, layers: int | None = None, dropout: float | None = None,
               input: str | None = None, seed: int | None = None, amp: str | None = None,
               early_stop: int | None = None, center_clips: bool | None = None, temporal: str | None = None,
               conv_channels: int | None = None, onset_weight: float | None = None, slope_weight: float | None = None,
               time_shift: int | None = None, ema_decay: float | None = None, device: str = "auto",
               preload: str | None = None, workers: int | None = None, resume: bool = False, overwrite: bool = False,
               progress: bool = True) -> dict:
    """Train the head on `train_cache`, validate on `val_cache`, write the run to `out`.

    Options left None take TrainOptions' defaults (or, with resume=True, the run's own values).
    warmup is in optimizer steps (default 5% of all steps). Returns fit()'s summary plus "config"
    and the paths of the run's files. Raises FoleyError for bad options, mismatched caches or a run
    dir in the way.
    """
    out = Path(out)
    given = dict(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup=warmup,
                 hidden=hidden, layers=layers, dropout=dropout, input=input, seed=seed, amp=amp, early_stop=early_stop,
                 center_clips=center_clips, temporal=temporal, conv_channels=conv_channels, onset_weight=onset_weight,
                 slope_weight=slope_weight, time_shift=time_shift, ema_decay=ema_decay, preload=preload)
    TrainOptions.check_given(given)         # before anything touches --out
    if workers is not None and workers < 0:
        raise FoleyError(f"--workers must be >= 0, got {workers}")
    dist = Distributed.from_env(resolve_device(device))
    try:
        return _train_head(train_cache, val_cache, out, dist, given, workers, resume, overwrite, progress)
    finally:
        dist.close()


def _open_caches(train_path, val_path) -> tuple[FeatureCache, FeatureCache]:
    """The two caches, refused unless extracted alike, of one shape, and not empty."""
    train_cache, val_cache = FeatureCache(train_path), FeatureCache(val_path)
    for c in (train_cache, val_cache):
        if not holds_targets(c.config):     # its envelopes are zeros, not sound: nothing to learn or score
            raise FoleyError(f"cache {c.path} holds no targets (extracted without audio, for prediction "
                             "only): train on caches extracted from videos with their sound")
    if train_cache.fingerprint != val_cache.fingerprint:
        raise FoleyError(f"train and val caches were extracted differently (fingerprints "
                         f"{train_cache.fingerprint[:12]}… vs {val_cache.fingerprint[:12]}…): extract both "
                         "with the same backbone, weights and settings")
    if (train_cache.frames, train_cache.dim) != (val_cache.frames, val_cache.dim):
        raise FoleyError(f"train and val caches hold different shapes ([T, D] {train_cache.frames, train_cache.dim} "
                         f"vs {val_cache.frames, val_cache.dim})")
    if len(train_cache) == 0 or len(val_cache) == 0:
        raise FoleyError("the train and val caches must each hold at least one clip")
    return train_cache, val_cache


def _train_head(train_path, val_path, out, dist, given, workers, resume, overwrite, progress) -> dict:
    device = dist.device
    train_cache, val_cache = _open_caches(train_path, val_path)

    # Options first (read-only: a resumed run's own options fill what was not given), so that a bad
    # option never costs an --overwrite its old run; then rank 0 prepares the run dir.
    opts = TrainOptions.resolve(given, read_run_config(out) if resume else None)
    # The head reads the transform's output: its width decides CPU autocast (runtime.resolve_amp).
    # Built before the run dir is touched, so a cache motion-energy cannot read costs nothing either.
    if given.get("center_clips") and opts.input != "features":
        raise FoleyError("--center-clips applies to --input features only")
    transform = InputTransform(opts.input, train_cache.dim, cache_config=train_cache.config,
                               center=opts.center_clips and opts.input == "features")
    amp = resolve_amp(opts.amp, device, wide_input=splits_input(transform.out_dim, opts.hidden))
    workers = reader_workers(dist.world_size) if workers is None else workers
    has_ckpt = on_main(dist, lambda: prepare_run_dir(out, resume, overwrite) is not None)
    ckpt = read_resume_checkpoint(out) if has_ckpt else None
    if ckpt is not None and ckpt.description.fingerprint != train_cache.fingerprint:
        raise FoleyError(f"--resume: the run was trained on a cache with fingerprint "
                         f"{ckpt.description.fingerprint[:12]}…, --train-cache has {train_cache.fingerprint[:12]}…")
    seed_everything(opts.seed)
    data = _prepare_data(train_cache, val_cache, transform, ckpt, opts, workers, dist, progress)

    head_config = HeadConfig(input_dim=data.transform.out_dim, hidden=opts.hidden, layers=opts.layers,
                             fc=tuple(opts.fc), dropout=opts.dropout, input=opts.input, temporal=opts.temporal,
                             conv_channels=opts.conv_channels)
    torch.manual_seed(opts.seed)            # same initial weights on every rank and every run
    head = Head(head_config).to(device)
    optimizer = _adamw(head, opts)
    config = _run_config(opts, amp, workers, dist, data, head_config)
    description = RunDescription(kind="train-head", head_config=head_config.to_dict(),
                                 transform=data.transform.state_dict(), fingerprint=train_cache.fingerprint,
                                 cache_config=train_cache.config, val_fingerprint=val_cache.fingerprint)
    summary = fit(head, optimizer, data.train_batches, data.val_batches, run_dir=out, epochs=opts.epochs,
                  warmup_steps=config["warmup_steps"], dist=dist, description=description, config=config,
                  amp=amp, early_stop=opts.early_stop, seed=opts.seed, resume=ckpt, progress=progress,
                  loss=HeadLoss(opts.onset_weight, opts.slope_weight),
                  augment=TimeShift(opts.time_shift) if opts.time_shift else None,
                  average=WeightEMA(head, config["ema_decay_per_step"]) if opts.ema_decay else None)
    summary.update(config=config, files={name: str(out / name) for name in RUN_FILES})
    return summary


def _prepare_data(train_cache, val_cache, transform: InputTransform, ckpt: RunCheckpoint | None,
                  opts: TrainOptions, workers: int, dist: Distributed, progress: bool) -> _Data:
    """The input transform (statistics from the TRAIN cache only, or the checkpoint's on resume;
    fitted from memory when the cache is preloaded; the val cache is read through the same numbers)
    and both caches' batches."""
    device = dist.device
    if ckpt is not None:
        transform = InputTransform.from_state_dict(ckpt.description.transform)
    transform = transform.to(device)
    batches = lambda cache, shuffle, name: CacheBatches.from_cache(  # noqa: E731
        cache, transform, opts.batch_size, shuffle=shuffle, seed=opts.seed, preload=opts.preload, device=device,
        workers=workers, dist=dist, progress=progress and dist.is_main, name=name)
    train_batches = batches(train_cache, True, "train")
    val_batches = batches(val_cache, False, "val")      # reads through `transform`, fitted in place below
    for b in (train_batches, val_batches):
        b.start_workers()                   # before anything big is allocated (see start_workers)
    if ckpt is None:
        source = train_batches.fit_source or train_cache
        state = on_main(dist, lambda: to_cpu(transform.fit(source, progress=progress).state_dict()))
        transform.load_state_dict(state)
    train_batches.prepare()
    val_batches.prepare()
    return _Data(train_cache, val_cache, transform, train_batches, val_batches)


class TimeShift:
    """Training augmentation: each clip starts up to `frames` frames later (its first s frames
    dropped, features and target moved together, `length` reduced; s drawn per clip from the
    torch RNG, which the loop seeds per rank and restores on resume). An impact is then seen at
    other frame indices than the clip's own, so the head cannot learn when impacts usually happen."""

    def __init__(self, frames: int):
        self.frames = int(frames)

    def __call__(self, batch: dict) -> dict:
        x, target, length = batch["inputs"], batch["target"], batch["length"]
        b, t = target.shape
        room = (length - MIN_FRAMES).clamp(min=0).clamp(max=self.frames).cpu()
        shift = (torch.rand(b) * (room + 1).float()).long().to(length.device)     # 0 .. room[i]
        index = (torch.arange(t, device=length.device)[None, :] + shift[:, None]).clamp(max=t - 1)  # [B, T]
        x = torch.gather(x, 1, index[:, :, None].expand(-1, -1, x.shape[-1]))
        return dict(batch, inputs=x, target=torch.gather(target, 1, index), length=length - shift)


def _adamw(head: Head, opts: TrainOptions) -> torch.optim.Optimizer:
    decay = [p for p in head.parameters() if p.dim() >= 2]      # no weight decay on biases
    rest = [p for p in head.parameters() if p.dim() < 2]
    # fused: one kernel for all parameters instead of several per tensor, much faster on CPU at a
    # wide input (`benchmarks/train_head.py` times the step)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": opts.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=opts.lr, betas=ADAM_BETAS, fused=True)


def _cache_record(cache) -> dict:
    return {"path": str(Path(cache.path).resolve()), "fingerprint": cache.fingerprint, "clips": len(cache),
            "frames": cache.frames, "dim": cache.dim, "dtype": cache.dtype}


def _run_config(opts: TrainOptions, amp: str, workers: int, dist: Distributed, data: _Data,
                head_config: HeadConfig) -> dict:
    """The resolved run: config.json, and every checkpoint's config."""
    steps_per_epoch = len(data.train_batches)
    total_steps = opts.epochs * steps_per_epoch
    transform = data.transform
    return {
        "command": "train-head", "options": opts.to_dict(), "amp": amp, "device": str(dist.device),
        "preload": opts.preload,    # as asked; what each cache got and why (--preload auto decides per cache):
        "preload_used": {"train": data.train_batches.preload, "val": data.val_batches.preload},
        "preload_reason": {"train": data.train_batches.preload_reason, "val": data.val_batches.preload_reason},
        "preload_bytes": {"train": data.train_batches.preload_bytes, "val": data.val_batches.preload_bytes},
        "workers": workers, "world_size": dist.world_size, "global_batch_size": opts.batch_size * dist.world_size,
        "steps_per_epoch": steps_per_epoch, "total_steps": total_steps, "warmup_steps": opts.warmup_steps(total_steps),
        "ema_decay_per_step": ema_decay_for(opts.ema_decay, total_steps) if opts.ema_decay else 0.0,
        "min_lr_ratio": MIN_LR_RATIO, "grad_clip": GRAD_CLIP, "adam_betas": list(ADAM_BETAS),
        "train_cache": _cache_record(data.train_cache), "val_cache": _cache_record(data.val_cache),
        "cache_config": data.train_cache.config, "head": head_config.to_dict(),
        "transform": {"kind": transform.kind, "in_dim": transform.dim, "out_dim": transform.out_dim,
                      "cells": transform.cells, "fitted_on": "train_cache"},
        "versions": versions(),
    }
