"""Stage 1: decode every video once, run the frozen backbone, cache features + envelopes in shards.

The manifest (filtered annotations) is cut into fixed shards of `shard_size` candidates. A shard is
written by one process under a temporary name and renamed when complete, so re-running the same
command resumes (finished shards are skipped) and `torchrun` ranks split the shards (rank r takes
r, r+W, ...) with no shared writes. Clips are batched within a shard only, so a shard's numbers do
not depend on which process wrote it or on where a previous run was killed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes
from tqdm import tqdm

from pipeline import backbones, cache
from pipeline.backbones import IMAGENET_MEAN, IMAGENET_STD
from pipeline.data import Annotation, find_video, load_annotations, manifest_sha256, manifest_source
from pipeline.errors import FoleyError
from pipeline.media import FaultyVideo, envelope_params, load_clip, normalize_frames, preprocess_params

log = logging.getLogger("foleycache")

DEFAULT_SHARD_SIZE = 64
CALIBRATION_CLIPS = 64          # clips whose activations set BatchNorm statistics for --checkpoint none
CALIBRATED_WEIGHTS = "backbone.safetensors"   # in the cache dir; reusable as --checkpoint for other splits
CALIBRATION_RECIPE = "backbone.json"
WRITE_QUEUE_BATCHES = 2         # batches of features waiting for the writer thread (bounds memory)
MAX_CUDA_WORKERS = 32           # decode workers on a GPU machine: all cores but one, up to this


# --- devices and precision ------------------------------------------------------------------

def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise FoleyError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device(device)


def cpu_has_bf16() -> bool:
    """Native bf16 on this CPU (AMX or AVX512-BF16): autocast is then ~2-5x faster than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16() else "fp32"


def autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def weights_sha256(model: torch.nn.Module) -> str:
    """Hash of the weights themselves (canonical safetensors bytes of the state dict), so the same
    network gives the same fingerprint whether it came from a .pth.tar, a .safetensors or a calibration."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return hashlib.sha256(safetensors_bytes(state)).hexdigest()


# --- decoding in DataLoader workers ---------------------------------------------------------

class ClipDataset(torch.utils.data.Dataset):
    """One item per candidate: the decoded clip, or the failure record of a faulty video."""

    def __init__(self, items: list[tuple[int, Annotation]], videos: Path, frames: int, fps: float,
                 size: int, reduce: str, normalize: bool = True):
        self.items, self.videos = items, Path(videos)
        self.frames, self.fps, self.size, self.reduce = frames, fps, size, reduce
        self.normalize = normalize      # False: frames stay 0..255 and are normalised on the GPU

    def __len__(self):
        return len(self.items)

    def __getitem__(self, k):
        shard, ann = self.items[k]
        item = {"shard": shard, "id": ann.id, "label": ann.template, "path": ""}
        try:
            path = find_video(self.videos, ann)
            item["path"] = str(path)
            clip = load_clip(path, frames=self.frames, fps=self.fps, size=self.size, reduce=self.reduce,
                             normalize=self.normalize, threads=1, start=ann.start)
        except FaultyVideo as e:
            item["failure"] = {"id": ann.id, "path": item["path"] or str(self.videos / (ann.video or ann.id)),
                               "reason": e.reason, "detail": e.detail}
            return item
        item.update(frames=clip.frames, envelope=clip.envelope, length=clip.length)
        return item


def _worker_init(_):
    torch.set_num_threads(1)    # decode workers leave the cores to the model


def default_workers(dev: torch.device) -> int:
    """Decode workers. CPU: 1, the model takes the other threads (at 224 decoding costs ~1/5 of the
    model's time, so one worker keeps up). CUDA: every core but one, so decoding can feed the GPU."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return min(MAX_CUDA_WORKERS, max(1, cores - 1)) if dev.type == "cuda" else 1


def channels_last(spec: backbones.BackboneSpec, dev: torch.device, precision: str) -> bool:
    """Run the convs channels-last? On CUDA always; on a CPU where it was measured to pay
    (`benchmarks/extract.py`): model3d_1 under bf16 (~2x), mobilenet_v2 in float32 and bf16."""
    return dev.type == "cuda" or precision == "bf16" or spec.kind == "frame2d"


def normalize_on_device(dev: torch.device) -> bool:
    """Normalise frames on the GPU (one fused pass there) instead of in every decode worker."""
    return dev.type == "cuda"


def make_loader(dataset, workers: int, device: torch.device):
    return torch.utils.data.DataLoader(
        dataset, batch_size=None, shuffle=False, num_workers=workers, worker_init_fn=_worker_init,
        pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None,
        persistent_workers=False)


# --- the backbone ---------------------------------------------------------------------------

def build_backbone(name: str, checkpoint: str | Path, device: torch.device, seed: int, calibration: list,
                   dataset_args: dict, batch_size: int, workers: int, out: Path, progress: bool,
                   pool: str | None = None):
    """Create the backbone and load or calibrate its weights. Returns (model, provenance dict).

    checkpoint: "none", a weights file, or the name of the backbone's published weights
    ("imagenet"), found on disk by `backbones.find_named_weights` (never downloaded).
    """
    model = backbones.create_backbone(name, seed=seed, pool=pool)
    checkpoint, weights_name = backbones.resolve_checkpoint(name, checkpoint)
    if str(checkpoint) != "none":
        info = backbones.load_checkpoint(model, checkpoint)
        return model, {"checkpoint": str(Path(checkpoint).resolve()), "checkpoint_sha256": info["sha256"],
                       "checkpoint_format": info["format"], "weights_name": weights_name}
    recipe = {"backbone": name, "init_seed": seed, "calibration_ids": [a.id for _, a in calibration],
              "method": "BatchNorm running statistics, cumulative average (momentum=None), fp32"}
    saved, recipe_file = out / CALIBRATED_WEIGHTS, out / CALIBRATION_RECIPE
    if saved.exists() and recipe_file.exists() and json.loads(recipe_file.read_text()) == recipe:
        backbones.load_checkpoint(model, saved)     # a resumed run uses exactly the same network
    else:
        log.warning(
            "WARNING: --checkpoint none: %s is RANDOMLY INITIALISED (seed %d). Its BatchNorm "
            "statistics are calibrated on the first %d decodable clips of this run so its features are "
            "not degenerate (FINDINGS.md), but they are not pretrained features: expect far weaker "
            "results than with pretrained weights.", name, seed, len(calibration))
        spec = backbones.get_spec(name)
        loader = make_loader(ClipDataset(calibration, **dataset_args, normalize=False), workers, torch.device("cpu"))
        clips = [item["frames"] for item in tqdm(loader, desc="decode for BN calibration", unit="clip",
                                                  disable=not progress, leave=False) if "failure" not in item]
        if not clips:
            raise FoleyError("--checkpoint none: none of the calibration clips could be decoded")
        batches = (normalize_frames(torch.stack(clips[i:i + batch_size]), 1, spec.mean, spec.std)
                   for i in range(0, len(clips), batch_size))
        backbones.calibrate_batchnorm(model, batches)
    return model, {"checkpoint": "none", "init_seed": seed, "calibration": recipe}


def save_calibrated(model, out: Path, provenance: dict):
    # Both files, or a run killed between the two writes would never get its recipe back.
    if provenance["checkpoint"] != "none" or (
            (out / CALIBRATED_WEIGHTS).exists() and (out / CALIBRATION_RECIPE).exists()):
        return
    backbones.save_safetensors(model, out / CALIBRATED_WEIGHTS)
    tmp = out / (CALIBRATION_RECIPE + ".tmp")
    tmp.write_text(json.dumps(provenance["calibration"], indent=1))
    os.replace(tmp, out / CALIBRATION_RECIPE)


# --- the command ----------------------------------------------------------------------------

def extract_features(*, videos: Path, annotations: Path | str, out: Path, labels: Path | None = None,
                     classes: str | None = None, window_stride: float | None = None,
                     backbone: str = "model3d_1", checkpoint: str | Path = "none",
                     frames: int = 48, fps: float = 12, size: int | None = None, pool: str | None = None,
                     fmt: str = "zarr",
                     dtype: str = "float16", shard_size: int = DEFAULT_SHARD_SIZE, batch_size: int = 4,
                     workers: int | None = None, device: str = "auto", precision: str = "auto",
                     limit: int | None = None, overwrite: bool = False, envelope_reduce: str = "max",
                     seed: int = 0, calibration_clips: int = CALIBRATION_CLIPS, compile: bool = False,
                     progress: bool = True) -> dict:
    """Build (or resume) a feature cache in `out`. Returns a summary dict.

    compile: wrap the model in torch.compile (pays off on a GPU over many clips; costs a warm-up).
    annotations, classes, window_stride: the manifest (`pipeline.data.load_annotations`: SSv2 JSON,
    CSV / JSON Lines, a folder or "none"; windows of frames / fps s every window_stride s).
    size: frame side (default: the backbone's, 224 for model3d_1, 112 for mobilenet_v2). pool: the
    last map's pooling ("none", "global", "KxK"; default: the backbone's). checkpoint: "none", a
    weights file or the backbone's named weights ("imagenet" for mobilenet_v2).

    Cached per clip: features [frames', D] (D = channels * h * w of the pooled last map: 25088 for
    model3d_1 at 224, 5120 for mobilenet_v2 at 112 with 2x2 pooling), envelope [frames] float32,
    length. Faulty videos are recorded in failures.jsonl and skipped; they never stop the run.
    """
    out, videos = Path(out), Path(videos)
    spec = backbones.get_spec(backbone)
    size = spec.default_size if size is None else size
    pool = backbones.canonical_pool(spec.default_pool if pool is None else pool)
    frames, fps, size = int(frames), float(fps), int(size)   # 12 and 12.0 must fingerprint alike
    if not videos.is_dir():
        raise FoleyError(f"--videos {videos} is not a directory")
    if spec.time_stride != 1:
        raise FoleyError(f"backbone {backbone} pools time by {spec.time_stride}; the head needs one feature "
                         "per frame, so extract with a backbone that keeps T (e.g. model3d_1)")
    dim = backbones.feature_dim(backbone, size, pool)
    if frames < 1 or fps <= 0 or shard_size < 1 or batch_size < 1:
        raise FoleyError("--frames, --fps, --shard-size and --batch-size must be positive")
    manifest = load_annotations(annotations, classes=classes, labels_path=labels, videos=videos,
                                window_stride=window_stride, frames=frames, fps=fps)
    if limit is not None:
        manifest = manifest[:limit]
    n_shards = (len(manifest) + shard_size - 1) // shard_size
    shard_of = [(i // shard_size, a) for i, a in enumerate(manifest)]
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    if workers is None:
        workers = default_workers(dev)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    dist = _Dist(world)
    dataset_args = dict(videos=videos, frames=frames, fps=fps, size=size, reduce=envelope_reduce)
    manifest_sha = manifest_sha256(manifest)
    _check_same_manifest(out, manifest_sha, overwrite)

    # Rank 0 builds/calibrates the network and claims the cache; the others then load the same weights.
    t0 = time.time()
    model = provenance = None
    error = None
    if rank == 0:
        try:
            model, provenance = build_backbone(backbone, checkpoint, dev, seed, shard_of[:calibration_clips],
                                               dataset_args, batch_size, workers, out, progress, pool)
            fp_params, config = _fingerprint_params(model, provenance, spec, frames, fps, size, dtype,
                                                    precision, envelope_reduce, pool)
            if window_stride is not None:   # only then: caches made without windows keep their fingerprint
                fp_params["windows"] = config["windows"] = {"stride_s": float(window_stride),
                                                            "seconds": frames / fps}
            config.update(manifest={"annotations": manifest_source(annotations), "videos": str(videos.resolve()),
                                    "classes": None if classes is None else str(classes),
                                    "window_stride": window_stride,
                                    "labels": str(labels) if labels else None, "limit": limit,
                                    "candidates": len(manifest), "sha256": manifest_sha},
                          shard_size=shard_size, format=fmt)
            fp = cache.fingerprint(fp_params)
            cache.begin_cache(out, fp, config, n_shards, overwrite=overwrite, fmt=fmt)
            save_calibrated(model, out, provenance)
        except FoleyError as e:
            error = str(e)
        except OSError as e:                # a full disk or a read-only --out: one line, like in the shards
            error = f"writing the cache in {out} failed: {e}; re-run the same command to resume"
    error = dist.broadcast(error)
    if error:
        raise FoleyError(error)
    if rank != 0:
        model = backbones.create_backbone(backbone, seed=seed, pool=pool)
        weights = out / CALIBRATED_WEIGHTS if str(checkpoint) == "none" else \
            backbones.resolve_checkpoint(backbone, checkpoint)[0]
        backbones.load_checkpoint(model, weights)
    model = model.to(dev).eval()
    if channels_last(spec, dev, precision):
        model = model.to(memory_format=torch.channels_last_3d if spec.kind == "video3d" else torch.channels_last)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if compile:
        model = torch.compile(model)

    todo = [k for k in cache.pending_shards(out, n_shards) if k % world == rank]
    items = [(k, a) for k, a in shard_of if k in set(todo)]
    counts = _write_shards(model, items, shard_size, len(manifest), out, dataset_args, fmt, dtype, dim,
                           batch_size, workers, dev, precision, progress and rank == 0, spec)
    dist.barrier()
    summary = {"cache": str(out), "candidates": len(manifest), "shards": n_shards, "processed_here": counts["seen"],
               "device": str(dev), "precision": precision, "workers": workers, "world_size": world}
    if rank == 0:
        try:
            index = cache.finalize_cache(out)
        except OSError as e:
            raise FoleyError(f"writing the index of the cache in {out} failed: {e}; every shard is kept, "
                             "re-run the same command to finish it") from None
        summary.update(cached=index["counts"]["cached"], failed=index["counts"]["failed"],
                       failed_by_reason=index["counts"]["failed_by_reason"], fingerprint=index["fingerprint"])
    wall = time.time() - t0
    summary.update(wall_seconds=round(wall, 2), clips_per_s=round(counts["seen"] / wall, 3) if wall else None)
    dist.close()
    return summary


def _fingerprint_params(model, provenance, spec, frames, fps, size, dtype, precision, reduce, pool="none"):
    weights = weights_sha256(model)
    fp_params = {"backbone": spec.name, "weights_sha256": weights, "frames": frames, "fps": fps,
                 "preprocess": preprocess_params(size, spec.mean, spec.std),
                 "envelope": envelope_params(reduce, frames, fps),
                 "dtype": dtype, "precision": precision, "schema_version": cache.SCHEMA_VERSION}
    if pool != "none":      # only then: caches of the unpooled map keep the fingerprints they had
        fp_params["pool"] = pool
    layout = f"[T, {spec.channels}*h*w] channel-major" + (f", last map averaged to {pool}" if pool != "none" else "")
    config = dict(fp_params, backbone_provenance=provenance, feature_layout=layout, backbone_kind=spec.kind,
                  foleycache_version=__import__("pipeline").__version__, torch_version=torch.__version__)
    return fp_params, config


def _check_same_manifest(out: Path, manifest_sha: str, overwrite: bool):
    """A cache belongs to one annotation list: resuming it with another list would mix clips."""
    for name in ("progress.json", "cache.json"):
        path = out / name
        if path.is_file() and not overwrite:
            try:
                old = json.loads(path.read_text()).get("config", {}).get("manifest", {}).get("sha256")
            except (OSError, ValueError):
                return
            if old and old != manifest_sha:
                raise FoleyError(f"the cache in {out} was built from another annotation list / --classes / "
                                 "--limit; pass --overwrite to replace it, or choose another --out")
            return


def _write_shards(model, items, shard_size, n_candidates, out, dataset_args, fmt, dtype, dim,
                  batch_size, workers, dev, precision, progress, spec) -> Counter:
    counts = Counter()
    if not items:
        return counts
    remaining = Counter(k for k, _ in items)
    writers: dict[int, cache.ShardWriter] = {}
    closing: list = []                  # (writer, future of its rename) not known to be done yet
    buffers: dict[int, list] = {}
    # Workers hand over 0..255 frames; the backbone's own mean/std are applied per batch (on the GPU there)
    loader = make_loader(ClipDataset(items, **dataset_args, normalize=False), workers, dev)
    bar = tqdm(total=len(items), desc="extract", unit="clip", disable=not progress, smoothing=0.1)
    # Every shard operation after opening goes through one writer thread, in order, so the float16
    # cast, compression and file writes of a batch overlap the next batch's forward pass.
    background = _WriterThread(WRITE_QUEUE_BATCHES)
    try:
        for item in loader:
            k = item["shard"]
            if k not in writers:
                count = min(shard_size, n_candidates - k * shard_size)
                path = out / cache.SHARDS_DIR / cache.shard_name(k, fmt)
                writers[k] = cache.ShardWriter(path, fmt, count, dataset_args["frames"], dim, dtype).__enter__()
                buffers[k] = []
            if "failure" in item:
                background.submit(writers[k].add_failure, item["failure"])
                counts["failed"] += 1
            else:
                buffers[k].append(item)
            remaining[k] -= 1
            if len(buffers[k]) == batch_size or (remaining[k] == 0 and buffers[k]):
                feats = batch_features(model, [c["frames"] for c in buffers[k]], dev, precision,
                                       normalize=True, out_dtype=dtype, mean=spec.mean, std=spec.std)
                background.submit(_append_batch, writers[k], buffers[k], feats)
                buffers[k] = []
            if remaining[k] == 0:
                closing = [(w, f) for w, f in closing if not f.done()]
                w = writers.pop(k)
                closing.append((w, background.submit(w.__exit__, None, None, None)))   # rename: the shard is complete
            counts["seen"] += 1
            bar.update(1)
            bar.set_postfix(failed=counts["failed"], refresh=False)
        background.drain()                                      # the last shards are renamed
    except BaseException as e:
        background.drain(quiet=True)                            # no thread still writes into what we abort
        # No half-written shard stays visible; a rename skipped after a write error leaves a temp to
        # remove too (aborting a writer that did finish is a no-op).
        for w in [*writers.values(), *(w for w, _ in closing)]:
            w.__exit__(type(e), e, e.__traceback__)
        if isinstance(e, OSError):
            raise FoleyError(f"writing the cache in {out} failed: {e}; finished shards are kept, "
                             "re-run the same command to resume") from None
        raise
    finally:
        background.close()
        bar.close()
    return counts


def batch_features(model, frames: list[torch.Tensor], dev: torch.device, precision: str,
                   normalize: bool = False, out_dtype: str = "float32", mean: tuple = IMAGENET_MEAN,
                   std: tuple = IMAGENET_STD) -> np.ndarray:
    """Clips [3, T, S, S] -> features ndarray [B, T', D] in `out_dtype` (the cache dtype).

    Each clip is copied on its own (from pinned memory, non-blocking on CUDA) and stacked on the
    device. normalize: the frames are 0..255 and are normalised on the device with mean/std (the
    backbone's preprocessing). The cast to the
    cache dtype happens on the device (half the bytes to copy back; IEEE round-to-nearest-even, the
    same values numpy's astype would give).
    """
    x = torch.stack([f.to(dev, non_blocking=True) for f in frames])            # [B, 3, T, S, S]
    if normalize:
        x = normalize_frames(x, channel_dim=1, mean=mean, std=std)
    with torch.no_grad(), autocast(dev, precision):
        feats = model(x)
    out = feats.to(getattr(torch, out_dtype))
    if out.dtype == torch.float16 and not torch.isfinite(out).all() and torch.isfinite(feats).all():
        raise FoleyError("backbone features exceed float16's range (|x| > 65504): use --dtype float32")
    return out.cpu().numpy()                                                    # [B, T', D]


def _append_batch(writer, clips: list[dict], feats: np.ndarray):
    for c, f in zip(clips, feats):
        writer.append(c["id"], c["label"], f, np.asarray(c["envelope"], np.float32), int(c["length"]))


class _WriterThread:
    """One thread that runs submitted calls in order; at most `depth` wait. An exception raised by a
    call comes back to the caller on its next submit() or drain(), and no later call runs: a shard
    that lost a clip to a write error must never be renamed complete by its queued __exit__."""

    def __init__(self, depth: int):
        self.depth = depth
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="foleycache-writer")
        self.pending: deque = deque()
        self.error: BaseException | None = None

    def submit(self, fn, *args):
        while len(self.pending) >= self.depth:
            self.pending.popleft().result()
        future = self.pool.submit(self._call, fn, args)
        self.pending.append(future)
        return future

    def _call(self, fn, args):
        if self.error is not None:
            raise self.error
        try:
            return fn(*args)
        except BaseException as e:
            self.error = e
            raise

    def drain(self, quiet: bool = False):
        while self.pending:
            future = self.pending.popleft()
            if quiet:
                future.exception()      # wait; the error being handled already says what went wrong
            else:
                future.result()

    def close(self):
        self.drain(quiet=True)
        self.pool.shutdown(wait=True)


class _Dist:
    """Just enough of torch.distributed for extraction under torchrun: barriers and one broadcast."""

    def __init__(self, world: int):
        self.on = world > 1
        if self.on and not torch.distributed.is_initialized():
            # gloo even on GPUs: only barriers and one broadcast; ranks may wait long for each other
            torch.distributed.init_process_group("gloo", timeout=timedelta(hours=48))

    def broadcast(self, obj):
        if not self.on:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self):
        if self.on:
            torch.distributed.barrier()

    def close(self):
        if self.on and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
