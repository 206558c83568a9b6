"""finetune: backbone + head trained end to end from videos (docs/design.md, "Training").

    frames [B, 3, T, S, S] ─► backbone ─► features [B, T, D] ─► InputTransform ─► Head ─► logits [B, T]

It shares train-head's loop (`pipeline.loop.fit`): schedule, clipping, autocast, DDP, validation
metrics, metrics.jsonl, atomic self-describing checkpoints and `--resume`. What is its own:
- data: clips decoded by `pipeline.decoding` (the extraction path) in DataLoader workers, with light
  augmentation that never moves a sound in time (scale jitter + a random crop, the same for every
  frame of a clip), off for validation. Faulty videos are found once, up front, and recorded in
  RUN/failures.jsonl; they are skipped, never replaced by another clip.
- the model: `EndToEnd` (backbone, transform, head); `--freeze-blocks N` keeps the first N of
  the five blocks fixed and in eval mode; BatchNorm statistics stay fixed everywhere (a batch of a
  few clips gives too noisy a batch statistic), the convolutions of the other blocks learn.
- `--init-head RUN/checkpoint-best.pt` starts from a train-head run: its head and input
  transform, and by default the backbone weights and frame size its cache was extracted with.
- outputs: the run directory of train-head plus RUN/backbone.pth.tar (the published key layout:
  `extract-features --checkpoint RUN/backbone.pth.tar` re-caches with it) and RUN/backbone.safetensors,
  both from the best epoch.
Its options, their defaults and ranges are `pipeline.options.FinetuneOptions`. This module must not
hold the loop or the run directory's formats (pipeline.loop, pipeline.runs).
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from pipeline import backbones
from pipeline.data import load_annotations, manifest_source
from pipeline.decoding import decode_loader, load_entry
from pipeline.distributed import Distributed
from pipeline.errors import FoleyError
from pipeline.backbones import BACKBONE_PT, BACKBONE_ST, CALIBRATED_WEIGHTS, weights_sha256
from pipeline.extract import holds_targets
from pipeline.cache_config import CacheConfig
from pipeline.fsio import atomic_write_text
from pipeline.head import Head, HeadConfig, InputTransform
from pipeline.loader import epoch_batches
from pipeline.loop import ADAM_BETAS, GRAD_CLIP, MIN_LR_RATIO, fit
from pipeline.media import FPS, FRAMES, FaultyVideo, normalize_frames
from pipeline.options import FinetuneOptions, default_warmup
from pipeline.runs import (CKPT_BEST, CKPT_LAST, CONFIG_JSON, METRICS_JSONL, RunCheckpoint, RunDescription,
                           load_head, on_main, prepare_run_dir, read_resume_checkpoint, to_cpu, versions)
from pipeline.runtime import autocast, cpu_has_bf16, decode_workers, resolve_amp, resolve_device, seed_everything

log = logging.getLogger("foleycache")

SCALE_JITTER = (1.0, 1.15)     # decode at size * s, then a random size x size crop (train only)
STATS_CLIPS = 32               # clips whose features fit the input transform when there is no --init-head
PROBE_SIZE = 32                # frame size the up-front scan for faulty videos decodes at
DEFAULT_BACKBONE = "model3d_1"
DEFAULT_FRAMES, DEFAULT_FPS = FRAMES, FPS      # the data contract's clip (pipeline.media)
FAILURES = "failures.jsonl"
EXTRA_FILES = (BACKBONE_PT, BACKBONE_ST, FAILURES)     # a finetune run's files beyond runs.RUN_FILES


class EndToEnd(nn.Module):
    """Backbone → input transform → head: frames [B, 3, T, S, S] → logits [B, T]."""

    def __init__(self, backbone: nn.Module, transform: InputTransform, head: Head):
        super().__init__()
        self.backbone, self.transform, self.head = backbone, transform, head

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.backbone.modules():          # fixed BatchNorm statistics (see module docstring)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def forward(self, frames: torch.Tensor, length: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.transform(self.backbone(frames), length), length)


class VideoClips(Dataset):
    """Item k = the clip of entry k: {"inputs" [3, T, S, S], "target" [T], "length", "index"}.

    augment=True: a scale s in SCALE_JITTER and a crop offset drawn from (seed, epoch, k), so an
    epoch's data is the same after a resume; the crop is one for all frames (no shift in time).
    spec: the backbone's, whose mean/std normalise the frames (as extract-features does)."""

    def __init__(self, entries: list, videos: Path, frames: int, fps: float, size: int, augment: bool, seed: int,
                 spec: backbones.BackboneSpec):
        self.entries, self.videos = entries, Path(videos)
        self.frames, self.fps, self.size, self.augment, self.seed = frames, fps, size, augment, seed
        self.mean, self.std = spec.mean, spec.std
        self.epoch = 0

    def __len__(self):
        return len(self.entries)

    def __getitem__(self, k: int) -> dict:
        entry = self.entries[k]
        if not self.augment:
            clip, _ = load_entry(self.videos, entry, self.frames, self.fps, self.size, normalize=False)
            x = clip.frames
        else:
            rng = np.random.default_rng([self.seed, self.epoch, k])
            big = int(round(self.size * rng.uniform(*SCALE_JITTER)))
            clip, _ = load_entry(self.videos, entry, self.frames, self.fps, big, normalize=False)
            top, left = rng.integers(0, big - self.size + 1, size=2)
            x = clip.frames[:, :, top:top + self.size, left:left + self.size]
        x = normalize_frames(x, channel_dim=0, mean=self.mean, std=self.std)
        return {"inputs": x, "target": torch.from_numpy(clip.envelope), "length": clip.length, "index": k}


