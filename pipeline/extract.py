"""Stage 1: decode every video once, run the frozen backbone, cache features + envelopes in shards.

The manifest (filtered annotations) is cut into fixed shards of `shard_size` candidates. A shard is
written by one process under a temporary name and renamed when complete, so re-running the same
command resumes (finished shards are skipped) and `torchrun` ranks split the shards (rank r takes
r, r+W, ...) with no shared writes. Clips are batched within a shard only, so a shard's numbers do
not depend on which process wrote it or on where a previous run was killed.

`extract_features` reads top to bottom: check the options, load the manifest, resolve device /
precision / workers, build (or calibrate) the backbone and claim the cache on rank 0, load the
same weights on the other ranks, write this rank's shards, finalize the index on rank 0.

This module owns the loader of extraction's clips (`make_loader`; decoding is pipeline.decoding's), the backbone's
forward pass into cache dtype (`batch_features`), calibration provenance and the cache's
fingerprint parameters. It must not write shard files or the index itself (`pipeline.shards`,
`pipeline.cache` do) nor carry its own device / precision / torchrun plumbing (`pipeline.runtime`,
`pipeline.distributed`).
"""
from __future__ import annotations

import json
import logging
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline import backbones, cache
from pipeline.backbones import CALIBRATED_WEIGHTS, CALIBRATION_RECIPE, IMAGENET_MEAN, IMAGENET_STD, weights_sha256
from pipeline.data import Annotation, load_annotations, manifest_sha256, manifest_source
from pipeline.decoding import ClipSettings, decode_loader
from pipeline.distributed import Distributed
from pipeline.errors import FoleyError
from pipeline.fsio import atomic_write_text, read_json
from pipeline.media import FPS, FRAMES, envelope_params, normalize_frames, preprocess_params
from pipeline.runtime import autocast, decode_workers, resolve_device, resolve_precision
from pipeline.shards import ShardWriter, shard_name

log = logging.getLogger("foleycache")

DEFAULT_SHARD_SIZE = 64
CALIBRATION_CLIPS = 64          # clips whose activations set BatchNorm statistics for --checkpoint none
WRITE_QUEUE_BATCHES = 2         # batches of features waiting for the writer thread (bounds memory)
# Ranks wait for rank 0's calibration and for each other's last shards, which on a large manifest
# takes hours: far longer than training's 30 min between steps.
EXTRACT_TIMEOUT = timedelta(hours=48)
# Only barriers and one broadcast of a string go between ranks: gloo does that on GPU machines too.
EXTRACT_BACKEND = "gloo"
TARGETS_NONE = "none"           # config["targets"] of a cache extracted without audio (no envelope to learn)


def holds_targets(config: dict) -> bool:
    """Does a cache (its config) hold loudness targets? False for one extracted with targets=False;
    caches from before the key existed all hold them."""
    return config.get("targets", "audio") != TARGETS_NONE


def resolve_settings(device: str, precision: str, workers: int | None) -> tuple[torch.device, str, int]:
    """(device, precision "bf16"|"fp32", decode workers) that extract-features runs with."""
    dev = resolve_device(device)
    return dev, resolve_precision(precision, dev), decode_workers(dev) if workers is None else workers


def channels_last(spec: backbones.BackboneSpec, dev: torch.device, precision: str) -> bool:
    """Run the convs channels-last? On CUDA always; on a CPU where `benchmarks/extract.py` measured
    it to pay: model3d_1 under bf16, mobilenet_v2 in float32 and bf16."""
    return dev.type == "cuda" or precision == "bf16" or spec.kind == "frame2d"


def make_loader(dataset, workers: int, device: torch.device):
    """The clips of `dataset`, one item at a time, decoded in `workers` processes."""
    return decode_loader(dataset, workers, pin_memory=device.type == "cuda")


# --- the backbone ---------------------------------------------------------------------------

