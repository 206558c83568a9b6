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
one. Reading: `FeatureCache` (picklable, lazily opened files), `cache_info`.

This module owns the fingerprint, the index and the directory's life cycle; what is inside one
shard (formats, names, digests) belongs to `pipeline.shards`, decoding videos and running models
to `pipeline.extract`. It must not import from stages after it (extract, training, export).
It is longer than most modules (~710 lines) for one reason: cache.json's fields are written by
`finalize_cache` and checked by `FeatureCache`, and keeping the index's writer and reader side by
side is what keeps them in step (decoding a shard's chunks is `pipeline.chunks`'s).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from pipeline.errors import FoleyError
from pipeline.fsio import atomic_write_text, fsync_dir, read_json
from pipeline.chunks import LostChunk, clip_reader
from pipeline.shards import (FORMATS, LEGACY_COMPRESSION, SCHEMA_VERSION, SHARD_RE, TEMP_RE, ShardWriter,
                             canonical_json, check_compression, check_dtype, check_fmt, close_shard, disk_bytes, fmt_of,
                             open_shard, read_shard_attrs, read_shard_meta, remove_path, shard_name,
                             shard_sha256)

CACHE_JSON = "cache.json"
FAILURES_JSONL = "failures.jsonl"
PROGRESS_JSON = "progress.json"
SHARDS_DIR = "shards"
MAX_OPEN_SHARDS = 64        # open shard files kept per process by FeatureCache (LRU)
CORRUPT_HINT = "it is corrupt: re-run extract-features with --overwrite to rebuild the cache"


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

def _read_record(path: Path) -> dict:
    """cache.json or progress.json as a dict (a one-line FoleyError that says "corrupt" otherwise)."""
    data = read_json(path, "cache index" if path.name == CACHE_JSON else "cache progress record", hint=CORRUPT_HINT)
    if not isinstance(data, dict):
        raise FoleyError(f"{path} is corrupt (not a JSON object)")
    return data


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
    if cache_dir.exists() and not cache_dir.is_dir():
        raise FoleyError(f"{cache_dir} exists and is not a directory")
    if cache_dir.is_dir() and not _looks_like_cache(cache_dir):
        raise FoleyError(f"{cache_dir} is not empty and is not a foleycache cache; "
                         "refusing to write (or wipe) it: choose another output directory")
    try:
        record = _existing_record(cache_dir) if cache_dir.is_dir() else None
    except FoleyError:
        if not overwrite:
            raise
        record = None          # a corrupt record of our own cache: --overwrite may replace it

    problem = _resume_problem(record, fingerprint, config, n_shards, fmt, compression) \
        if record is not None and not overwrite else None
    if problem:
        raise FoleyError(f"the cache in {cache_dir} {problem}; pass --overwrite to replace it, "
                         "or choose another output directory")
    if overwrite and cache_dir.is_dir():
        for p in cache_dir.iterdir():
            remove_path(p)
        record = None

    shards_dir = cache_dir / SHARDS_DIR
    shards_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(cache_dir)
    pending = pending_shards(cache_dir, n_shards)
    if fmt is not None:
        other = [p.name for i in range(n_shards) if (p := _existing_shard(shards_dir, i)) and fmt_of(p.name) != fmt]
        if other:
            raise FoleyError(f"the cache in {cache_dir} holds {fmt_of(other[0])} shards ({other[0]}), "
                             f"this run asks for {fmt}; pass --overwrite to replace it")

    if record is not None and record["_source"] == CACHE_JSON:
        if not pending:
            return []           # finished cache, same work: nothing to do
        # A shard went missing from a finished cache: it is unfinished again until finalize.
    progress = {"schema_version": SCHEMA_VERSION, "fingerprint": fingerprint,
                "config": record["config"] if record else config, "n_shards": n_shards,
                "format": fmt or (record or {}).get("format")}
    if compression is not None or (record and record.get("compression")):
        progress["compression"] = compression or record["compression"]
    atomic_write_text(cache_dir / PROGRESS_JSON, json.dumps(progress, indent=2, sort_keys=True) + "\n")
    if (cache_dir / CACHE_JSON).exists():
        (cache_dir / CACHE_JSON).unlink()
    return pending


def _index_checksum(index: dict) -> str:
    return hashlib.sha256(canonical_json({k: v for k, v in index.items() if k != "checksum"})
                          .encode()).hexdigest()


