"""The feature cache: the index over its shards (cache.json), building it, and reading it.

A cache is a directory (docs/design.md, "The cache"):

    CACHE_DIR/cache.json         index, written last and atomically: schema version, fingerprint,
                                 config, shards (name, count, n_failed, sha256), counts
    CACHE_DIR/failures.jsonl     one JSON line per faulty video: id, path, reason, detail
    CACHE_DIR/progress.json      only while extraction is unfinished (fingerprint, config, n_shards)
    CACHE_DIR/shards/shard-00000.zarr  (Zarr v3 directory)  or  shard-00000.h5  (HDF5)

Building: `begin_cache` claims (or resumes) the directory, one `pipeline.shards.ShardWriter` per
shard writes the data, `finalize_cache` hashes the shards and writes the index last. Resume = skip
shards that exist; parallel = one process per shard. Shard bytes and cache.json are deterministic
(no timestamps), so an interrupted and resumed extraction gives the same cache as an uninterrupted
one. Reading: `FeatureCache` (picklable, lazily opened files), `cache_info`, defined in
`pipeline.feature_cache` and importable from here.

This module owns the fingerprint, the index's writing and the directory's life cycle; the reader
that checks cache.json, with the file names and the index checksum both sides use, is
`pipeline.feature_cache`. What is inside one shard (formats, names, digests) belongs to
`pipeline.shards`, decoding videos and running models to `pipeline.extract`. It must not import
from stages after it (extract, training, export).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from pipeline.errors import FoleyError
from pipeline.fsio import atomic_write_text, fsync_dir, read_json  # noqa: F401
from pipeline.chunks import LostChunk, clip_reader  # noqa: F401
# The reader and the names both sides share; re-exported so callers keep importing from here.
from pipeline.feature_cache import (CACHE_JSON, CORRUPT_HINT, FAILURES_JSONL, MAX_OPEN_SHARDS,  # noqa: F401
                                    PROGRESS_JSON, SHARDS_DIR, FeatureCache, _index_checksum, _read_record,
                                    cache_info, format_cache_info)
from pipeline.shards import (FORMATS, LEGACY_COMPRESSION, SCHEMA_VERSION, SHARD_RE, TEMP_RE, ShardWriter,  # noqa: F401
                             canonical_json, check_compression, check_dtype, check_fmt, close_shard, disk_bytes, fmt_of,
                             open_shard, read_shard_attrs, read_shard_meta, remove_path, shard_name,
                             shard_sha256)


# ----------------------------------------------------------------------------- fingerprint

def fingerprint(params: dict) -> str:
    """sha256 hex of the canonical JSON (sorted keys, no spaces) of `params` and SCHEMA_VERSION.

    `params` must hold everything that changes the cached numbers (backbone, checkpoint sha256,
    frames, fps, size, normalisation, envelope parameters, dtype); Path and numpy scalars are
    written as str / Python numbers.
    """
    return hashlib.sha256(canonical_json({"params": params, "schema_version": SCHEMA_VERSION})
                          .encode()).hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:         # exists, owned by someone else
        return True
    except (OverflowError, ValueError):
        return False
    return True


# ----------------------------------------------------------------------------- building a cache


def _existing_record(cache_dir: Path) -> dict | None:
    """The cache's own record: cache.json if finished, else progress.json, else None."""
    for name in (CACHE_JSON, PROGRESS_JSON):
        path = cache_dir / name
        if path.exists():
            data = _read_record(path)
            if "fingerprint" not in data:
                raise FoleyError(f"{path} is corrupt (no fingerprint)")
            data["_source"] = name
            return data
    return None


def _looks_like_cache(cache_dir: Path) -> bool:
    """True for an empty dir or one holding a foleycache cache (safe to wipe with overwrite)."""
    names = {TEMP_RE.sub("", p.name) for p in cache_dir.iterdir()}
    if not names:
        return True
    if names & {CACHE_JSON, PROGRESS_JSON}:
        return True
    # A cache killed before its progress record was written: only shards/ (+ temps).
    shards = cache_dir / SHARDS_DIR
    return names == {SHARDS_DIR} and shards.is_dir() and all(
        SHARD_RE.match(TEMP_RE.sub("", p.name)) for p in shards.iterdir())