def build_backbone(job: "_Job", calibration: list[tuple[int, Annotation]], progress: bool):
    """Create the job's backbone and load or calibrate its weights. Returns (model, provenance dict).

    job.checkpoint: "none", a weights file, or the name of the backbone's published weights
    ("imagenet"), found on disk by `backbones.find_named_weights` (never downloaded).
    calibration: (shard, annotation) of the clips that calibrate BatchNorm for "none", decoded as
    job.shards.clips, in batches of job.shards.batch_size; the calibrated weights go to job.shards.out.
    """
    name, checkpoint, seed, s = job.spec.name, job.checkpoint, job.seed, job.shards
    model = backbones.create_backbone(name, seed=seed, pool=job.pool)
    checkpoint, weights_name = backbones.resolve_checkpoint(name, checkpoint)
    if str(checkpoint) != "none":
        info = backbones.load_checkpoint(model, checkpoint)
        return model, {"checkpoint": str(Path(checkpoint).resolve()), "checkpoint_sha256": info["sha256"],
                       "checkpoint_format": info["format"], "weights_name": weights_name}
    recipe = {"backbone": name, "init_seed": seed, "calibration_ids": [a.id for _, a in calibration],
              "method": "BatchNorm running statistics, cumulative average (momentum=None), fp32"}
    saved, recipe_file = s.out / CALIBRATED_WEIGHTS, s.out / CALIBRATION_RECIPE
    if saved.exists() and recipe_file.exists() and read_json(recipe_file, "calibration recipe") == recipe:
        backbones.load_checkpoint(model, saved)     # a resumed run uses exactly the same network
    else:
        log.warning(
            "WARNING: --checkpoint none: %s is RANDOMLY INITIALISED (seed %d). Its BatchNorm "
            "statistics are calibrated on the first %d decodable clips of this run so its features are "
            "not degenerate (docs/learning.md), but they are not pretrained features: expect far weaker "
            "results than with pretrained weights.", name, seed, len(calibration))
        spec = backbones.get_spec(name)
        loader = make_loader(s.clips.dataset(calibration, normalize=False), s.workers, torch.device("cpu"))
        decoded = [item["frames"] for item in tqdm(loader, desc="decode for BN calibration", unit="clip",
                                                    disable=not progress, leave=False) if "failure" not in item]
        if not decoded:
            raise FoleyError("--checkpoint none: none of the calibration clips could be decoded")
        batches = (normalize_frames(torch.stack(decoded[i:i + s.batch_size]), 1, spec.mean, spec.std)
                   for i in range(0, len(decoded), s.batch_size))
        backbones.calibrate_batchnorm(model, batches)
    return model, {"checkpoint": "none", "init_seed": seed, "calibration": recipe}


def save_calibrated(model, out: Path, provenance: dict):
    # Both files, or a run killed between the two writes would never get its recipe back.
    if provenance["checkpoint"] != "none" or (
            (out / CALIBRATED_WEIGHTS).exists() and (out / CALIBRATION_RECIPE).exists()):
        return
    backbones.save_safetensors(model, out / CALIBRATED_WEIGHTS)
    atomic_write_text(out / CALIBRATION_RECIPE, json.dumps(provenance["calibration"], indent=1))


def prepare_model(model: torch.nn.Module, spec: backbones.BackboneSpec, dev: torch.device, precision: str,
                  compile: bool = False) -> torch.nn.Module:
    """The backbone as extraction runs it: on `dev`, in eval mode, channels-last where it pays
    (`channels_last`), cuDNN autotuned on a GPU, wrapped in torch.compile on request."""
    model = model.to(dev).eval()
    if channels_last(spec, dev, precision):
        model = model.to(memory_format=torch.channels_last_3d if spec.kind == "video3d" else torch.channels_last)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if compile:
        model = torch.compile(model)
    return model


