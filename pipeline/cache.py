"""The feature cache: shards of backbone features + loudness envelopes, and the index over them.

A cache is a directory (DESIGN.md, "The cache"):

    CACHE_DIR/cache.json         index, written last and atomically: schema version, fingerprint,
                                 config, shards (name, count, n_failed, sha256), counts
    CACHE_DIR/failures.jsonl     one JSON line per faulty video: id, path, reason, detail
    CACHE_DIR/progress.json      only while extraction is unfinished (fingerprint, config, n_shards)
    CACHE_DIR/shards/shard-00000.zarr  (Zarr v3 directory)  or  shard-00000.h5  (HDF5)

Per shard: `features` [n, T, D] float16 (or float32), `envelope` [n, T] float32, `length` [n] int32,
`id` [n] str, `label` [n] str; the shard's own failures ride in its attributes, so a finished
shard is self-contained. Writing follows mosaicml/streaming: a `ShardWriter` context manager
writes one shard under a temporary name and renames it when complete; `finalize_cache` hashes
the shards and writes the index last. Resume = skip shards that exist; parallel = one process
per shard. Shard bytes and cache.json are deterministic (no timestamps), so an interrupted and
resumed extraction gives the same cache as an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from pipeline.errors import FoleyError

SCHEMA_VERSION = 1

CACHE_JSON = "cache.json"
FAILURES_JSONL = "failures.jsonl"
PROGRESS_JSON = "progress.json"
SHARDS_DIR = "shards"

FORMATS = {"zarr": ".zarr", "hdf5": ".h5"}      # --format name -> shard suffix
DTYPES = ("float16", "float32")                 # feature storage dtypes
# Fill value of features/envelope: a chunk missing on disk reads as this, never as plausible zeros
# (ReLU features and [0, 1] envelopes are never NaN; zarr also skips writing all-fill chunks, which
# with a 0 fill would make an all-zero clip indistinguishable from a lost one).
MISSING_FILL = float("nan")

# Compression, measured on ReLU-sparse float16 features [48, 25088] (~50% exact zeros), one clip
# per chunk, 2-core CPU (ratio = stored bytes / float32 bytes; read = one random clip):
#   zarr  zstd-1            0.30x  ~4 ms      (zstd-3: 0.29x, no faster; blosc-lz4+shuffle 0.46x)
#   hdf5  gzip-1            0.31x  ~13 ms     (lzf: 0.39x ~9 ms; uncompressed 0.50x ~1 ms)
# HDF5 uses gzip because every HDF5 reader has it (lzf is h5py-only, zstd would need hdf5plugin).
ZSTD_LEVEL = 1
ZSTD_CHECKSUM = True        # a damaged chunk fails to decode instead of reading back wrong numbers
HDF5_GZIP_LEVEL = 1

SHARD_RE = re.compile(r"^shard-(\d{5})(\.zarr|\.h5)$")
TEMP_RE = re.compile(r"\.tmp-(\d+)$")
HASH_BLOCK = 1 << 20
MAX_OPEN_SHARDS = 64        # open shard files kept per process by FeatureCache (LRU)


# ----------------------------------------------------------------------------- small helpers

def _canonical_json(obj) -> str:
    def default(o):
        if isinstance(o, Path):
            return str(o)
        if isinstance(o, np.generic):
            return o.item()
        raise TypeError(f"not JSON-serialisable in a cache config: {type(o).__name__} {o!r}")
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False, default=default)


def fingerprint(params: dict) -> str:
    """sha256 hex of the canonical JSON (sorted keys, no spaces) of `params` and SCHEMA_VERSION.

    `params` must hold everything that changes the cached numbers (backbone, checkpoint sha256,
    frames, fps, size, normalisation, envelope parameters, dtype); Path and numpy scalars are
    written as str / Python numbers.
    """
    return hashlib.sha256(_canonical_json({"params": params, "schema_version": SCHEMA_VERSION})
                          .encode()).hexdigest()


def sha256_file(path) -> str:
    """sha256 hex of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def _files_under(path: Path) -> list[Path]:
    return sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.relative_to(path).as_posix())


