"""finetune: backbone + head trained end to end from videos (DESIGN.md, "Training").

    frames [B, 3, T, S, S] ─► backbone ─► features [B, T, D] ─► InputTransform ─► Head ─► logits [B, T]

It shares train-head's loop (`pipeline.train.fit`): schedule, clipping, autocast, DDP, validation
metrics, metrics.jsonl, atomic self-describing checkpoints and `--resume`. What is its own:
- data: clips decoded by `load_clip` (the extraction path) in DataLoader workers, with light
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
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pipeline import backbones
from pipeline.data import find_video, load_annotations, manifest_source
from pipeline.distributed import Distributed
from pipeline.errors import FoleyError
from pipeline.extract import CALIBRATED_WEIGHTS, cpu_has_bf16, weights_sha256
from pipeline.head import INPUTS, Head, HeadConfig, InputTransform, load_head
from pipeline.media import FaultyVideo, load_clip, normalize_frames
from pipeline.train import (ADAM_BETAS, CKPT_BEST, CKPT_LAST, GRAD_CLIP, MIN_LR_RATIO, WARMUP_FRACTION,
                            _on_main, _to_cpu, atomic_write_text, epoch_batches, fit, prepare_run_dir,
                            read_checkpoint, resolve_device, seed_everything, versions)

log = logging.getLogger("foleycache")

SCALE_JITTER = (1.0, 1.15)     # decode at size * s, then a random size x size crop (train only)
STATS_CLIPS = 32               # clips whose features fit the input transform when there is no --init-head
BACKBONE_PT = "backbone.pth.tar"
BACKBONE_ST = "backbone.safetensors"
FAILURES = "failures.jsonl"
DEFAULTS = {"epochs": 5, "batch_size": 4, "lr": 1e-4, "backbone_lr": 1e-6, "weight_decay": 0.01,
            "freeze_blocks": 0, "input": "features", "hidden": 512, "layers": 2, "seed": 0}


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

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.head(self.transform(self.backbone(frames)))


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
        path = find_video(self.videos, entry)
        if not self.augment:
            clip = load_clip(path, self.frames, self.fps, self.size, threads=1, start=entry.start, normalize=False)
            x = clip.frames
        else:
            rng = np.random.default_rng([self.seed, self.epoch, k])
            big = int(round(self.size * rng.uniform(*SCALE_JITTER)))
            clip = load_clip(path, self.frames, self.fps, big, threads=1, start=entry.start, normalize=False)
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
        loader = DataLoader(self.dataset, batch_sampler=[b.tolist() for b in self._batches()],
                            num_workers=self.workers, pin_memory=self.dist.device.type == "cuda",
                            worker_init_fn=_worker_init)
        for batch in loader:
            batch["length"] = batch["length"].long()
            batch["index"] = batch["index"].long()
            yield batch


def _worker_init(_):
    torch.set_num_threads(1)


def _scan(entries, videos, frames, fps, workers, progress) -> tuple[list, list]:
    """Decode every candidate once (small) to find the faulty ones: (good entries, failure records)."""
    class Probe(Dataset):
        def __len__(self):
            return len(entries)

        def __getitem__(self, k):
            a = entries[k]
            try:
                load_clip(find_video(videos, a), frames, fps, 32, threads=1, start=a.start)
                return None
            except FaultyVideo as e:
                return {"id": a.id, "path": str(Path(videos) / (a.video or a.id)), "reason": e.reason,
                        "detail": e.detail}

    loader = DataLoader(Probe(), batch_size=None, num_workers=workers, worker_init_fn=_worker_init)
    failures = list(tqdm(loader, total=len(entries), desc="checking videos", unit="clip", disable=not progress,
                         leave=False))
    good = [a for a, f in zip(entries, failures) if f is None]
    return good, [f for f in failures if f is not None]


def _init_head_defaults(init_head: Path | None) -> dict:
    """What an --init-head run implies: its head/transform and the backbone weights + size of its cache."""
    if init_head is None:
        return {}
    head, transform, ckpt = load_head(init_head)
    cache_config = ckpt.get("cache_config") or {}
    prov = cache_config.get("backbone_provenance", {})
    weights = prov.get("weights_name") or prov.get("checkpoint")    # a name is found again on this machine
    if weights == "none":          # a calibrated random init: the cache keeps the calibrated weights
        weights = str(Path(ckpt["config"]["train_cache"]["path"]) / CALIBRATED_WEIGHTS)
    return {"path": str(init_head), "head": head, "transform": transform, "ckpt": ckpt, "checkpoint": weights,
            "size": cache_config.get("preprocess", {}).get("size"), "backbone": cache_config.get("backbone"),
            "pool": cache_config.get("pool", "none") if cache_config else None,
            "frames": cache_config.get("frames"), "fps": cache_config.get("fps"),
            "weights_sha256": cache_config.get("weights_sha256")}


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

    Options left None take DEFAULTS, the --init-head run's values, or (with resume) the run's own.
    annotations, val_annotations, classes, window_stride: manifests as `pipeline.data.load_annotations`
    reads them (SSv2 JSON, CSV / JSON Lines, a folder inside `videos`; windows of frames / fps s).
    Returns fit()'s summary plus the paths of the run's files.
    """
    out, videos = Path(out), Path(videos)
    if not videos.is_dir():
        raise FoleyError(f"--videos {videos} is not a directory")
    init = _init_head_defaults(Path(init_head)) if init_head else {}
    given = dict(epochs=epochs, batch_size=batch_size, lr=lr, backbone_lr=backbone_lr, weight_decay=weight_decay,
                 freeze_blocks=freeze_blocks, input=input, seed=seed)
    opts = {**DEFAULTS, **{k: v for k, v in given.items() if v is not None}}
    if init and input is None:
        opts["input"] = init["transform"].kind
    opts["backbone"] = backbone or init.get("backbone") or "model3d_1"
    spec = backbones.get_spec(opts["backbone"])
    opts["size"] = int(size or init.get("size") or spec.default_size)
    opts["pool"] = backbones.canonical_pool(pool or init.get("pool") or spec.default_pool)
    opts["frames"] = int(frames or init.get("frames") or 48)
    opts["fps"] = float(fps or init.get("fps") or 12)
    opts["checkpoint"] = str(checkpoint if checkpoint is not None else init.get("checkpoint") or "none")
    _check(opts)
    if backbones.get_spec(opts["backbone"]).time_stride != 1:
        raise FoleyError(f"backbone {opts['backbone']} pools time; the head needs one feature per frame")
    if opts["checkpoint"] != "none":
        opts["checkpoint"] = str(backbones.resolve_checkpoint(opts["backbone"], opts["checkpoint"])[0])
    if init and opts["checkpoint"] != "none" and not Path(opts["checkpoint"]).is_file():
        raise FoleyError(f"--init-head was trained on features of {opts['checkpoint']}, which no longer exists; "
                         "pass --checkpoint")

    from pipeline.train import resolve_amp
    dev = resolve_device(device)
    dist = Distributed.from_env(dev)
    try:
        if amp == "auto" and dev.type == "cpu":
            amp = "bf16" if cpu_has_bf16() else "off"    # the backbone dominates: bf16 is 2-5x faster here
        amp = resolve_amp(amp, dist.device)
        return _finetune(videos, annotations, val_annotations, out, labels, classes, window_stride, init, opts,
                         amp, activation_checkpointing, dist, workers, limit, resume, overwrite, progress)
    finally:
        dist.close()