def batch_features(model, frames: list[torch.Tensor], dev: torch.device, precision: str,
                   normalize: bool = False, out_dtype: str = "float32", mean: tuple = IMAGENET_MEAN,
                   std: tuple = IMAGENET_STD) -> np.ndarray:
    """Clips [3, T, S, S] -> features ndarray [B, T', D] in `out_dtype` (the cache dtype).

    Each clip is copied on its own (from pinned memory, non-blocking on CUDA) and stacked on the
    device. normalize: the frames are 0..255 and are normalised on the device with mean/std (the
    backbone's preprocessing). The cast to the cache dtype happens on the device (half the bytes to
    copy back; IEEE round-to-nearest-even, the same values numpy's astype would give).
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


# --- the command ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ShardSettings:
    """Everything `_write_shards` needs besides the model and the clips it writes."""
    out: Path
    fmt: str
    dtype: str
    compression: str            # the features' codec (pipeline.shards.COMPRESSIONS), lossless
    dim: int
    shard_size: int
    n_candidates: int
    clips: ClipSettings
    batch_size: int
    workers: int
    device: torch.device
    precision: str
    mean: tuple
    std: tuple
    progress: bool

    def capacity(self, k: int) -> int:
        """Candidates of shard k (the last shard may hold fewer)."""
        return min(self.shard_size, self.n_candidates - k * self.shard_size)


@dataclass(frozen=True)
class _Job:
    """One extract-features call, its options checked and resolved."""
    spec: backbones.BackboneSpec
    checkpoint: str | Path
    pool: str
    seed: int
    compile: bool
    overwrite: bool
    window_stride: float | None
    manifest: list
    manifest_record: dict       # what cache.json's config records about the annotation list
    shards: ShardSettings

    @property
    def n_shards(self) -> int:
        return (len(self.manifest) + self.shards.shard_size - 1) // self.shards.shard_size

    def shard_items(self) -> list[tuple[int, Annotation]]:
        """(shard index, annotation) per candidate, in manifest order."""
        return [(i // self.shards.shard_size, a) for i, a in enumerate(self.manifest)]


def extract_features(*, videos: Path, annotations: Path | str, out: Path, labels: Path | None = None,
                     classes: str | None = None, window_stride: float | None = None,
                     backbone: str = "model3d_1", checkpoint: str | Path = "none",
                     frames: int = FRAMES, fps: float = FPS, size: int | None = None, pool: str | None = None,
                     fmt: str = "zarr", compression: str | None = None,
                     dtype: str = "float16", shard_size: int = DEFAULT_SHARD_SIZE, batch_size: int = 4,
                     workers: int | None = None, device: str = "auto", precision: str = "auto",
                     limit: int | None = None, overwrite: bool = False, envelope_reduce: str = "max",
                     seed: int = 0, calibration_clips: int = CALIBRATION_CLIPS, compile: bool = False,
                     targets: bool = True, progress: bool = True) -> dict:
    """Build (or resume) a feature cache in `out`. Returns a summary dict.

    compile: wrap the model in torch.compile (pays off on a GPU over many clips; costs a warm-up).
    annotations, classes, window_stride: the manifest (`pipeline.data.load_annotations`: SSv2 JSON,
    CSV / JSON Lines, a folder or "none"; windows of frames / fps s every window_stride s).
    size: frame side (default: the backbone's, 224 for model3d_1, 112 for mobilenet_v2). pool: the
    last map's pooling ("none", "global", "KxK"; default: the backbone's). checkpoint: "none", a
    weights file or the backbone's named weights ("imagenet" for mobilenet_v2). compression: the
    features' codec ("lz4", "zstd", "none"; HDF5: "gzip", "none"; default: the format's, or the one
    a resumed cache was started with); lossless, so the fingerprint does not depend on it.
    targets: False reads no audio (videos without an audio stream or with silent audio are fine):
    envelopes are 0 and the cache records `targets: "none"`, so no trainer takes it (`holds_targets`).

    Cached per clip: features [frames', D] (D = channels * h * w of the pooled last map: 25088 for
    model3d_1 at 224, 5120 for mobilenet_v2 at 112 with 2x2 pooling), envelope [frames] float32,
    length. Faulty videos are recorded in failures.jsonl and skipped; they never stop the run.
    """
    spec = backbones.get_spec(backbone)
    size = spec.default_size if size is None else size
    pool = backbones.canonical_pool(spec.default_pool if pool is None else pool)
    # int / float here, so that 12 and 12.0 fingerprint alike
    clips = ClipSettings(Path(videos), int(frames), float(fps), int(size), envelope_reduce, audio=bool(targets))
    dim = _check_options(spec, clips, pool, shard_size, batch_size)
    manifest = load_annotations(annotations, classes=classes, labels_path=labels, videos=clips.videos,
                                window_stride=window_stride, frames=clips.frames, fps=clips.fps)[:limit]
    dev, precision, workers = resolve_settings(device, precision, workers)
    dist = Distributed.from_env(dev, timeout=EXTRACT_TIMEOUT, backend=EXTRACT_BACKEND)
    job = _Job(spec=spec, checkpoint=checkpoint, pool=pool, seed=seed, compile=compile, overwrite=overwrite,
               window_stride=window_stride, manifest=manifest,
               manifest_record=_manifest_record(manifest, annotations, clips.videos, classes, window_stride,
                                                labels, limit),
               shards=ShardSettings(out=Path(out), fmt=fmt, dtype=dtype,
                                    compression=cache.resolve_compression(out, fmt, compression, overwrite),
                                    dim=dim, shard_size=shard_size,
                                    n_candidates=len(manifest), clips=clips, batch_size=batch_size,
                                    workers=workers, device=dist.device, precision=precision, mean=spec.mean,
                                    std=spec.std, progress=progress and dist.is_main))
    _check_same_manifest(job.shards.out, job.manifest_record["sha256"], overwrite)
    return _run_job(job, dist, calibration_clips, progress)


def _run_job(job: _Job, dist: Distributed, calibration_clips: int, progress: bool) -> dict:
    """Write this rank's pending shards of `job`, then (main rank) finalize the cache; the summary
    extract_features returns. Every rank loads the backbone, so all of them must call it."""
    t0 = time.time()
    model = _backbone_on_every_rank(job, calibration_clips, progress, dist)
    todo = {k for k in cache.pending_shards(job.shards.out, job.n_shards) if k % dist.world_size == dist.rank}
    counts = _write_shards(model, [(k, a) for k, a in job.shard_items() if k in todo], job.shards)
    dist.barrier()
    summary = {"cache": str(job.shards.out), "candidates": len(job.manifest), "shards": job.n_shards,
               "processed_here": counts["seen"], "device": str(dist.device), "precision": job.shards.precision,
               "workers": job.shards.workers, "world_size": dist.world_size}
    if dist.is_main:
        summary.update(_finalize(job.shards.out))
    wall = time.time() - t0
    summary.update(wall_seconds=round(wall, 2), clips_per_s=round(counts["seen"] / wall, 3) if wall else None)
    dist.close()
    return summary


def _check_options(spec: backbones.BackboneSpec, clips: ClipSettings, pool: str, shard_size: int,
                   batch_size: int) -> int:
    """One-line errors for options that cannot work; returns the feature dim D."""
    if not clips.videos.is_dir():
        raise FoleyError(f"--videos {clips.videos} is not a directory")
    if spec.time_stride != 1:
        raise FoleyError(f"backbone {spec.name} pools time by {spec.time_stride}; the head needs one feature "
                         "per frame, so extract with a backbone that keeps T (e.g. model3d_1)")
    dim = backbones.feature_dim(spec.name, clips.size, pool)
    if clips.frames < 1 or clips.fps <= 0 or shard_size < 1 or batch_size < 1:
        raise FoleyError("--frames, --fps, --shard-size and --batch-size must be positive")
    return dim


def _manifest_record(manifest: list, annotations, videos: Path, classes, window_stride, labels, limit) -> dict:
    return {"annotations": manifest_source(annotations), "videos": str(videos.resolve()),
            "classes": None if classes is None else str(classes), "window_stride": window_stride,
            "labels": str(labels) if labels else None, "limit": limit,
            "candidates": len(manifest), "sha256": manifest_sha256(manifest)}


def _backbone_on_every_rank(job: _Job, calibration_clips: int, progress: bool, dist: Distributed):
    """Rank 0 builds/calibrates the network and claims the cache; the others then load the same
    weights. An error on rank 0 is raised on every rank. Returns the model ready to run."""
    model, error = _build_and_claim(job, calibration_clips, progress) if dist.is_main else (None, None)
    error = dist.broadcast(error)
    if error:
        raise FoleyError(error)
    if not dist.is_main:
        model = backbones.create_backbone(job.spec.name, seed=job.seed, pool=job.pool)
        weights = job.shards.out / CALIBRATED_WEIGHTS if str(job.checkpoint) == "none" else \
            backbones.resolve_checkpoint(job.spec.name, job.checkpoint)[0]
        backbones.load_checkpoint(model, weights)
    s = job.shards
    return prepare_model(model, job.spec, s.device, s.precision, job.compile)


def _build_and_claim(job: _Job, calibration_clips: int, progress: bool):
    """(model, None) once the backbone is built and the cache claimed; (None, one-line error) if not."""
    s = job.shards
    try:
        model, provenance = build_backbone(job, job.shard_items()[:calibration_clips], progress)
        fp_params, config = _fingerprint_params(model, provenance, job)
        if not s.clips.audio:               # only then: caches with targets keep their fingerprint
            fp_params["targets"] = config["targets"] = TARGETS_NONE
        if job.window_stride is not None:   # only then: caches made without windows keep their fingerprint
            fp_params["windows"] = config["windows"] = {"stride_s": float(job.window_stride),
                                                        "seconds": s.clips.frames / s.clips.fps}
        config.update(manifest=job.manifest_record, shard_size=s.shard_size, format=s.fmt, compression=s.compression)
        cache.begin_cache(s.out, cache.fingerprint(fp_params), config, job.n_shards, overwrite=job.overwrite,
                          fmt=s.fmt, compression=s.compression)
        save_calibrated(model, s.out, provenance)
        return model, None
    except FoleyError as e:
        return None, str(e)
    except OSError as e:                # a full disk or a read-only --out: one line, like in the shards
        return None, f"writing the cache in {s.out} failed: {e}; re-run the same command to resume"


def _finalize(out: Path) -> dict:
    """Write the cache's index (rank 0, after every rank's shards); the summary's cache counts."""
    try:
        index = cache.finalize_cache(out)
    except OSError as e:
        raise FoleyError(f"writing the index of the cache in {out} failed: {e}; every shard is kept, "
                         "re-run the same command to finish it") from None
    return {"cached": index["counts"]["cached"], "failed": index["counts"]["failed"],
            "failed_by_reason": index["counts"]["failed_by_reason"], "fingerprint": index["fingerprint"]}