def _diff_keys(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            name = f"{prefix}{key}"
            if key not in a or key not in b:
                out.append(name)
            else:
                out += _diff_keys(a[key], b[key], name + ".")
        return out
    return [] if canonical_json(a) == canonical_json(b) else [prefix.rstrip(".") or "(config)"]


def _existing_shard(shards_dir: Path, index: int) -> Path | None:
    for fmt in FORMATS:
        path = shards_dir / shard_name(index, fmt)
        if path.exists():
            return path
    return None


def pending_shards(cache_dir, n_shards: int) -> list[int]:
    """Indices of shards not written yet (read-only: safe for every torchrun rank to call)."""
    shards_dir = Path(cache_dir) / SHARDS_DIR
    return [i for i in range(n_shards) if _existing_shard(shards_dir, i) is None]


def remove_stale_temps(cache_dir) -> list[Path]:
    """Remove `*.tmp-<pid>` leftovers whose writer process is gone (killed runs)."""
    cache_dir = Path(cache_dir)
    removed = []
    for folder in (cache_dir, cache_dir / SHARDS_DIR):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            m = TEMP_RE.search(p.name) or re.search(r"\.old-(\d+)$", p.name)
            if m and not _pid_alive(int(m.group(1))):
                remove_path(p)
                removed.append(p)
    return removed


def _recorded_compression(record: dict) -> str | None:
    """The features' codec a cache record names; caches from before the choice existed: the
    format's codec of that time (LEGACY_COMPRESSION)."""
    if record.get("compression"):
        return record["compression"]
    return LEGACY_COMPRESSION.get(record.get("format")) if record.get("format") else None


def resolve_compression(cache_dir, fmt: str, compression: str | None, overwrite: bool = False) -> str:
    """--compression for an extraction into `cache_dir` (read-only): the one given, else the one the
    unfinished or finished cache there was started with (so a resumed cache never mixes codecs),
    else the format's default. A resume that asks for another codec is refused."""
    record = None
    if not overwrite and Path(cache_dir).is_dir():
        try:
            record = _existing_record(Path(cache_dir))
        except FoleyError:
            record = None               # begin_cache says what is wrong with it
    recorded = _recorded_compression(record) if record and record.get("format") in (None, fmt) else None
    if recorded is not None and compression is not None and compression != recorded:
        raise FoleyError(f"the cache in {cache_dir} was started with --compression {recorded}, this run asks for "
                         f"{compression}; pass --overwrite to replace it, or choose another output directory")
    return check_compression(fmt, compression or recorded)


def _resume_problem(record: dict, fingerprint: str, config: dict, n_shards: int, fmt: str | None,
                    compression: str | None) -> str | None:
    """Why an existing cache's record cannot be resumed by this run (None: it can)."""
    old_n = len(record["shards"]) if record["_source"] == CACHE_JSON else record.get("n_shards")
    old_fmt, old_codec = record.get("format"), _recorded_compression(record)
    if record["fingerprint"] != fingerprint:
        keys = _diff_keys(record.get("config", {}), config) or ["(fingerprint only)"]
        return f"was built with another configuration (differs in: {', '.join(keys)})"
    if old_n != n_shards:
        return f"has {old_n} shards, this run needs {n_shards} (the annotation list or --shard-size changed)"
    if fmt is not None and old_fmt is not None and old_fmt != fmt:
        return f"was started with --format {old_fmt}, this run asks for {fmt}"
    if compression is not None and old_codec not in (None, compression):
        return f"was started with --compression {old_codec}, this run asks for {compression}"
    return None


def begin_cache(cache_dir, fingerprint: str, config: dict, n_shards: int, overwrite: bool = False,
                *, fmt: str | None = None, compression: str | None = None) -> list[int]:
    """Create or resume a cache; returns the shard indices still to write.

    Records {fingerprint, config, n_shards, format, compression} in CACHE_DIR/progress.json
    (atomically). The compression is lossless, so it is not in the fingerprint; a resume with
    another one is refused like one with another format.
    An existing cache with another fingerprint (or shard count, or format) is refused unless
    `overwrite`, which first empties the directory; a non-empty directory that is not a foleycache
    cache is never wiped. Stale temporaries of killed writers are removed. Call it from one process
    (torchrun rank 0) and let the others wait for it; they can use `pending_shards`.
    """
    cache_dir = Path(cache_dir)
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    if fmt is not None:
        check_fmt(fmt)
    record = _claim_dir(cache_dir, overwrite)
    problem = _resume_problem(record, fingerprint, config, n_shards, fmt, compression) \
        if record is not None and not overwrite else None
    if problem:
        raise FoleyError(f"the cache in {cache_dir} {problem}; pass --overwrite to replace it, "
                         "or choose another output directory")
    if overwrite and cache_dir.is_dir():
        for p in cache_dir.iterdir():
            remove_path(p)
        record = None

    (cache_dir / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    remove_stale_temps(cache_dir)
    pending = pending_shards(cache_dir, n_shards)
    if fmt is not None:
        _check_shard_formats(cache_dir, n_shards, fmt)

    if record is not None and record["_source"] == CACHE_JSON:
        if not pending:
            return []           # finished cache, same work: nothing to do
        # A shard went missing from a finished cache: it is unfinished again until finalize.
    _write_progress(cache_dir, record, fingerprint, config, n_shards, fmt, compression)
    return pending


def _claim_dir(cache_dir: Path, overwrite: bool) -> dict | None:
    """The record of the cache `begin_cache` may write into `cache_dir` (None: none yet); refuses a
    path that is not a directory and a non-empty directory that is not a foleycache cache."""
    if cache_dir.exists() and not cache_dir.is_dir():
        raise FoleyError(f"{cache_dir} exists and is not a directory")
    if cache_dir.is_dir() and not _looks_like_cache(cache_dir):
        raise FoleyError(f"{cache_dir} is not empty and is not a foleycache cache; "
                         "refusing to write (or wipe) it: choose another output directory")
    try:
        return _existing_record(cache_dir) if cache_dir.is_dir() else None
    except FoleyError:
        if not overwrite:
            raise
        return None            # a corrupt record of our own cache: --overwrite may replace it


def _check_shard_formats(cache_dir: Path, n_shards: int, fmt: str) -> None:
    """Refuse to add `fmt` shards to a cache that already holds shards of the other format."""
    shards_dir = cache_dir / SHARDS_DIR
    other = [p.name for i in range(n_shards) if (p := _existing_shard(shards_dir, i)) and fmt_of(p.name) != fmt]
    if other:
        raise FoleyError(f"the cache in {cache_dir} holds {fmt_of(other[0])} shards ({other[0]}), "
                         f"this run asks for {fmt}; pass --overwrite to replace it")


def _write_progress(cache_dir: Path, record: dict | None, fingerprint: str, config: dict, n_shards: int,
                    fmt: str | None, compression: str | None) -> None:
    """progress.json (atomically), then drop cache.json: from here on the cache reads as unfinished.
    A resumed cache keeps the config, format and codec it was started with."""
    progress = {"schema_version": SCHEMA_VERSION, "fingerprint": fingerprint,
                "config": record["config"] if record else config, "n_shards": n_shards,
                "format": fmt or (record or {}).get("format")}
    if compression is not None or (record and record.get("compression")):
        progress["compression"] = compression or record["compression"]
    atomic_write_text(cache_dir / PROGRESS_JSON, json.dumps(progress, indent=2, sort_keys=True) + "\n")
    if (cache_dir / CACHE_JSON).exists():
        (cache_dir / CACHE_JSON).unlink()



def finalize_cache(cache_dir, progress: bool = False) -> dict:
    """Hash every shard, gather their failures into failures.jsonl, then write cache.json last
    (atomically) and drop progress.json. Returns the cache.json dict. All shards must exist.

    cache.json: {schema_version, fingerprint, config, format, compression, dtype, frames, dim,
                 shards: [{name, count, n_failed, sha256}],
                 counts: {candidates, cached, failed, failed_by_reason}, checksum}
    No timestamps: the same work gives the same file.
    """
    cache_dir = Path(cache_dir)
    record = _existing_record(cache_dir) if cache_dir.is_dir() else None
    if record is None:
        raise FoleyError(f"{cache_dir} holds no cache in progress (no progress.json): run begin_cache first")
    n_shards = len(record["shards"]) if record["_source"] == CACHE_JSON else int(record["n_shards"])
    paths, fmt = _finished_shards(cache_dir, n_shards)
    shards, failures, layout = _hash_shards(paths, progress)
    by_reason: dict[str, int] = {}
    for f in failures:
        by_reason[f["reason"]] = by_reason.get(f["reason"], 0) + 1
    cached = sum(s["count"] for s in shards)
    index = {
        "schema_version": SCHEMA_VERSION,
        "fingerprint": record["fingerprint"],
        "config": record.get("config", {}),
        "format": fmt,
        "compression": _recorded_compression(dict(record, format=fmt)),
        "dtype": layout[2], "frames": layout[0], "dim": layout[1],
        "shards": shards,
        "counts": {"candidates": cached + len(failures), "cached": cached, "failed": len(failures),
                   "failed_by_reason": dict(sorted(by_reason.items()))},
    }
    index["checksum"] = _index_checksum(index)
    atomic_write_text(cache_dir / FAILURES_JSONL,
                       "".join(json.dumps(f, sort_keys=True, ensure_ascii=False) + "\n" for f in failures))
    atomic_write_text(cache_dir / CACHE_JSON, json.dumps(index, indent=2) + "\n")
    if (cache_dir / PROGRESS_JSON).exists():
        (cache_dir / PROGRESS_JSON).unlink()
        fsync_dir(cache_dir)
    return index


def _finished_shards(cache_dir: Path, n_shards: int) -> tuple[list[Path], str]:
    """The paths of shards 0..n_shards-1 and their one format; refuses missing or mixed shards."""
    shards_dir = cache_dir / SHARDS_DIR
    paths = [_existing_shard(shards_dir, i) for i in range(n_shards)]
    missing = [i for i, p in enumerate(paths) if p is None]
    if missing:
        listed = ", ".join(f"shard-{i:05d}" for i in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise FoleyError(f"cannot finalize {cache_dir}: {len(missing)} of {n_shards} shards not written ({listed}); "
                         "re-run the same command to finish them")
    formats = sorted({fmt_of(p.name) for p in paths})
    if len(formats) > 1:
        raise FoleyError(f"cannot finalize {cache_dir}: mixed shard formats {formats}; re-extract with --overwrite")
    return paths, formats[0]


def _hash_shards(paths: list[Path], progress: bool) -> tuple[list[dict], list[dict], tuple]:
    """cache.json's shard entries, every shard's failure records, and the (T, D, dtype) all shards
    must share (a shard that differs is refused: the index has one layout)."""
    from tqdm import tqdm

    shards, failures, layout = [], [], None
    for path in tqdm(paths, desc="hashing shards", unit="shard", disable=not progress):
        attrs = read_shard_attrs(path)
        this = (attrs["frames"], attrs["dim"], attrs["dtype"])
        if layout is not None and this != layout:
            raise FoleyError(f"shard {path.name} holds [T, D] dtype {this}, other shards {layout}; "
                             "re-extract with --overwrite")
        layout = this
        shards.append({"name": path.name, "count": attrs["count"], "n_failed": len(attrs["failures"]),
                       "sha256": shard_sha256(path)})
        failures += attrs["failures"]
    return shards, failures, layout


def write_cache(cache_dir, ids: Sequence[str], labels: Sequence[str], features: np.ndarray,
                envelopes: np.ndarray, lengths: Sequence[int], *, fmt: str = "zarr", dtype: str = "float16",
                shard_size: int = 64, config: dict | None = None, failures: Iterable[dict] = (),
                overwrite: bool = False, compression: str | None = None) -> "FeatureCache":
    """Build a complete cache from arrays through the normal writer path (tests, benchmarks).

    features [N, T, D], envelopes [N, T], lengths [N]; `failures` go into the first shard.
    compression: the features' codec (None: the format's default).
    """
    features = np.asarray(features)
    envelopes = np.asarray(envelopes, dtype=np.float32)
    n, frames, dim = features.shape
    config = dict(config or {})
    fp = fingerprint({"config": config, "dtype": check_dtype(dtype), "frames": frames, "dim": dim})
    n_shards = max(1, -(-n // shard_size))
    compression = resolve_compression(cache_dir, fmt, compression, overwrite)
    todo = begin_cache(cache_dir, fp, config, n_shards, overwrite=overwrite, fmt=fmt, compression=compression)
    failures = list(failures)
    shards_dir = Path(cache_dir) / SHARDS_DIR
    for k in todo:
        lo, hi = k * shard_size, min(n, (k + 1) * shard_size)
        with ShardWriter(shards_dir / shard_name(k, fmt), fmt, capacity=hi - lo, frames=frames,
                         dim=dim, dtype=dtype, compression=compression) as w:
            for i in range(lo, hi):
                w.append(ids[i], labels[i], features[i], envelopes[i], int(lengths[i]))
            if k == 0:
                for f in failures:
                    w.add_failure(f)
    finalize_cache(cache_dir)
    return FeatureCache(cache_dir)