def finalize_cache(cache_dir, progress: bool = False) -> dict:
    """Hash every shard, gather their failures into failures.jsonl, then write cache.json last
    (atomically) and drop progress.json. Returns the cache.json dict. All shards must exist.

    cache.json: {schema_version, fingerprint, config, format, compression, dtype, frames, dim,
                 shards: [{name, count, n_failed, sha256}],
                 counts: {candidates, cached, failed, failed_by_reason}, checksum}
    No timestamps: the same work gives the same file.
    """
    from tqdm import tqdm

    cache_dir = Path(cache_dir)
    record = _existing_record(cache_dir) if cache_dir.is_dir() else None
    if record is None:
        raise FoleyError(f"{cache_dir} holds no cache in progress (no progress.json): run begin_cache first")
    n_shards = len(record["shards"]) if record["_source"] == CACHE_JSON else int(record["n_shards"])
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

    by_reason: dict[str, int] = {}
    for f in failures:
        by_reason[f["reason"]] = by_reason.get(f["reason"], 0) + 1
    cached = sum(s["count"] for s in shards)
    index = {
        "schema_version": SCHEMA_VERSION,
        "fingerprint": record["fingerprint"],
        "config": record.get("config", {}),
        "format": formats[0],
        "compression": _recorded_compression(dict(record, format=formats[0])),
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


# ----------------------------------------------------------------------------- reading a cache

class FeatureCache:
    """Read a finished cache. Picklable; files are opened lazily, per process (DataLoader workers).

    c = FeatureCache("cache/train")
    len(c); c.fingerprint; c.ids; c.labels; c.failures; c.config; c.frames; c.dim; c.dtype ("float16")
    c[i] -> {"id", "label", "features" [T, D] (stored dtype), "envelope" [T] float32, "length" int}
    c.read_shard(k), c.read_many(indices) -> {"features" [n, T, D], "envelope" [n, T] float32,
                                              "length" [n] int32, "id" list[str], "label" list[str]}
    c.read_into(indices, features [n, T, D], envelope [n, T], length [n])   (training's batch read)
    Any read problem raises FoleyError naming the shard file.
    """

    def __init__(self, path, require_shards: bool = True):
        """require_shards=False opens a cache whose shards are damaged or gone (for verify)."""
        self.path = Path(path)
        if not self.path.is_dir():
            raise FoleyError(f"no feature cache at {self.path} (directory not found)")
        index_path = self.path / CACHE_JSON
        if not index_path.exists():
            if (self.path / PROGRESS_JSON).exists():
                raise FoleyError(f"the cache in {self.path} is unfinished (no cache.json yet): "
                                 "re-run extract-features with the same options to finish it")
            raise FoleyError(f"{self.path} is not a foleycache cache (no cache.json)")
        index = _read_record(index_path)
        version = index.get("schema_version")
        if version != SCHEMA_VERSION:
            raise FoleyError(f"{index_path}: cache schema version {version!r} is not supported "
                             f"(this foleycache reads version {SCHEMA_VERSION}); re-extract the features")
        if index.get("checksum") != _index_checksum(index):
            raise FoleyError(f"{index_path} was edited or is damaged (its checksum does not match); "
                             "re-extract with --overwrite")
        try:
            self.fingerprint: str = index["fingerprint"]
            self.config: dict = index["config"]
            self.format: str = check_fmt(index["format"])
            # lossless, so not in the fingerprint; caches from before the choice: their format's codec then
            self.compression: str = index.get("compression") or LEGACY_COMPRESSION[self.format]
            self.dtype: str = check_dtype(index["dtype"])
            self.frames: int = int(index["frames"])
            self.dim: int = int(index["dim"])
            self.shards: list[dict] = list(index["shards"])
            self.counts: dict = index["counts"]
            counts = [int(s["count"]) for s in self.shards]
            names = [s["name"] for s in self.shards]
        except (KeyError, TypeError, ValueError) as e:
            raise FoleyError(f"{index_path} is corrupt (bad or missing field: {e})") from e
        for name in names:
            if not SHARD_RE.match(name):
                raise FoleyError(f"{index_path} is corrupt (bad shard name {name!r})")
            if require_shards and not (self.path / SHARDS_DIR / name).exists():
                raise FoleyError(f"shard {name} listed in {index_path} is missing from {self.path / SHARDS_DIR}")
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._meta: dict[int, dict] = {}        # shard -> small arrays (ids, labels, lengths, envelopes)
        self._failures: list[dict] | None = None
        self._handles: OrderedDict = OrderedDict()
        self._pid = os.getpid()

    # -- pickling: never carry open file handles into another process
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_handles"] = OrderedDict()
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._pid = os.getpid()

    def close(self):
        """Close the shard files this process opened (they reopen on the next read)."""
        for store, _, _ in self._handles.values():
            close_shard(store)
        self._handles.clear()

    def __del__(self):
        try:
            if getattr(self, "_pid", None) == os.getpid():
                self.close()
        except Exception:       # interpreter shutdown: modules may be gone already
            pass

    # -- layout
    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def n_shards(self) -> int:
        return len(self.shards)

    def shard_path(self, k: int) -> Path:
        return self.path / SHARDS_DIR / self.shards[k]["name"]

    def shard_slice(self, k: int) -> range:
        """Global indices held by shard k."""
        return range(int(self._offsets[k]), int(self._offsets[k + 1]))

    def _locate(self, i: int) -> tuple[int, int]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"clip index {i} out of range for a cache of {n} clips")
        i %= n
        k = int(np.searchsorted(self._offsets, i, side="right") - 1)
        return k, i - int(self._offsets[k])

    # -- lazily opened files, per process
    def _open(self, k: int) -> tuple:
        """(store, `features` array (zarr Array or h5py Dataset), its pipeline.chunks reader) of
        shard k, opened once per process."""
        if self._pid != os.getpid():            # forked: the parent's handles are not ours
            self._handles = OrderedDict()
            self._pid = os.getpid()
        if k in self._handles:
            self._handles.move_to_end(k)
            return self._handles[k]
        store = open_shard(self.shard_path(k))
        arr = store["features"]
        self._handles[k] = (store, arr, clip_reader(arr, self.shard_path(k) / "features"
                                                    if self.format == "zarr" else None))
        if len(self._handles) > MAX_OPEN_SHARDS:
            _, (old, _, _) = self._handles.popitem(last=False)
            close_shard(old)
        return self._handles[k]

    def _shard_meta(self, k: int) -> dict:
        if k not in self._meta:
            meta = read_shard_meta(self.shard_path(k))
            attrs, expected = meta["attrs"], (len(self.shard_slice(k)), self.frames, self.dim, self.dtype)
            if (attrs["count"], attrs["frames"], attrs["dim"], attrs["dtype"]) != expected:
                raise FoleyError(f"shard {self.shard_path(k)} does not match cache.json "
                                 f"(count, T, D, dtype {attrs['count'], attrs['frames'], attrs['dim'], attrs['dtype']} "
                                 f"vs {expected}); run `foleycache cache-info --verify`")
            if np.isnan(meta["envelope"]).any():
                raise FoleyError(f"shard {self.shard_path(k)} has lost envelope chunks; "
                                 "run `foleycache cache-info --verify`")
            self._meta[k] = meta
        return self._meta[k]

    def _read_rows(self, k: int, local: np.ndarray, out, rows: np.ndarray):
        """out[rows[j]] = features of shard k's clip local[j] ([T, D], cast to out's dtype): one
        ascending pass over the chunks (`pipeline.chunks`); any failure is a FoleyError naming the shard."""
        import torch

        try:
            self._open(k)[2].read_into(local, out, rows)
        except FoleyError:
            raise
        except Exception as e:
            raise FoleyError(f"cannot read features from shard {self.shard_path(k)}: "
                             f"{type(e).__name__}: {e}") from e
        # one clip per chunk: a chunk a library reads as missing is a NaN clip (the fill value)
        if len(rows) and torch.isnan(out[torch.from_numpy(np.asarray(rows)), 0, 0]).any():
            raise LostChunk(f"shard {self.shard_path(k)} has lost the features of some clips "
                            "(chunk files missing); run `foleycache cache-info --verify`")

    def _read_features(self, k: int, local) -> np.ndarray:
        """features [len(local), T, D] (stored dtype) of shard k's clips at local indices (or a slice)."""
        import torch

        local = np.arange(len(self.shard_slice(k)))[local] if isinstance(local, slice) else np.asarray(local)
        out = torch.empty((len(local), self.frames, self.dim), dtype=getattr(torch, self.dtype))
        self._read_rows(k, local, out, np.arange(len(local)))
        return out.numpy()

    # -- public reading API
    def __getitem__(self, i) -> dict:
        k, j = self._locate(int(i))
        meta = self._shard_meta(k)
        return {"id": meta["id"][j], "label": meta["label"][j],
                "features": self._read_features(k, slice(j, j + 1))[0],
                "envelope": meta["envelope"][j].copy(), "length": int(meta["length"][j])}

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def read_shard(self, k: int) -> dict:
        """Everything in shard k: features [n, T, D], envelope [n, T], length [n], id, label (lists)."""
        if not 0 <= k < self.n_shards:
            raise IndexError(f"shard {k} out of range (cache has {self.n_shards})")
        meta = self._shard_meta(k)
        return {"features": self._read_features(k, slice(None)), "envelope": meta["envelope"].copy(),
                "length": meta["length"].copy(), "id": list(meta["id"]), "label": list(meta["label"])}

    def read_into(self, indices, features, envelope=None, length=None):
        """Clips at global `indices` [n] (any order) written into the caller's tensors: features
        [n, T, D] (float16 or float32: the cast happens in the copy), envelope [n, T] float32,
        length [n] (both optional). Read shard by shard, each in one ascending pass over the chunk
        files the batch needs (`pipeline.chunks`): training's batch read."""
        import torch

        idx = self._global_indices(indices)
        shard_of = np.searchsorted(self._offsets, idx, side="right") - 1
        for k in np.unique(shard_of).tolist():
            pos = np.nonzero(shard_of == k)[0]
            local = idx[pos] - self._offsets[k]
            meta = self._shard_meta(k)
            self._read_rows(k, local, features, pos)
            if envelope is not None:
                envelope[pos] = torch.from_numpy(meta["envelope"][local])
            if length is not None:
                length[pos] = torch.from_numpy(meta["length"][local].astype(np.int64))

    def _global_indices(self, indices) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"clip indices out of range for a cache of {n} clips")
        return idx % n if n else idx

    def read_many(self, indices) -> dict:
        """Clips at arbitrary global indices (any order, repeats allowed), read shard by shard.
        Returns the read_shard dict in the order of `indices`."""
        idx = self._global_indices(indices)
        out = {"features": np.empty((idx.size, self.frames, self.dim), dtype=self.dtype),
               "envelope": np.empty((idx.size, self.frames), dtype=np.float32),
               "length": np.empty(idx.size, dtype=np.int32),
               "id": [""] * idx.size, "label": [""] * idx.size}
        shard_of = np.searchsorted(self._offsets, idx, side="right") - 1
        for k in np.unique(shard_of):
            pos = np.nonzero(shard_of == k)[0]
            meta = self._shard_meta(int(k))
            out["features"][pos] = self._read_features(int(k), idx[pos] - self._offsets[k])
            out["envelope"][pos] = meta["envelope"][idx[pos] - self._offsets[k]]
            out["length"][pos] = meta["length"][idx[pos] - self._offsets[k]]
            for p, j in zip(pos, idx[pos] - self._offsets[k]):
                out["id"][p] = meta["id"][j]
                out["label"][p] = meta["label"][j]
        return out

    @property
    def ids(self) -> list[str]:
        """[N] clip ids in cache order (reads each shard's small index once)."""
        return [s for k in range(self.n_shards) for s in self._shard_meta(k)["id"]]

    @property
    def labels(self) -> list[str]:
        """[N] templates, e.g. "Dropping something onto something"."""
        return [s for k in range(self.n_shards) for s in self._shard_meta(k)["label"]]

    @property
    def lengths(self) -> np.ndarray:
        """[N] int32 real frames per clip."""
        return np.concatenate([self._shard_meta(k)["length"] for k in range(self.n_shards)])

    @property
    def envelopes(self) -> np.ndarray:
        """[N, T] float32 targets (small: read without touching the features)."""
        return np.concatenate([self._shard_meta(k)["envelope"] for k in range(self.n_shards)])

    @property
    def failures(self) -> list[dict]:
        """Faulty videos, from failures.jsonl (one dict per video: id, path, reason, detail)."""
        if self._failures is None:
            path = self.path / FAILURES_JSONL
            try:
                self._failures = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise FoleyError(f"{path} is missing or corrupt ({type(e).__name__}: {e})") from e
        return self._failures

    # -- integrity
    def verify(self, progress: bool = False) -> list[str]:
        """Re-hash every shard against cache.json and check its shapes and counts.
        Returns one problem line per damaged shard (naming it); [] when all is well."""
        from tqdm import tqdm

        problems = []
        for k, entry in enumerate(tqdm(self.shards, desc="verifying shards", unit="shard", disable=not progress)):
            path = self.shard_path(k)
            if not path.exists():
                problems.append(f"{entry['name']}: missing")
                continue
            digest = shard_sha256(path)
            if digest != entry["sha256"]:
                problems.append(f"{entry['name']}: content hash mismatch (cache.json {entry['sha256'][:12]}…, "
                                f"on disk {digest[:12]}…): the shard is damaged or was modified")
                continue
            try:
                self._meta.pop(k, None)
                meta = self._shard_meta(k)
                if len(meta["attrs"]["failures"]) != int(entry["n_failed"]):
                    raise FoleyError(f"holds {len(meta['attrs']['failures'])} failures, cache.json says {entry['n_failed']}")
            except FoleyError as e:
                problems.append(f"{entry['name']}: {e}")
        try:
            if len(self.failures) != int(self.counts["failed"]):
                problems.append(f"{FAILURES_JSONL}: {len(self.failures)} lines, cache.json counts {self.counts['failed']}")
        except FoleyError as e:
            problems.append(f"{FAILURES_JSONL}: {e}")
        return problems