def _fingerprint_params(model, provenance: dict, job: "_Job") -> tuple[dict, dict]:
    """(what the cache's fingerprint hashes, the config cache.json records) for the job's model."""
    spec, pool, s = job.spec, job.pool, job.shards
    frames, fps, size, reduce = s.clips.frames, s.clips.fps, s.clips.size, s.clips.reduce
    dtype, precision = s.dtype, s.precision
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
    """A cache belongs to one annotation list: resuming it with another list would mix clips.
    An unreadable record is left to `cache.begin_cache`, which says what is wrong with it."""
    for name in (cache.PROGRESS_JSON, cache.CACHE_JSON):
        path = out / name
        if path.is_file() and not overwrite:
            try:
                record = read_json(path, "cache record")
            except FoleyError:
                return
            config = record.get("config", {}) if isinstance(record, dict) else {}
            old = config.get("manifest", {}).get("sha256")
            if old and old != manifest_sha:
                raise FoleyError(f"the cache in {out} was built from another annotation list / --classes / "
                                 "--limit; pass --overwrite to replace it, or choose another --out")
            return


# --- writing this rank's shards -------------------------------------------------------------

def _write_shards(model, items: list[tuple[int, Annotation]], s: ShardSettings) -> Counter:
    """Decode `items` (shard, annotation), run the model shard by shard, write each shard whole.
    Returns counts {"seen", "failed"}."""
    counts = Counter()
    if not items:
        return counts
    remaining = Counter(k for k, _ in items)
    writers: dict[int, ShardWriter] = {}
    closing: list = []                  # (writer, future of its commit) not known to be done yet
    buffers: dict[int, list] = {}
    # Workers hand over 0..255 frames; the backbone's own mean/std are applied per batch (on the GPU there)
    loader = make_loader(s.clips.dataset(items, normalize=False), s.workers, s.device)
    bar = tqdm(total=len(items), desc="extract", unit="clip", disable=not s.progress, smoothing=0.1)
    # Every shard operation after opening goes through one writer thread, in order, so the float16
    # cast, compression and file writes of a batch overlap the next batch's forward pass.
    background = _WriterThread(WRITE_QUEUE_BATCHES)
    try:
        for item in loader:
            k = item["shard"]
            if k not in writers:
                writers[k] = ShardWriter(s.out / cache.SHARDS_DIR / shard_name(k, s.fmt), s.fmt, s.capacity(k),
                                         s.clips.frames, s.dim, s.dtype, s.compression).open()
                buffers[k] = []
            if "failure" in item:
                background.submit(writers[k].add_failure, item["failure"])
                counts["failed"] += 1
            else:
                buffers[k].append(item)
            remaining[k] -= 1
            if len(buffers[k]) == s.batch_size or (remaining[k] == 0 and buffers[k]):
                feats = batch_features(model, [c["frames"] for c in buffers[k]], s.device, s.precision,
                                       normalize=True, out_dtype=s.dtype, mean=s.mean, std=s.std)
                background.submit(_append_batch, writers[k], buffers[k], feats)
                buffers[k] = []
            if remaining[k] == 0:
                closing = [(w, f) for w, f in closing if not f.done()]
                w = writers.pop(k)
                closing.append((w, background.submit(w.commit)))    # rename: the shard is complete
            counts["seen"] += 1
            bar.update(1)
            bar.set_postfix(failed=counts["failed"], refresh=False)
        background.drain()                                      # the last shards are renamed
    except BaseException as e:
        background.drain(quiet=True)                            # no thread still writes into what we abort
        # No half-written shard stays visible; a commit skipped after a write error leaves a temp to
        # remove too (aborting a writer that did commit is a no-op).
        for w in [*writers.values(), *(w for w, _ in closing)]:
            w.abort()
        if isinstance(e, OSError):
            raise FoleyError(f"writing the cache in {s.out} failed: {e}; finished shards are kept, "
                             "re-run the same command to resume") from None
        raise
    finally:
        background.close()
        bar.close()
    return counts


def _append_batch(writer: ShardWriter, clips: list[dict], feats: np.ndarray):
    for c, f in zip(clips, feats):
        writer.append(c["id"], c["label"], f, np.asarray(c["envelope"], np.float32), int(c["length"]))


class _WriterThread:
    """One thread that runs submitted calls in order; at most `depth` wait. An exception raised by a
    call comes back to the caller on its next submit() or drain(), and no later call runs: a shard
    that lost a clip to a write error must never be renamed complete by its queued commit."""

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