class VideoBatches:
    """What fit() iterates: this rank's batches of decoded clips for one epoch (order from (seed, epoch))."""

    def __init__(self, dataset: VideoClips, batch_size: int, shuffle: bool, seed: int, dist: Distributed,
                 workers: int):
        self.dataset, self.batch_size, self.shuffle, self.seed = dataset, batch_size, shuffle, seed
        self.dist, self.workers, self.epoch = dist, workers, 0

    def set_epoch(self, epoch: int):
        self.epoch = self.dataset.epoch = epoch

    def _batches(self):
        return epoch_batches([len(self.dataset)], self.batch_size, shuffle=self.shuffle, seed=self.seed,
                             epoch=self.epoch, rank=self.dist.rank, world_size=self.dist.world_size,
                             pad=self.shuffle)

    def __len__(self):
        return len(self._batches())

    def __iter__(self):
        # 2 batches ahead per worker (DataLoader's default): a batch of clips is large
        loader = decode_loader(self.dataset, self.workers, pin_memory=self.dist.device.type == "cuda",
                               batch_sampler=[b.tolist() for b in self._batches()], prefetch=2)
        for batch in loader:
            batch["length"] = batch["length"].long()
            batch["index"] = batch["index"].long()
            yield batch


def _scan(entries, videos, frames, fps, workers, progress) -> tuple[list, list]:
    """Decode every candidate once (small) to find the faulty ones: (good entries, failure records)."""
    class Probe(Dataset):
        def __len__(self):
            return len(entries)

        def __getitem__(self, k):
            try:
                load_entry(videos, entries[k], frames, fps, PROBE_SIZE)
                return None
            except FaultyVideo as e:
                return e.record(entries[k].id)

    loader = decode_loader(Probe(), workers, prefetch=2)
    failures = list(tqdm(loader, total=len(entries), desc="checking videos", unit="clip", disable=not progress,
                         leave=False))
    good = [a for a, f in zip(entries, failures) if f is None]
    return good, [f for f in failures if f is not None]