def shard_sha256(path) -> str:
    """sha256 of a shard: the file's bytes, or for a Zarr directory every file's relative path,
    size and bytes in sorted path order (so a renamed, added or removed chunk changes it too)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for file in _files_under(path):
        h.update(file.relative_to(path).as_posix().encode() + b"\0")
        h.update(file.stat().st_size.to_bytes(8, "little"))
        with open(file, "rb") as f:
            while block := f.read(HASH_BLOCK):
                h.update(block)
    return h.hexdigest()


def _disk_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _fsync_dir(path: Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path):
    """fsync a file, or every file and directory under a Zarr directory, before the rename."""
    if path.is_file():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        return
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(root))


def _remove(path: Path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _temp_name(path: Path) -> Path:
    # Same directory, so os.replace is a rename on one filesystem; the pid tells begin_cache
    # whether the writer is still alive.
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def _atomic_write_text(path: Path, text: str):
    tmp = _temp_name(path)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


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


def _check_fmt(fmt: str) -> str:
    if fmt not in FORMATS:
        raise FoleyError(f"unknown cache format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    return fmt


def _check_dtype(dtype) -> str:
    name = np.dtype(dtype).name
    if name not in DTYPES:
        raise FoleyError(f"unsupported feature dtype {name!r}; choose one of: {', '.join(DTYPES)}")
    return name


def shard_name(index: int, fmt: str) -> str:
    """File name of shard `index`: "shard-00003.zarr" (fmt "zarr") or "shard-00003.h5" ("hdf5")."""
    return f"shard-{index:05d}{FORMATS[_check_fmt(fmt)]}"


def _fmt_of(name: str) -> str:
    suffix = Path(name).suffix
    for fmt, s in FORMATS.items():
        if s == suffix:
            return fmt
    raise FoleyError(f"{name}: not a shard name (expected shard-NNNNN.zarr or shard-NNNNN.h5)")


def _normalise_failure(record: dict) -> dict:
    if "id" not in record or "reason" not in record:
        raise ValueError(f"a failure record needs at least 'id' and 'reason', got {sorted(record)}")
    out = {"id": str(record["id"]), "path": str(record.get("path") or ""),
           "reason": str(record["reason"]), "detail": str(record.get("detail") or "")}
    for key in sorted(set(record) - set(out)):      # extra fields are kept, JSON-checked
        out[key] = json.loads(_canonical_json(record[key]))
    return out


def _failure_key(record: dict):
    return (record["id"], record["reason"], record["path"], record["detail"], _canonical_json(record))


# ----------------------------------------------------------------------------- writing a shard

class ShardWriter:
    """Writes one shard; a context manager. One process writes one shard.

    with ShardWriter(path, "zarr", capacity=64, frames=48, dim=25088, dtype="float16") as w:
        w.append(id, label, features [T, D], envelope [T], length)
        w.add_failure({"id": ..., "path": ..., "reason": ..., "detail": ...})

    Data goes to `path.name + ".tmp-<pid>"` in the same directory. On a clean exit the arrays are
    cut to the appended count, the failures are stored in the shard's attributes, everything is
    fsynced and the temp is renamed to `path`. On an exception the temp is removed and nothing
    appears at `path`. Identical calls give byte-identical shards.
    """

    def __init__(self, path: Path, fmt: str, capacity: int, frames: int, dim: int, dtype: str = "float16"):
        self.path = Path(path)
        self.fmt = _check_fmt(fmt)
        self.dtype = _check_dtype(dtype)
        if capacity < 0 or frames < 1 or dim < 1:
            raise ValueError(f"need capacity >= 0, frames >= 1, dim >= 1; got {capacity}, {frames}, {dim}")
        self.capacity, self.frames, self.dim = int(capacity), int(frames), int(dim)
        self.tmp = _temp_name(self.path)
        self.count = 0
        self._ids: list[str] = []
        self._labels: list[str] = []
        self._lengths: list[int] = []
        self._failures: list[dict] = []
        self._store = None        # zarr group or h5py.File while open
        self._features = None
        self._envelope = None

    # -- context manager
    def __enter__(self) -> "ShardWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _remove(self.tmp)
        rows = max(self.capacity, 1)     # zarr/hdf5 chunks need a non-empty shape to start from
        if self.fmt == "zarr":
            import zarr
            from zarr.codecs import ZstdCodec
            zstd = ZstdCodec(level=ZSTD_LEVEL, checksum=ZSTD_CHECKSUM)
            self._store = zarr.open_group(self.tmp, mode="w", zarr_format=3)
            self._features = self._store.create_array(
                "features", shape=(rows, self.frames, self.dim), chunks=(1, self.frames, self.dim),
                dtype=self.dtype, compressors=zstd, fill_value=MISSING_FILL)
            self._envelope = self._store.create_array(
                "envelope", shape=(rows, self.frames), chunks=(1, self.frames),
                dtype="float32", compressors=zstd, fill_value=MISSING_FILL)
        else:
            import h5py
            self._store = h5py.File(self.tmp, "w")
            self._features = self._store.create_dataset(
                "features", shape=(rows, self.frames, self.dim), maxshape=(rows, self.frames, self.dim),
                chunks=(1, self.frames, self.dim), dtype=self.dtype, compression="gzip",
                compression_opts=HDF5_GZIP_LEVEL, track_times=False, fillvalue=MISSING_FILL)
            self._envelope = self._store.create_dataset(
                "envelope", shape=(rows, self.frames), maxshape=(rows, self.frames),
                chunks=(1, self.frames), dtype="float32", compression="gzip",
                compression_opts=HDF5_GZIP_LEVEL, track_times=False, fillvalue=MISSING_FILL)
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self._finish()
            except BaseException:
                self._abort()
                raise
        else:
            self._abort()
        return False

    # -- data
    def append(self, id: str, label: str, features: np.ndarray, envelope: np.ndarray, length: int):
        """Add one clip. features [T, D] any float (cast to the shard dtype), envelope [T] (float32),
        length = real frames (<= T; the rest is padding)."""
        if self._store is None:
            raise RuntimeError("ShardWriter.append outside its `with` block")
        if self.count >= self.capacity:
            raise ValueError(f"{self.path.name}: more than capacity={self.capacity} clips appended")
        features = np.asarray(features)
        envelope = np.asarray(envelope, dtype=np.float32)
        if features.shape != (self.frames, self.dim):
            raise ValueError(f"clip {id}: features {features.shape}, expected [T, D] = {(self.frames, self.dim)}")
        if envelope.shape != (self.frames,):
            raise ValueError(f"clip {id}: envelope {envelope.shape}, expected [T] = ({self.frames},)")
        if not 0 <= int(length) <= self.frames:
            raise ValueError(f"clip {id}: length {length} outside [0, {self.frames}]")
        with np.errstate(over="ignore", invalid="ignore"):     # overflow is reported just below
            stored = features.astype(self.dtype, copy=False)
        if not np.isfinite(stored).all():
            hint = " (float16 holds at most 65504: use --dtype float32)" if np.isfinite(features).all() else ""
            raise FoleyError(f"clip {id}: features contain inf/nan after casting to {self.dtype}{hint}")
        self._features[self.count] = stored
        self._envelope[self.count] = envelope
        self._ids.append(str(id))
        self._labels.append(str(label))
        self._lengths.append(int(length))
        self.count += 1

    def add_failure(self, record: dict):
        """Record a faulty video {id, path, reason, detail}; stored inside the shard."""
        self._failures.append(_normalise_failure(record))

    # -- closing
    def _attrs(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "count": self.count, "frames": self.frames,
                "dim": self.dim, "dtype": self.dtype,
                # sorted, so the shard's bytes do not depend on the order failures arrived in
                "failures": sorted(self._failures, key=_failure_key)}

    def _finish(self):
        n = self.count
        ids = np.array(self._ids, dtype=object).reshape(n)
        labels = np.array(self._labels, dtype=object).reshape(n)
        lengths = np.array(self._lengths, dtype=np.int32).reshape(n)
        if self.fmt == "zarr":
            from zarr.codecs import ZstdCodec
            zstd = ZstdCodec(level=ZSTD_LEVEL, checksum=ZSTD_CHECKSUM)
            self._features.resize((n, self.frames, self.dim))
            self._envelope.resize((n, self.frames))
            # Per-clip scalars are tiny: one chunk each (a read of the shard's index is one file).
            for name, data, dtype in (("length", lengths, "int32"), ("id", ids, str), ("label", labels, str)):
                arr = self._store.create_array(name, shape=(n,), chunks=(max(n, 1),), dtype=dtype,
                                               compressors=zstd)
                if n:
                    arr[:] = data
            self._store.attrs.update(self._attrs())
        else:
            import h5py
            self._features.resize((n, self.frames, self.dim))
            self._envelope.resize((n, self.frames))
            # fletcher32: a flipped byte in `length` is a read error, not a wrong length (zarr's zstd
            # frames carry their own checksum). HDF5 cannot filter variable-length strings: a damaged
            # id/label is found by verify's sha256.
            check = {"chunks": (n,), "fletcher32": True} if n else {}
            self._store.create_dataset("length", data=lengths, track_times=False, **check)
            for name, data in (("id", ids), ("label", labels)):
                self._store.create_dataset(name, shape=(n,), data=data if n else None,
                                           dtype=h5py.string_dtype("utf-8"), track_times=False)
            attrs = self._attrs()
            attrs["failures"] = json.dumps(attrs["failures"], sort_keys=True)   # HDF5 attrs are flat
            for key, value in attrs.items():
                self._store.attrs[key] = value
            self._store.flush()
            self._store.close()
        self._store = None
        _fsync_tree(self.tmp)
        if self.path.exists():          # re-writing a finished shard: move the old one aside first
            old = self.path.with_name(self.path.name + f".old-{os.getpid()}")
            os.replace(self.path, old)
            _remove(old)
        os.replace(self.tmp, self.path)
        _fsync_dir(self.path.parent)

    def _abort(self):
        if self.fmt == "hdf5" and self._store is not None:
            try:
                self._store.close()
            except Exception:       # closing a half-written file may fail too; it is deleted anyway
                pass
        self._store = None
        _remove(self.tmp)


# ----------------------------------------------------------------------------- reading a shard

def _open_shard(path: Path):
    """Open a shard read-only: a zarr Group or an h5py File (raises FoleyError naming it)."""
    try:
        if _fmt_of(path.name) == "zarr":
            import zarr
            return zarr.open_group(path, mode="r", zarr_format=3)
        import h5py
        return h5py.File(path, "r")
    except FoleyError:
        raise
    except Exception as e:          # any decode/IO error becomes one line that names the file
        raise FoleyError(f"cannot open shard {path}: {type(e).__name__}: {e}") from e


def _shard_attrs(store) -> dict:
    attrs = dict(store.attrs)
    if isinstance(attrs.get("failures"), (str, bytes)):
        attrs["failures"] = json.loads(attrs["failures"])
    for key in ("schema_version", "count", "frames", "dim"):
        attrs[key] = int(attrs[key])
    attrs["dtype"] = str(attrs["dtype"])
    return attrs


def _read_strings(store, name: str) -> list[str]:
    arr = store[name]
    if hasattr(arr, "asstr"):       # h5py
        return [str(s) for s in arr.asstr()[:]]
    return [str(s) for s in arr[:]]


def _read_shard_meta(path: Path) -> dict:
    """Attributes + small per-clip arrays of a shard (not the features)."""
    store = _open_shard(path)
    try:
        attrs = _shard_attrs(store)
        meta = {"attrs": attrs, "id": _read_strings(store, "id"), "label": _read_strings(store, "label"),
                "length": np.asarray(store["length"][:], dtype=np.int32),
                "envelope": np.asarray(store["envelope"][:], dtype=np.float32)}
        n = attrs["count"]
        shapes = {"features": tuple(store["features"].shape), "envelope": meta["envelope"].shape,
                  "length": meta["length"].shape, "id": (len(meta["id"]),), "label": (len(meta["label"]),)}
        expected = {"features": (n, attrs["frames"], attrs["dim"]), "envelope": (n, attrs["frames"]),
                    "length": (n,), "id": (n,), "label": (n,)}
        for key in expected:
            if shapes[key] != expected[key]:
                raise FoleyError(f"shard {path}: {key} has shape {shapes[key]}, expected {expected[key]}")
        bad = (meta["length"] < 1) | (meta["length"] > attrs["frames"])
        if bad.any():
            raise FoleyError(f"shard {path}: length {int(meta['length'][bad][0])} is outside 1..{attrs['frames']} "
                             "(damaged); run `foleycache cache-info --verify`")
        if np.dtype(store["features"].dtype).name != attrs["dtype"]:
            raise FoleyError(f"shard {path}: features are {store['features'].dtype}, attributes say {attrs['dtype']}")
        return meta
    except FoleyError:
        raise
    except Exception as e:
        raise FoleyError(f"cannot read shard {path}: {type(e).__name__}: {e}") from e
    finally:
        if hasattr(store, "close"):
            store.close()


def _zarr_read_clips(arr, local) -> np.ndarray:
    """arr[local] for a zarr array chunked one clip per chunk, fetching and decoding the chunks
    concurrently: measured 2.5 ms/clip for 8 clips [48, 25088] float16, against 4.5 (a loop of
    arr[i]) and 6 (arr.oindex[local], whose orthogonal-indexing path is slower here)."""
    try:
        import asyncio
        from zarr.core.sync import sync      # zarr's own event loop (zarr 3.x)
    except ImportError:
        return np.stack([np.asarray(arr[int(i)]) for i in local])
    aarr = arr.async_array

    async def gather():
        return await asyncio.gather(*(aarr.getitem(slice(int(i), int(i) + 1)) for i in local))
    parts = sync(gather())
    return np.concatenate([np.asarray(p) for p in parts]) if parts else \
        np.empty((0, *arr.shape[1:]), dtype=arr.dtype)


# ----------------------------------------------------------------------------- building a cache

def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FoleyError(f"{path} is corrupt ({type(e).__name__}: {e}); "
                         "re-run extract-features with --overwrite to rebuild the cache") from e
    if not isinstance(data, dict):
        raise FoleyError(f"{path} is corrupt (not a JSON object)")
    return data


def _existing_record(cache_dir: Path) -> dict | None:
    """The cache's own record: cache.json if finished, else progress.json, else None."""
    for name in (CACHE_JSON, PROGRESS_JSON):
        path = cache_dir / name
        if path.exists():
            data = _read_json(path)
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
    return [] if _canonical_json(a) == _canonical_json(b) else [prefix.rstrip(".") or "(config)"]


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
                _remove(p)
                removed.append(p)
    return removed


