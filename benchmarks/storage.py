"""Storage benchmark: bytes on disk and full-pass read speed of a real extracted cache, against
the same features stored other ways, including the common one-`.npy`-file-per-video layout.

storage_ratio = the cache's bytes on disk per clip / float32 bytes per clip (features + envelope,
uncompressed; `pipeline.cache.cache_info`). The features are real backbone output (ReLU maps of
a BatchNorm-calibrated model3d_1), so the compression measured here is what real features give
(pretrained weights may be more or less sparse; the zero fraction is reported).

Variants, all holding the same float16 features [N, T, D] (the npy float32 one: the same values):
  cache (zarr, lz4)       the extracted cache itself: what extract-features writes (its --compression)
  cache (zarr, <codec>)   the same features written with each other --compression (zstd, none, ...)
  hdf5 (gzip-1)           the cache written with --format hdf5 (same writer)
  npy float16 per video   np.save(f"{id}.npy", features) for each clip (features only)
  npy float32 per video   the same in float32, the most common practice
Each is read end to end twice: cold (its files dropped from the page cache with
posix_fadvise(DONTNEED) after an fsync; no root needed, other files untouched) and warm.
"""
from __future__ import annotations

import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

from pipeline import cache as cachemod
from pipeline.cache import FeatureCache, cache_info, write_cache
from pipeline.shards import COMPRESSIONS

REPEATS = 3          # warm full passes; the median is reported


def _files(path: Path) -> list[Path]:
    path = Path(path)
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


def _bytes(files: list[Path]) -> int:
    return sum(f.stat().st_size for f in files)


def drop_from_page_cache(files: list[Path]) -> bool:
    """Evict these files' pages (fsync first so they are clean). False where the OS cannot."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def _read_cache(path: Path) -> int:
    """Full pass over a cache, shard by shard, as a training epoch's loader would: clips read."""
    c = FeatureCache(path)
    n = 0
    for k in range(c.n_shards):
        n += len(c.read_shard(k)["features"])
    c.close()
    return n


def _read_npy(files: list[Path]) -> int:
    for f in files:
        np.load(f)
    return len(files)


def _measure(name: str, files: list[Path], read, n_clips: int, f32_bytes_per_clip: float) -> dict:
    cold_ok = drop_from_page_cache(files)
    t0 = time.perf_counter()
    assert read() == n_clips
    cold = time.perf_counter() - t0
    warm = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        read()
        warm.append(time.perf_counter() - t0)
    size = _bytes(files)
    warm_s = statistics.median(warm)
    return {"variant": name, "files": len(files), "bytes": size, "bytes_per_clip": round(size / n_clips, 1),
            "ratio_vs_float32": round(size / n_clips / f32_bytes_per_clip, 4),
            "read_cold_s": round(cold, 4) if cold_ok else None,
            "read_cold_clips_per_s": round(n_clips / cold, 1) if cold_ok else None,
            "read_warm_s": round(warm_s, 4), "read_warm_clips_per_s": round(n_clips / warm_s, 1),
            "read_warm_MBps_float32": round(n_clips * f32_bytes_per_clip / warm_s / 1e6, 1)}


def run(cache_dir: Path, workdir: Path) -> dict:
    """Measure the variants above for the features of `cache_dir`; writes scratch copies in workdir."""
    cache_dir, workdir = Path(cache_dir), Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    info = cache_info(cache_dir)
    c = FeatureCache(cache_dir)
    n, frames, dim = len(c), c.frames, c.dim
    data = c.read_many(range(n))
    c.close()
    feats = data["features"]                                    # [N, T, D] float16
    f32_feats = frames * dim * 4                                # features only, float32
    f32_clip = info["float32_bytes_per_clip"]                   # features + envelope, float32

    variants = []
    shards = sorted(p for p in (cache_dir / cachemod.SHARDS_DIR).iterdir())
    shard_files = [f for s in shards for f in _files(s)]
    shard_size = int(info["config"].get("shard_size", 64))
    variants.append(_measure(f"cache ({info['format']}, {info['dtype']}, {info['compression']})",
                             shard_files, lambda: _read_cache(cache_dir), n, f32_clip))
    ratio_by_codec = {info["compression"]: info["storage_ratio"]}
    for codec in (c for c in COMPRESSIONS if info["format"] != "zarr" or c != info["compression"]):
        path = workdir / f"cache-{codec}"
        write_cache(path, data["id"], data["label"], feats, data["envelope"], data["length"], fmt="zarr",
                    dtype="float16", shard_size=shard_size, overwrite=True, compression=codec)
        files = [f for s in sorted((path / cachemod.SHARDS_DIR).iterdir()) for f in _files(s)]
        variants.append(_measure(f"cache (zarr, float16, {codec})", files, lambda p=path: _read_cache(p), n, f32_clip))
        ratio_by_codec[codec] = cache_info(path)["storage_ratio"]
        shutil.rmtree(path, ignore_errors=True)

    other = workdir / "cache-hdf5"
    write_cache(other, data["id"], data["label"], feats, data["envelope"], data["length"], fmt="hdf5",
                dtype="float16", shard_size=shard_size, overwrite=True)
    hdf5_files = [f for s in sorted((other / cachemod.SHARDS_DIR).iterdir()) for f in _files(s)]
    variants.append(_measure("cache (hdf5, float16, gzip-1)", hdf5_files, lambda: _read_cache(other), n, f32_clip))

    for dtype in ("float16", "float32"):
        folder = workdir / f"npy-{dtype}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        files = []
        for clip_id, f in zip(data["id"], feats):
            path = folder / f"{clip_id}.npy"
            np.save(path, f.astype(dtype))
            files.append(path)
        variants.append(_measure(f"npy {dtype}, one file per video (features only)", files,
                                 lambda files=files: _read_npy(files), n, f32_clip))
    for folder in (other, workdir / "npy-float16", workdir / "npy-float32"):
        shutil.rmtree(folder, ignore_errors=True)

    ours, npy16, npy32 = variants[0], variants[-2], variants[-1]
    raw_v = next(v for v in variants if v["variant"].endswith(", none)"))
    return {
        "clips": n, "frames": frames, "dim": dim, "format": info["format"], "dtype": info["dtype"],
        "compression": info["compression"],
        "bytes_per_clip": info["bytes_per_clip"], "float32_bytes_per_clip": f32_clip,
        "storage_ratio": info["storage_ratio"], "storage_ratio_by_codec": ratio_by_codec,
        "float32_feature_bytes_per_clip": f32_feats,
        "zero_fraction": round(float(np.count_nonzero(feats == 0)) / feats.size, 4),
        "compression_gain": round(raw_v["bytes"] / ours["bytes"], 3),   # float16 raw / float16 compressed
        "npy_comparison": {
            "files_npy_per_video": npy16["files"], "files_cache": ours["files"],
            "shards_cache": len(shards),
            "bytes_npy_float16_over_cache": round(npy16["bytes"] / ours["bytes"], 3),
            "bytes_npy_float32_over_cache": round(npy32["bytes"] / ours["bytes"], 3),
            "read_warm_cache_over_npy_float16": round(ours["read_warm_clips_per_s"] / npy16["read_warm_clips_per_s"], 3),
            "read_warm_cache_over_npy_float32": round(ours["read_warm_clips_per_s"] / npy32["read_warm_clips_per_s"], 3),
            "read_cold_cache_over_npy_float32": (round(ours["read_cold_clips_per_s"] / npy32["read_cold_clips_per_s"], 3)
                                                 if ours["read_cold_clips_per_s"] and npy32["read_cold_clips_per_s"] else None),
        },
        "variants": variants,
    }