def cache_info(path, verify: bool = False, progress: bool = False) -> dict:
    """Summary of a cache (what `foleycache cache-info` prints).

    Sizes in bytes; `float32_bytes_per_clip` = T * (D + 1) * 4 (features + envelope, uncompressed
    float32), `storage_ratio` = bytes_per_clip / float32_bytes_per_clip.
    With verify=True, `problems` lists every damaged shard (empty when all is well).
    """
    cache = FeatureCache(path, require_shards=not verify)    # verify lists every missing shard itself
    shard_bytes = sum(disk_bytes(cache.shard_path(k)) for k in range(cache.n_shards) if cache.shard_path(k).exists())
    size = disk_bytes(cache.path)
    n = len(cache)
    f32 = cache.frames * (cache.dim + 1) * 4
    per_clip = shard_bytes / n if n else 0.0
    info = {
        "path": str(cache.path), "schema_version": SCHEMA_VERSION, "fingerprint": cache.fingerprint,
        "format": cache.format, "compression": cache.compression, "dtype": cache.dtype, "clips": n, "shards": cache.n_shards,
        "frames": cache.frames, "dim": cache.dim,
        "shapes": {"features": [n, cache.frames, cache.dim], "envelope": [n, cache.frames], "length": [n]},
        "size_bytes": size, "shard_bytes": shard_bytes, "bytes_per_clip": round(per_clip, 1), "float32_bytes_per_clip": f32,
        "storage_ratio": round(per_clip / f32, 4) if n else None,
        "candidates": cache.counts["candidates"], "failed": cache.counts["failed"],
        "failed_by_reason": cache.counts["failed_by_reason"], "config": cache.config,
    }
    if verify:
        info["problems"] = cache.verify(progress=progress)
    cache.close()
    return info