def begin_cache(cache_dir, fingerprint: str, config: dict, n_shards: int, overwrite: bool = False,
                *, fmt: str | None = None) -> list[int]:
    """Create or resume a cache; returns the shard indices still to write.

    Records {fingerprint, config, n_shards, format} in CACHE_DIR/progress.json (atomically).
    An existing cache with another fingerprint (or shard count, or format) is refused unless
    `overwrite`, which first empties the directory; a non-empty directory that is not a foleycache
    cache is never wiped. Stale temporaries of killed writers are removed. Call it from one process
    (torchrun rank 0) and let the others wait for it; they can use `pending_shards`.
    """
    cache_dir = Path(cache_dir)
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    if fmt is not None:
        _check_fmt(fmt)
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

    if record is not None and not overwrite:
        old_n = len(record["shards"]) if record["_source"] == CACHE_JSON else record.get("n_shards")
        old_fmt = record.get("format")
        problem = None
        if record["fingerprint"] != fingerprint:
            keys = _diff_keys(record.get("config", {}), config) or ["(fingerprint only)"]
            problem = f"was built with another configuration (differs in: {', '.join(keys)})"
        elif old_n != n_shards:
            problem = f"has {old_n} shards, this run needs {n_shards} (the annotation list or --shard-size changed)"
        elif fmt is not None and old_fmt is not None and old_fmt != fmt:
            problem = f"was started with --format {old_fmt}, this run asks for {fmt}"
        if problem:
            raise FoleyError(f"the cache in {cache_dir} {problem}; pass --overwrite to replace it, "
                             "or choose another output directory")
    if overwrite and cache_dir.is_dir():
        for p in cache_dir.iterdir():
            _remove(p)
        record = None

    shards_dir = cache_dir / SHARDS_DIR
    shards_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(cache_dir)
    pending = pending_shards(cache_dir, n_shards)
    if fmt is not None:
        other = [p.name for i in range(n_shards) if (p := _existing_shard(shards_dir, i)) and _fmt_of(p.name) != fmt]
        if other:
            raise FoleyError(f"the cache in {cache_dir} holds {_fmt_of(other[0])} shards ({other[0]}), "
                             f"this run asks for {fmt}; pass --overwrite to replace it")

    if record is not None and record["_source"] == CACHE_JSON:
        if not pending:
            return []           # finished cache, same work: nothing to do
        # A shard went missing from a finished cache: it is unfinished again until finalize.
    progress = {"schema_version": SCHEMA_VERSION, "fingerprint": fingerprint,
                "config": record["config"] if record else config, "n_shards": n_shards,
                "format": fmt or (record or {}).get("format")}
    _atomic_write_text(cache_dir / PROGRESS_JSON, json.dumps(progress, indent=2, sort_keys=True) + "\n")
    if (cache_dir / CACHE_JSON).exists():
        (cache_dir / CACHE_JSON).unlink()
    return pending