def _init_head_defaults(init_head: Path | None) -> dict:
    """What an --init-head run implies: its head/transform and the backbone weights + size of its cache."""
    if init_head is None:
        return {}
    head, transform, ckpt = load_head(init_head)
    if not holds_targets(ckpt.description.cache_config or {}):
        raise FoleyError(f"--init-head {init_head} was trained on a cache that holds no targets (extracted "
                         "without audio): start from a head trained on videos with their sound")
    cfg = CacheConfig.from_dict(ckpt.description.cache_config)
    weights = cfg.weights_name or cfg.checkpoint    # a name is found again on this machine
    if weights == "none":          # a calibrated random init: the cache keeps the calibrated weights
        weights = str(Path(ckpt.config["train_cache"]["path"]) / CALIBRATED_WEIGHTS)
    return {"path": str(init_head), "head": head, "transform": transform, "ckpt": ckpt, "checkpoint": weights,
            "size": cfg.size, "backbone": cfg.backbone, "pool": cfg.pool if cfg.raw else None,
            "frames": cfg.frames, "fps": cfg.fps, "weights_sha256": cfg.weights_sha256}


@dataclass
class _Manifests:
    """Where the clips come from (`pipeline.data.load_annotations`' arguments)."""

    videos: Path
    annotations: Path | str
    val_annotations: Path | str
    labels: Path | None
    classes: str | None
    window_stride: float | None
    limit: int | None

    def entries(self, opts: FinetuneOptions) -> tuple[list, list]:
        """(train entries, validation entries), the first `limit` of each."""
        manifest = dict(classes=self.classes, labels_path=self.labels, videos=self.videos,
                        window_stride=self.window_stride, frames=opts.frames, fps=opts.fps)
        return (load_annotations(self.annotations, **manifest)[:self.limit],
                load_annotations(self.val_annotations, **manifest)[:self.limit])

    def record(self) -> dict:
        """What config.json says about them."""
        return {"videos": str(self.videos.resolve()), "annotations": manifest_source(self.annotations),
                "val_annotations": manifest_source(self.val_annotations),
                "classes": None if self.classes is None else str(self.classes), "window_stride": self.window_stride,
                "labels": str(self.labels) if self.labels else None}


def finetune(*, videos: Path, annotations: Path | str, val_annotations: Path | str, out: Path,
             labels: Path | None = None, classes: str | None = None, window_stride: float | None = None,
             backbone: str | None = None, checkpoint: str | Path | None = None,
             init_head: Path | None = None, freeze_blocks: int | None = None, size: int | None = None,
             pool: str | None = None, frames: int | None = None, fps: float | None = None, epochs: int | None = None,
             batch_size: int | None = None, lr: float | None = None, backbone_lr: float | None = None,
             weight_decay: float | None = None, input: str | None = None, seed: int | None = None,
             amp: str = "auto", activation_checkpointing: bool = False, device: str = "auto",
             workers: int | None = None, limit: int | None = None, resume: bool = False,
             overwrite: bool = False, progress: bool = True) -> dict:
    """Train backbone + head end to end on `annotations`, validate on `val_annotations` (same videos dir).

    Options left None take FinetuneOptions' defaults, the --init-head run's values, or (with resume)
    the run's own. annotations, val_annotations, classes, window_stride: manifests as
    `pipeline.data.load_annotations` reads them (SSv2 JSON, CSV / JSON Lines, a folder inside
    `videos`; windows of frames / fps s). Returns fit()'s summary plus the paths of the run's files.
    """
    out, videos = Path(out), Path(videos)
    if not videos.is_dir():
        raise FoleyError(f"--videos {videos} is not a directory")
    init = _init_head_defaults(Path(init_head)) if init_head else {}
    given = dict(epochs=epochs, batch_size=batch_size, lr=lr, backbone_lr=backbone_lr, weight_decay=weight_decay,
                 freeze_blocks=freeze_blocks, input=input, seed=seed)
    opts = _resolve_options(given, init, backbone=backbone, size=size, pool=pool, frames=frames, fps=fps,
                            checkpoint=checkpoint)
    manifests = _Manifests(videos, annotations, val_annotations, labels, classes, window_stride, limit)
    dev = resolve_device(device)
    dist = Distributed.from_env(dev)
    try:
        if amp == "auto" and dev.type == "cpu":
            amp = "bf16" if cpu_has_bf16() else "off"    # the backbone dominates: bf16 is several times faster here
        amp = resolve_amp(amp, dist.device)
        workers = decode_workers(dist.device) if workers is None else workers
        return _finetune(manifests, out, init, opts, amp, activation_checkpointing, dist, workers, resume,
                         overwrite, progress)
    finally:
        dist.close()