def _human_bytes(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"


def format_cache_info(info: dict) -> str:
    """The human-readable cache-info summary (several lines)."""
    lines = [
        f"cache        {info['path']}",
        f"fingerprint  {info['fingerprint']}",
        f"clips        {info['clips']} cached of {info['candidates']} candidates in {info['shards']} "
        f"{info['format']} shards ({info.get('compression')})",
        f"features     [{info['frames']}, {info['dim']}] {info['dtype']} per clip; envelope [{info['frames']}] float32",
        f"size         {_human_bytes(info['shard_bytes'])} of shards ({_human_bytes(info['size_bytes'])} with the rest "
        f"of the directory), {_human_bytes(info['bytes_per_clip'])} per clip "
        f"= {info['storage_ratio']}x the {_human_bytes(info['float32_bytes_per_clip'])} of float32",
    ]
    if info["failed"]:
        reasons = ", ".join(f"{r} {n}" for r, n in info["failed_by_reason"].items())
        lines.append(f"failed       {info['failed']} ({reasons})")
    else:
        lines.append("failed       0")
    if "problems" in info:
        if info["problems"]:
            lines.append(f"verify       {len(info['problems'])} damaged:")
            lines += [f"  {p}" for p in info["problems"]]
        else:
            lines.append(f"verify       ok: all {info['shards']} shards match their sha256")
    return "\n".join(lines)