def _index_checksum(index: dict) -> str:
    return hashlib.sha256(_canonical_json({k: v for k, v in index.items() if k != "checksum"})
                          .encode()).hexdigest()


def finalize_cache(cache_dir, progress: bool = False) -> dict:
    """Hash every shard, gather their failures into failures.jsonl, then write cache.json last
    (atomically) and drop progress.json. Returns the cache.json dict. All shards must exist.

    cache.json: {schema_version, fingerprint, config, format, dtype, frames, dim,
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
    formats = sorted({_fmt_of(p.name) for p in paths})
    if len(formats) > 1:
        raise FoleyError(f"cannot finalize {cache_dir}: mixed shard formats {formats}; re-extract with --overwrite")

    shards, failures, layout = [], [], None
    for path in tqdm(paths, desc="hashing shards", unit="shard", disable=not progress):
        store = _open_shard(path)
        try:
            attrs = _shard_attrs(store)
        except Exception as e:
            raise FoleyError(f"cannot read shard {path}: {type(e).__name__}: {e}") from e
        finally:
            if hasattr(store, "close"):
                store.close()
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
        "dtype": layout[2], "frames": layout[0], "dim": layout[1],
        "shards": shards,
        "counts": {"candidates": cached + len(failures), "cached": cached, "failed": len(failures),
                   "failed_by_reason": dict(sorted(by_reason.items()))},
    }
    index["checksum"] = _index_checksum(index)
    _atomic_write_text(cache_dir / FAILURES_JSONL,
                       "".join(json.dumps(f, sort_keys=True, ensure_ascii=False) + "\n" for f in failures))
    _atomic_write_text(cache_dir / CACHE_JSON, json.dumps(index, indent=2) + "\n")
    if (cache_dir / PROGRESS_JSON).exists():
        (cache_dir / PROGRESS_JSON).unlink()
        _fsync_dir(cache_dir)
    return index


def write_cache(cache_dir, ids: Sequence[str], labels: Sequence[str], features: np.ndarray,
                envelopes: np.ndarray, lengths: Sequence[int], *, fmt: str = "zarr", dtype: str = "float16",
                shard_size: int = 64, config: dict | None = None, failures: Iterable[dict] = (),
                overwrite: bool = False) -> "FeatureCache":
    """Build a complete cache from arrays through the normal writer path (tests, benchmarks).

    features [N, T, D], envelopes [N, T], lengths [N]; `failures` go into the first shard.
    """
    features = np.asarray(features)
    envelopes = np.asarray(envelopes, dtype=np.float32)
    n, frames, dim = features.shape
    config = dict(config or {})
    fp = fingerprint({"config": config, "dtype": _check_dtype(dtype), "frames": frames, "dim": dim})
    n_shards = max(1, -(-n // shard_size))
    todo = begin_cache(cache_dir, fp, config, n_shards, overwrite=overwrite, fmt=fmt)
    failures = list(failures)
    shards_dir = Path(cache_dir) / SHARDS_DIR
    for k in todo:
        lo, hi = k * shard_size, min(n, (k + 1) * shard_size)
        with ShardWriter(shards_dir / shard_name(k, fmt), fmt, capacity=hi - lo, frames=frames,
                         dim=dim, dtype=dtype) as w:
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
        index = _read_json(index_path)
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
            self.format: str = _check_fmt(index["format"])
            self.dtype: str = _check_dtype(index["dtype"])
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
        for store, _ in self._handles.values():
            if hasattr(store, "close"):
                store.close()
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
    def _features_array(self, k: int):
        """Shard k's `features` array (zarr Array or h5py Dataset), opened once per process."""
        if self._pid != os.getpid():            # forked: the parent's handles are not ours
            self._handles = OrderedDict()
            self._pid = os.getpid()
        if k in self._handles:
            self._handles.move_to_end(k)
            return self._handles[k][1]
        store = _open_shard(self.shard_path(k))
        self._handles[k] = (store, store["features"])
        if len(self._handles) > MAX_OPEN_SHARDS:
            _, (old, _) = self._handles.popitem(last=False)
            if hasattr(old, "close"):
                old.close()
        return self._handles[k][1]

    def _shard_meta(self, k: int) -> dict:
        if k not in self._meta:
            meta = _read_shard_meta(self.shard_path(k))
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

    def _read_features(self, k: int, local) -> np.ndarray:
        """features [len(local), T, D] for sorted unique local indices (or a slice) of shard k."""
        try:
            arr = self._features_array(k)
            if isinstance(local, slice):
                out = np.asarray(arr[local])
            elif hasattr(arr, "async_array"):     # zarr
                out = _zarr_read_clips(arr, local)
            else:
                out = np.empty((len(local), self.frames, self.dim), dtype=self.dtype)
                for j, i in enumerate(local):       # one chunk per clip: read each straight into place
                    arr.read_direct(out, source_sel=np.s_[int(i)], dest_sel=np.s_[j])
            lost = np.isnan(out.reshape(out.shape[0], -1)[:, 0]) if out.size else np.zeros(0, bool)
            if lost.any():                      # one clip per chunk: a lost chunk is a NaN clip
                raise FoleyError(f"shard {self.shard_path(k)} has lost the features of {int(lost.sum())} clip(s) "
                                 "(chunk files missing); run `foleycache cache-info --verify`")
            return out
        except FoleyError:
            raise
        except Exception as e:
            raise FoleyError(f"cannot read features from shard {self.shard_path(k)}: "
                             f"{type(e).__name__}: {e}") from e

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

    def read_many(self, indices) -> dict:
        """Clips at arbitrary global indices (any order, repeats allowed), read shard by shard.
        Returns the read_shard dict in the order of `indices`."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"clip indices out of range for a cache of {n} clips")
        idx = idx % n if n else idx
        out = {"features": np.empty((idx.size, self.frames, self.dim), dtype=self.dtype),
               "envelope": np.empty((idx.size, self.frames), dtype=np.float32),
               "length": np.empty(idx.size, dtype=np.int32),
               "id": [""] * idx.size, "label": [""] * idx.size}
        shard_of = np.searchsorted(self._offsets, idx, side="right") - 1
        for k in np.unique(shard_of):
            pos = np.nonzero(shard_of == k)[0]
            local, inverse = np.unique(idx[pos] - self._offsets[k], return_inverse=True)
            meta = self._shard_meta(int(k))
            out["features"][pos] = self._read_features(int(k), local)[inverse]
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
    shard_bytes = sum(_disk_bytes(cache.shard_path(k)) for k in range(cache.n_shards) if cache.shard_path(k).exists())
    size = _disk_bytes(cache.path)
    n = len(cache)
    f32 = cache.frames * (cache.dim + 1) * 4
    per_clip = shard_bytes / n if n else 0.0
    info = {
        "path": str(cache.path), "schema_version": SCHEMA_VERSION, "fingerprint": cache.fingerprint,
        "format": cache.format, "dtype": cache.dtype, "clips": n, "shards": cache.n_shards,
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
        f"{info['format']} shards",
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