def _resolve_options(given: dict, init: dict, *, backbone, size, pool, frames, fps, checkpoint) -> FinetuneOptions:
    """Given options over the --init-head run's, over the backbone's own and the defaults; checked."""
    opts = FinetuneOptions.resolve(given)
    if init and given["input"] is None:
        opts.input = init["transform"].kind
    opts.backbone = backbone or init.get("backbone") or DEFAULT_BACKBONE
    spec = backbones.get_spec(opts.backbone)
    opts.size = int(size or init.get("size") or spec.default_size)
    opts.pool = backbones.canonical_pool(pool or init.get("pool") or spec.default_pool)
    opts.frames = int(frames or init.get("frames") or DEFAULT_FRAMES)
    opts.fps = float(fps or init.get("fps") or DEFAULT_FPS)
    opts.checkpoint = str(checkpoint if checkpoint is not None else init.get("checkpoint") or "none")
    opts.validate()
    if spec.time_stride != 1:
        raise FoleyError(f"backbone {opts.backbone} pools time; the head needs one feature per frame")
    if opts.checkpoint != "none":
        opts.checkpoint = str(backbones.resolve_checkpoint(opts.backbone, opts.checkpoint)[0])
    if init and opts.checkpoint != "none" and not Path(opts.checkpoint).is_file():
        raise FoleyError(f"--init-head was trained on features of {opts.checkpoint}, which no longer exists; "
                         "pass --checkpoint")
    return opts


def _finetune(manifests: _Manifests, out: Path, init: dict, opts: FinetuneOptions, amp: str, checkpointing: bool,
              dist: Distributed, workers: int, resume: bool, overwrite: bool, progress: bool) -> dict:
    device = dist.device
    has_ckpt, train_entries, val_entries, n_failed = _prepare_run(manifests, out, opts, dist, workers, resume,
                                                                  overwrite, progress)
    ckpt = read_resume_checkpoint(out) if has_ckpt else None
    if ckpt is not None:
        changed = opts.changed_from(ckpt.config["options"])
        if changed:
            raise FoleyError(f"--resume with other options than the run's ({', '.join(changed)}); resume with "
                             "the same options, or start over with --overwrite")
    seed_everything(opts.seed)
    net, init_weights = _backbone(opts, train_entries, manifests.videos, ckpt, checkpointing, device)
    transform, head = _transform_and_head(init, init_weights, opts, net, train_entries, manifests.videos, ckpt,
                                          dist, amp)
    model = EndToEnd(net, transform, head)
    optimizer = _optimizer(net, head, opts)

    spec = backbones.get_spec(opts.backbone)
    args = (manifests.videos, opts.frames, opts.fps, opts.size)
    train_batches = VideoBatches(VideoClips(train_entries, *args, True, opts.seed, spec), opts.batch_size,
                                 True, opts.seed, dist, workers)
    val_batches = VideoBatches(VideoClips(val_entries, *args, False, opts.seed, spec), opts.batch_size, False,
                               opts.seed, dist, workers)
    total_steps = opts.epochs * len(train_batches)
    config = {
        "command": "finetune", "options": opts.to_dict(), "amp": amp, "device": str(device), "workers": workers,
        "world_size": dist.world_size, "activation_checkpointing": checkpointing, **manifests.record(),
        "train_clips": len(train_entries), "val_clips": len(val_entries), "failed": n_failed,
        "init_head": init.get("path"), "init_backbone_sha256": init_weights, "steps_per_epoch": len(train_batches),
        "total_steps": total_steps, "warmup_steps": default_warmup(total_steps), "min_lr_ratio": MIN_LR_RATIO,
        "grad_clip": GRAD_CLIP, "head": head.config.to_dict(), "versions": versions(),
    }
    summary = fit(model, optimizer, train_batches, val_batches, run_dir=out, epochs=opts.epochs,
                  warmup_steps=config["warmup_steps"], dist=dist, description=_description(opts, init, init_weights,
                                                                                          head, transform),
                  config=config, amp=amp, seed=opts.seed, resume=ckpt, progress=progress)
    if dist.is_main:
        backbones.export_trained_backbone(RunCheckpoint.read(out / CKPT_BEST).model, opts.backbone, out)
    dist.barrier()
    summary["files"] = {name: str(out / name) for name in
                        (CONFIG_JSON, METRICS_JSONL, CKPT_LAST, CKPT_BEST, BACKBONE_PT, BACKBONE_ST, FAILURES)}
    return summary