def _check(o: dict):
    if o["epochs"] < 1 or o["batch_size"] < 1:
        raise FoleyError("--epochs and --batch-size must be >= 1")
    if o["lr"] <= 0 or o["backbone_lr"] < 0 or o["weight_decay"] < 0:
        raise FoleyError("--lr must be > 0, --backbone-lr and --weight-decay >= 0")
    if not 0 <= o["freeze_blocks"] <= 5:
        raise FoleyError(f"--freeze-blocks must be 0..5 (model3d_1 has five blocks), got {o['freeze_blocks']}")
    if o["input"] not in INPUTS:
        raise FoleyError(f"unknown --input {o['input']!r}; choose one of: {', '.join(INPUTS)}")
    if o["size"] < 32:
        raise FoleyError(f"--size must be >= 32, got {o['size']}")


def _finetune(videos, annotations, val_annotations, out, labels, classes, window_stride, init, opts, amp,
              checkpointing, dist, workers, limit, resume, overwrite, progress) -> dict:
    device = dist.device
    workers = max(1, min(4, (torch.get_num_threads() or 2) - 1)) if workers is None else workers
    manifest = dict(classes=classes, labels_path=labels, videos=videos, window_stride=window_stride,
                    frames=opts["frames"], fps=opts["fps"])
    train_entries = load_annotations(annotations, **manifest)[:limit]
    val_entries = load_annotations(val_annotations, **manifest)[:limit]

    # Rank 0 checks (and with --overwrite empties) the run dir and finds the faulty videos.
    def prepare():
        has_ckpt = prepare_run_dir(out, resume, overwrite, extra_files=(BACKBONE_PT, BACKBONE_ST, FAILURES)) is not None
        out.mkdir(parents=True, exist_ok=True)
        scans = [_scan(e, videos, opts["frames"], opts["fps"], workers, progress) for e in (train_entries, val_entries)]
        failures = scans[0][1] + scans[1][1]
        atomic_write_text(out / FAILURES, "".join(json.dumps(f, sort_keys=True) + "\n" for f in failures))
        return has_ckpt, [a.id for a in scans[0][0]], [a.id for a in scans[1][0]], len(failures)
    has_ckpt, train_ids, val_ids, n_failed = _on_main(dist, prepare)
    train_entries = [a for a in train_entries if a.id in set(train_ids)]
    val_entries = [a for a in val_entries if a.id in set(val_ids)]
    if not train_entries or not val_entries:
        raise FoleyError("no decodable clip left in the train or validation list (see failures.jsonl)")
    ckpt = read_checkpoint(out / CKPT_LAST) if has_ckpt else None
    if ckpt is not None:
        saved = ckpt["config"]["options"]
        changed = [k for k in opts if k in saved and saved[k] != opts[k]]
        if changed:
            raise FoleyError(f"--resume with other options than the run's ({', '.join(changed)}); resume with "
                             "the same options, or start over with --overwrite")
    seed_everything(opts["seed"])

    # The backbone: loaded, or a calibrated random init (deterministic from the seed and the clips).
    spec = backbones.get_spec(opts["backbone"])
    net = backbones.create_backbone(opts["backbone"], seed=opts["seed"], pool=opts["pool"])
    if opts["checkpoint"] != "none":
        backbones.load_checkpoint(net, opts["checkpoint"])
    elif ckpt is None:
        log.warning("WARNING: --checkpoint none: the backbone is RANDOMLY INITIALISED (BatchNorm calibrated "
                    "on the first training clips); end-to-end training from scratch needs far more data "
                    "than a demo has.")
        clips = VideoClips(train_entries[:STATS_CLIPS], videos, opts["frames"], opts["fps"], opts["size"], False, 0,
                           spec)
        backbones.calibrate_batchnorm(net, (torch.stack([clips[i]["inputs"]]) for i in range(len(clips))))
    init_weights = weights_sha256(net)
    net = net.to(device)
    backbones.freeze_blocks(net, opts["freeze_blocks"])
    net.checkpointing = checkpointing

    # Transform + head: from --init-head, or fitted on the first training clips' features.
    if init:
        transform, head = init["transform"].to(device), init["head"].to(device)
        if init.get("weights_sha256") and init["weights_sha256"] != init_weights:
            log.warning("note: --init-head was trained on features of other backbone weights than this run's")
    else:
        dim = backbones.feature_dim(opts["backbone"], opts["size"], opts["pool"])
        transform = InputTransform(opts["input"], dim, cache_config={"backbone": opts["backbone"]}).to(device)
        if ckpt is None:
            transform.load_state_dict(_on_main(dist, lambda: _to_cpu(
                _fit_transform(transform, net, train_entries, videos, opts, device, amp).state_dict())))
        torch.manual_seed(opts["seed"])
        head = Head(HeadConfig(input_dim=transform.out_dim, hidden=opts["hidden"], layers=opts["layers"],
                               input=opts["input"])).to(device)
    model = EndToEnd(net, transform, head)

    head_params = [p for p in head.parameters() if p.requires_grad]
    backbone_params = [p for p in net.parameters() if p.requires_grad]
    groups = [{"params": head_params, "lr": opts["lr"], "weight_decay": opts["weight_decay"]}]
    if backbone_params and opts["backbone_lr"] > 0:
        groups.append({"params": backbone_params, "lr": opts["backbone_lr"], "weight_decay": opts["weight_decay"]})
    else:
        for p in backbone_params:
            p.requires_grad_(False)
    optimizer = torch.optim.AdamW(groups, betas=ADAM_BETAS)

    args = (videos, opts["frames"], opts["fps"], opts["size"])
    train_batches = VideoBatches(VideoClips(train_entries, *args, True, opts["seed"], spec), opts["batch_size"],
                                 True, opts["seed"], dist, workers)
    val_batches = VideoBatches(VideoClips(val_entries, *args, False, opts["seed"], spec), opts["batch_size"], False,
                               opts["seed"], dist, workers)
    total_steps = opts["epochs"] * len(train_batches)
    warmup_steps = max(1, round(WARMUP_FRACTION * total_steps))
    fingerprint = hashlib.sha256(json.dumps({"finetune": True, "backbone": opts["backbone"], "init": init_weights,
                                             "size": opts["size"], "frames": opts["frames"], "fps": opts["fps"]},
                                            sort_keys=True).encode()).hexdigest()
    config = {
        "command": "finetune", "options": opts, "amp": amp, "device": str(device), "workers": workers,
        "world_size": dist.world_size, "activation_checkpointing": checkpointing,
        "videos": str(videos.resolve()), "annotations": manifest_source(annotations),
        "val_annotations": manifest_source(val_annotations), "classes": None if classes is None else str(classes),
        "window_stride": window_stride,
        "labels": str(labels) if labels else None, "train_clips": len(train_entries), "val_clips": len(val_entries),
        "failed": n_failed, "init_head": init.get("path"),
        "init_backbone_sha256": init_weights, "steps_per_epoch": len(train_batches), "total_steps": total_steps,
        "warmup_steps": warmup_steps, "min_lr_ratio": MIN_LR_RATIO, "grad_clip": GRAD_CLIP,
        "head": head.config.to_dict(), "versions": versions(),
    }
    describe = {"head_config": head.config.to_dict(), "transform": transform.state_dict(), "fingerprint": fingerprint,
                "kind": "finetune", "backbone": opts["backbone"], "size": opts["size"], "pool": opts["pool"],
                "frames": opts["frames"],
                "fps": opts["fps"], "cache_config": init["ckpt"].get("cache_config") if init else None}
    summary = fit(model, optimizer, train_batches, val_batches, run_dir=out, epochs=opts["epochs"],
                  warmup_steps=warmup_steps, dist=dist, describe=describe, config=config, amp=amp,
                  seed=opts["seed"], resume=ckpt, progress=progress)
    if dist.is_main:
        export_backbone(out / CKPT_BEST, out, opts["backbone"])
    dist.barrier()
    summary["files"] = {name: str(out / name) for name in
                        ("config.json", "metrics.jsonl", CKPT_LAST, CKPT_BEST, BACKBONE_PT, BACKBONE_ST, FAILURES)}
    return summary


@torch.no_grad()
def _fit_transform(transform, net, entries, videos, opts, device, amp) -> InputTransform:
    """Input statistics from the first STATS_CLIPS training clips' features (no cache to fit them on)."""
    from pipeline.train import autocast
    clips = VideoClips(entries[:STATS_CLIPS], videos, opts["frames"], opts["fps"], opts["size"], False, 0,
                       backbones.get_spec(opts["backbone"]))
    feats, lengths = [], []
    net.eval()
    for i in range(len(clips)):
        item = clips[i]
        with autocast(device, amp):
            feats.append(net(item["inputs"][None].to(device)).float().cpu())
        lengths.append(item["length"])
    return transform.fit((torch.cat(feats), torch.tensor(lengths)))


def export_backbone(checkpoint: Path, out: Path, name: str):
    """The finetuned backbone of a run checkpoint, in the published layout and as safetensors."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    net = backbones.create_backbone(name)
    net.load_state_dict({k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")})
    backbones.save_published(net, out / BACKBONE_PT)
    backbones.save_safetensors(net, out / BACKBONE_ST)