def _prepare_run(manifests: _Manifests, out: Path, opts: FinetuneOptions, dist: Distributed, workers: int,
                 resume: bool, overwrite: bool, progress: bool) -> tuple[bool, list, list, int]:
    """Rank 0 checks (and with --overwrite empties) the run dir and finds the faulty videos, recorded
    in RUN/failures.jsonl → (a checkpoint to resume?, decodable train entries, decodable validation
    entries, failures)."""
    train_entries, val_entries = manifests.entries(opts)

    def prepare():
        has_ckpt = prepare_run_dir(out, resume, overwrite, extra_files=EXTRA_FILES) is not None
        out.mkdir(parents=True, exist_ok=True)
        scans = [_scan(e, manifests.videos, opts.frames, opts.fps, workers, progress)
                 for e in (train_entries, val_entries)]
        failures = scans[0][1] + scans[1][1]
        atomic_write_text(out / FAILURES, "".join(json.dumps(f, sort_keys=True) + "\n" for f in failures))
        return has_ckpt, [a.id for a in scans[0][0]], [a.id for a in scans[1][0]], len(failures)
    has_ckpt, train_ids, val_ids, n_failed = on_main(dist, prepare)
    train_entries = [a for a in train_entries if a.id in set(train_ids)]
    val_entries = [a for a in val_entries if a.id in set(val_ids)]
    if not train_entries or not val_entries:
        raise FoleyError("no decodable clip left in the train or validation list (see failures.jsonl)")
    return has_ckpt, train_entries, val_entries, n_failed


def _backbone(opts: FinetuneOptions, train_entries: list, videos: Path, ckpt: RunCheckpoint | None,
              checkpointing: bool, device: torch.device) -> tuple[nn.Module, str]:
    """The backbone on `device`, loaded or a calibrated random init (deterministic from the seed and
    the clips), blocks frozen → (backbone, sha256 of its initial weights)."""
    net = backbones.create_backbone(opts.backbone, seed=opts.seed, pool=opts.pool)
    if opts.checkpoint != "none":
        backbones.load_checkpoint(net, opts.checkpoint)
    elif ckpt is None:
        log.warning("WARNING: --checkpoint none: the backbone is RANDOMLY INITIALISED (BatchNorm calibrated "
                    "on the first training clips); end-to-end training from scratch needs far more data "
                    "than a demo has.")
        clips = VideoClips(train_entries[:STATS_CLIPS], videos, opts.frames, opts.fps, opts.size, False, 0,
                           backbones.get_spec(opts.backbone))
        backbones.calibrate_batchnorm(net, (torch.stack([clips[i]["inputs"]]) for i in range(len(clips))))
    init_weights = weights_sha256(net)
    net = net.to(device)
    backbones.freeze_blocks(net, opts.freeze_blocks)
    net.checkpointing = checkpointing
    return net, init_weights


def _transform_and_head(init: dict, init_weights: str, opts: FinetuneOptions, net: nn.Module, train_entries: list,
                        videos: Path, ckpt: RunCheckpoint | None, dist: Distributed,
                        amp: str) -> tuple[InputTransform, Head]:
    """From --init-head, or a fresh head with the transform fitted on the first training clips' features."""
    device = dist.device
    if init:
        if init.get("weights_sha256") and init["weights_sha256"] != init_weights:
            log.warning("note: --init-head was trained on features of other backbone weights than this run's")
        return init["transform"].to(device), init["head"].to(device)
    dim = backbones.feature_dim(opts.backbone, opts.size, opts.pool)
    transform = InputTransform(opts.input, dim, cache_config={"backbone": opts.backbone}).to(device)
    if ckpt is None:
        transform.load_state_dict(on_main(dist, lambda: to_cpu(
            _fit_transform(transform, net, train_entries, videos, opts, device, amp).state_dict())))
    torch.manual_seed(opts.seed)
    head = Head(HeadConfig(input_dim=transform.out_dim, hidden=opts.hidden, layers=opts.layers,
                           input=opts.input)).to(device)
    return transform, head


def _optimizer(net: nn.Module, head: Head, opts: FinetuneOptions) -> torch.optim.Optimizer:
    """AdamW: the head at --lr, the trainable backbone at --backbone-lr (frozen when that is 0).

    Every parameter decays, biases and norms included, where train-head and pretrain leave those
    out: a finetune run's optimizer state holds exactly these two groups, so splitting them would
    change its results and stop existing runs' checkpoints from resuming."""
    head_params = [p for p in head.parameters() if p.requires_grad]
    backbone_params = [p for p in net.parameters() if p.requires_grad]
    groups = [{"params": head_params, "lr": opts.lr, "weight_decay": opts.weight_decay}]
    if backbone_params and opts.backbone_lr > 0:
        groups.append({"params": backbone_params, "lr": opts.backbone_lr, "weight_decay": opts.weight_decay})
    else:
        for p in backbone_params:
            p.requires_grad_(False)
    optimizer = torch.optim.AdamW(groups, betas=ADAM_BETAS)
    # Frozen only now, so it stays in the backbone's group (the layout checkpoints resume with) and
    # never gets a step: MobileNetV2's ImageNet classifier, which torchrun's DDP would otherwise refuse.
    backbones.freeze_unstaged(net)
    return optimizer


def _description(opts: FinetuneOptions, init: dict, init_weights: str, head: Head,
                 transform: InputTransform) -> RunDescription:
    """What the checkpoints say the run trains; its fingerprint names the backbone and its inputs."""
    fingerprint = hashlib.sha256(json.dumps({"finetune": True, "backbone": opts.backbone, "init": init_weights,
                                             "size": opts.size, "frames": opts.frames, "fps": opts.fps},
                                            sort_keys=True).encode()).hexdigest()
    return RunDescription(kind="finetune", head_config=head.config.to_dict(), transform=transform.state_dict(),
                          fingerprint=fingerprint, cache_config=init["ckpt"].description.cache_config if init else None,
                          backbone=opts.backbone, size=opts.size, pool=opts.pool, frames=opts.frames, fps=opts.fps)


@torch.no_grad()
def _fit_transform(transform, net, entries, videos, opts: FinetuneOptions, device, amp) -> InputTransform:
    """Input statistics from the first STATS_CLIPS training clips' features (no cache to fit them on)."""
    clips = VideoClips(entries[:STATS_CLIPS], videos, opts.frames, opts.fps, opts.size, False, 0,
                       backbones.get_spec(opts.backbone))
    feats, lengths = [], []
    net.eval()
    for i in range(len(clips)):
        item = clips[i]
        with autocast(device, amp):
            feats.append(net(item["inputs"][None].to(device)).float().cpu())
        lengths.append(item["length"])
    return transform.fit((torch.cat(feats), torch.tensor(lengths)))

