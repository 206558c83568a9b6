"""Shards: one cache shard written whole or not at all, and read back.

A shard is one HDF5 file (`shard-00003.h5`) or one Zarr v3 directory (`shard-00003.zarr`) holding
`features` [n, T, D] float16 (or float32), `envelope` [n, T] float32, `length` [n] int32, `id` [n]
str and `label` [n] str, chunked one clip per chunk; its own failures ride in its attributes, so a
finished shard is self-contained. Writing follows mosaicml/streaming: a `ShardWriter` writes one
shard under a temporary name (`fsio.temp_name`) and renames it when complete. Identical calls give
byte-identical shards (no timestamps; failures sorted).

This module owns the shard: its names, its two storage formats (`_ZarrFormat`, `_Hdf5Format`) and
their codecs (`--compression`), its digest (`shard_sha256`) and reading its small metadata (its
clips are read by `pipeline.chunks`, straight into training's batches). It must not know about the
cache index (cache.json), fingerprints or extraction (`pipeline.cache` and `pipeline.extract` do);
it imports only `pipeline.fsio` and `pipeline.errors`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np

from pipeline.errors import FoleyError
from pipeline.fsio import HASH_BLOCK, fsync_dir, fsync_file, sha256_file, temp_name

SCHEMA_VERSION = 1          # of the cache as a whole; every shard records it in its attributes

FORMATS = {"zarr": ".zarr", "hdf5": ".h5"}      # --format name -> shard suffix
DTYPES = ("float16", "float32")                 # feature storage dtypes
# Fill value of features/envelope: a chunk missing on disk reads as this, never as plausible zeros
# (ReLU features and [0, 1] envelopes are never NaN; zarr also skips writing all-fill chunks, which
# with a 0 fill would make an all-zero clip indistinguishable from a lost one).
MISSING_FILL = float("nan")

# Compression of the features (`--compression`; ratio = stored bytes / float32 bytes, decode speed;
# `benchmarks/run.py` measures both per codec on real features, README "Storage and read speed"):
#   lz4   Blosc lz4hc + byte shuffle + crc32c  ~0.3x, decodes ~2-2.5 GB/s (the default: reads keep up
#         with one float32 .npy per video while taking about a third of its disk)
#   zstd  zstd-1 with its frame checksum       ~0.3x, decodes ~0.6 GB/s (every Zarr reader has it)
#   none  raw float16                           0.5x, no decoding
# HDF5 uses gzip (every HDF5 reader has it; lz4/zstd would need hdf5plugin) or none.
COMPRESSIONS = ("lz4", "zstd", "none")          # --compression choices for Zarr shards
HDF5_COMPRESSIONS = ("gzip", "none")
DEFAULT_COMPRESSION = {"zarr": "lz4", "hdf5": "gzip"}
LEGACY_COMPRESSION = {"zarr": "zstd", "hdf5": "gzip"}  # caches whose cache.json has no "compression"
ZSTD_LEVEL = 1
ZSTD_CHECKSUM = True        # a damaged chunk fails to decode instead of reading back wrong numbers
LZ4HC_LEVEL = 5             # lz4hc 3: larger; 9: a few % smaller, encodes ~5x slower (extraction)
HDF5_GZIP_LEVEL = 1

SHARD_RE = re.compile(r"^shard-(\d{5})(\.zarr|\.h5)$")
TEMP_RE = re.compile(r"\.tmp-(\d+)$")


# ----------------------------------------------------------------------------- names and small helpers

def canonical_json(obj) -> str:
    """Sorted keys, no spaces, ASCII, no NaN; Path and numpy scalars as str / Python numbers.
    The one serialisation that hashes (fingerprints, index checksums) and failure records use."""
    def default(o):
        if isinstance(o, Path):
            return str(o)
        if isinstance(o, np.generic):
            return o.item()
        raise TypeError(f"not JSON-serialisable in a cache config: {type(o).__name__} {o!r}")
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False, default=default)


def check_fmt(fmt: str) -> str:
    if fmt not in FORMATS:
        raise FoleyError(f"unknown cache format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    return fmt


def check_dtype(dtype) -> str:
    name = np.dtype(dtype).name
    if name not in DTYPES:
        raise FoleyError(f"unsupported feature dtype {name!r}; choose one of: {', '.join(DTYPES)}")
    return name


def check_compression(fmt: str, compression: str | None) -> str:
    """The features' codec of a shard of format `fmt`: `compression`, or the format's default (None)."""
    allowed = HDF5_COMPRESSIONS if check_fmt(fmt) == "hdf5" else COMPRESSIONS
    if compression is None:
        return DEFAULT_COMPRESSION[fmt]
    if compression not in allowed:
        raise FoleyError(f"--compression {compression!r} does not apply to --format {fmt}; "
                         f"choose one of: {', '.join(allowed)}")
    return compression


def shard_name(index: int, fmt: str) -> str:
    """File name of shard `index`: "shard-00003.zarr" (fmt "zarr") or "shard-00003.h5" ("hdf5")."""
    return f"shard-{index:05d}{FORMATS[check_fmt(fmt)]}"


def fmt_of(name: str) -> str:
    """The format of a shard file name ("zarr" or "hdf5")."""
    suffix = Path(name).suffix
    for fmt, s in FORMATS.items():
        if s == suffix:
            return fmt
    raise FoleyError(f"{name}: not a shard name (expected shard-NNNNN.zarr or shard-NNNNN.h5)")


def remove_path(path: Path):
    """Remove a file, a link or a directory tree (a Zarr shard) if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


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


def disk_bytes(path: Path) -> int:
    """Bytes on disk of a file, or of every file under a directory."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _fsync_tree(path: Path):
    """fsync a file, or every file and directory under a Zarr directory, before the rename."""
    if path.is_file():
        fsync_file(path)
        return
    for root, _, files in os.walk(path):
        for name in files:
            fsync_file(Path(root) / name)
        fsync_dir(Path(root))


def _normalise_failure(record: dict) -> dict:
    if "id" not in record or "reason" not in record:
        raise ValueError(f"a failure record needs at least 'id' and 'reason', got {sorted(record)}")
    out = {"id": str(record["id"]), "path": str(record.get("path") or ""),
           "reason": str(record["reason"]), "detail": str(record.get("detail") or "")}
    for key in sorted(set(record) - set(out)):      # extra fields are kept, JSON-checked
        out[key] = json.loads(canonical_json(record[key]))
    return out


def _failure_key(record: dict):
    return (record["id"], record["reason"], record["path"], record["detail"], canonical_json(record))


# ----------------------------------------------------------------------------- the two formats

class _ZarrFormat:
    """Zarr v3 directory; zstd frames carry their own checksum."""

    @staticmethod
    def _zstd():
        from zarr.codecs import ZstdCodec
        return ZstdCodec(level=ZSTD_LEVEL, checksum=ZSTD_CHECKSUM)

    @classmethod
    def _features_codecs(cls, compression: str, dtype: str) -> list:
        from zarr.codecs import BloscCodec, Crc32cCodec
        if compression == "lz4":        # Blosc has no checksum of its own: crc32c after it
            return [BloscCodec(cname="lz4hc", clevel=LZ4HC_LEVEL, shuffle="shuffle",
                               typesize=np.dtype(dtype).itemsize), Crc32cCodec()]
        return [cls._zstd()] if compression == "zstd" else []

    def create(self, tmp: Path, rows: int, frames: int, dim: int, dtype: str, compression: str):
        """(store, features [rows, T, D], envelope [rows, T]) of a new shard at `tmp`."""
        import zarr
        store = zarr.open_group(tmp, mode="w", zarr_format=3)
        features = store.create_array("features", shape=(rows, frames, dim), chunks=(1, frames, dim),
                                      dtype=dtype, compressors=self._features_codecs(compression, dtype),
                                      fill_value=MISSING_FILL)
        envelope = store.create_array("envelope", shape=(rows, frames), chunks=(1, frames),
                                      dtype="float32", compressors=self._zstd(), fill_value=MISSING_FILL)
        return store, features, envelope

    def finish(self, store, n: int, lengths: np.ndarray, ids: np.ndarray, labels: np.ndarray, attrs: dict):
        """Store the per-clip scalars and the attributes (features/envelope already cut to n)."""
        zstd = self._zstd()
        # Per-clip scalars are tiny: one chunk each (a read of the shard's index is one file).
        for name, data, dtype in (("length", lengths, "int32"), ("id", ids, str), ("label", labels, str)):
            arr = store.create_array(name, shape=(n,), chunks=(max(n, 1),), dtype=dtype, compressors=zstd)
            if n:
                arr[:] = data
        store.attrs.update(attrs)

    def close(self, store):
        pass                    # a zarr group holds no open file

    def open(self, path: Path):
        import zarr
        return zarr.open_group(path, mode="r", zarr_format=3)


class _Hdf5Format:
    """One HDF5 file, gzip-compressed chunks; no timestamps, so identical calls give identical bytes."""

    def create(self, tmp: Path, rows: int, frames: int, dim: int, dtype: str, compression: str):
        import h5py
        store = h5py.File(tmp, "w")
        gzip = {"compression": "gzip", "compression_opts": HDF5_GZIP_LEVEL, "track_times": False,
                "fillvalue": MISSING_FILL}
        plain = {"track_times": False, "fillvalue": MISSING_FILL}
        features = store.create_dataset("features", shape=(rows, frames, dim), maxshape=(rows, frames, dim),
                                        chunks=(1, frames, dim), dtype=dtype,
                                        **(gzip if compression == "gzip" else plain))
        envelope = store.create_dataset("envelope", shape=(rows, frames), maxshape=(rows, frames),
                                        chunks=(1, frames), dtype="float32", **gzip)
        return store, features, envelope

    def finish(self, store, n: int, lengths: np.ndarray, ids: np.ndarray, labels: np.ndarray, attrs: dict):
        import h5py
        # fletcher32: a flipped byte in `length` is a read error, not a wrong length (zarr's zstd
        # frames carry their own checksum). HDF5 cannot filter variable-length strings: a damaged
        # id/label is found by verify's sha256.
        check = {"chunks": (n,), "fletcher32": True} if n else {}
        store.create_dataset("length", data=lengths, track_times=False, **check)
        for name, data in (("id", ids), ("label", labels)):
            store.create_dataset(name, shape=(n,), data=data if n else None,
                                 dtype=h5py.string_dtype("utf-8"), track_times=False)
        attrs = dict(attrs, failures=json.dumps(attrs["failures"], sort_keys=True))   # HDF5 attrs are flat
        for key, value in attrs.items():
            store.attrs[key] = value
        store.flush()
        store.close()

    def close(self, store):
        try:
            store.close()
        except Exception:       # closing a half-written file may fail too; it is deleted anyway
            pass

    def open(self, path: Path):
        import h5py
        return h5py.File(path, "r")


_BACKENDS = {"zarr": _ZarrFormat(), "hdf5": _Hdf5Format()}


# ----------------------------------------------------------------------------- writing a shard

class ShardWriter:
    """Writes one shard. One process writes one shard.

    w = ShardWriter(path, "zarr", capacity=64, frames=48, dim=25088, dtype="float16", compression="lz4").open()
    w.append(id, label, features [T, D], envelope [T], length)
    w.add_failure({"id": ..., "path": ..., "reason": ..., "detail": ...})
    w.commit()          # or w.abort()

    or as a context manager (`with` commits on success, aborts on an exception):
    with ShardWriter(path, ...) as w: ...

    Data goes to `path.name + ".tmp-<pid>"` in the same directory. `commit` cuts the arrays to the
    appended count, stores the failures in the shard's attributes, fsyncs everything and renames the
    temp to `path`; if any of that fails the temp is removed. `abort` removes the temp; nothing
    appears at `path` (aborting a committed writer does nothing).
    """

    def __init__(self, path: Path, fmt: str, capacity: int, frames: int, dim: int, dtype: str = "float16",
                 compression: str | None = None):
        """compression: the features' codec (COMPRESSIONS; HDF5: gzip or none); None = the format's default."""
        self.path = Path(path)
        self.fmt = check_fmt(fmt)
        self.dtype = check_dtype(dtype)
        self.compression = check_compression(self.fmt, compression)
        if capacity < 0 or frames < 1 or dim < 1:
            raise ValueError(f"need capacity >= 0, frames >= 1, dim >= 1; got {capacity}, {frames}, {dim}")
        self.capacity, self.frames, self.dim = int(capacity), int(frames), int(dim)
        self.tmp = temp_name(self.path)
        self.count = 0
        self._backend = _BACKENDS[self.fmt]
        self._ids: list[str] = []
        self._labels: list[str] = []
        self._lengths: list[int] = []
        self._failures: list[dict] = []
        self._store = None        # zarr group or h5py.File while open
        self._features = None
        self._envelope = None

    def open(self) -> "ShardWriter":
        """Create the temporary shard (replacing a leftover of this pid). Returns self."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_path(self.tmp)
        rows = max(self.capacity, 1)     # zarr/hdf5 chunks need a non-empty shape to start from
        self._store, self._features, self._envelope = self._backend.create(
            self.tmp, rows, self.frames, self.dim, self.dtype, self.compression)
        return self

    def __enter__(self) -> "ShardWriter":
        return self.open()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.abort()
        return False

    # -- data
    def append(self, id: str, label: str, features: np.ndarray, envelope: np.ndarray, length: int):
        """Add one clip. features [T, D] any float (cast to the shard dtype), envelope [T] (float32),
        length = real frames (<= T; the rest is padding)."""
        if self._store is None:
            raise RuntimeError("ShardWriter.append before open() (or outside its `with` block)")
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

    def commit(self):
        """Finish the shard and rename it to `path` (fsynced); on any error, abort and re-raise."""
        try:
            self._finish()
        except BaseException:
            self.abort()
            raise

    def _finish(self):
        n = self.count
        ids = np.array(self._ids, dtype=object).reshape(n)
        labels = np.array(self._labels, dtype=object).reshape(n)
        lengths = np.array(self._lengths, dtype=np.int32).reshape(n)
        self._features.resize((n, self.frames, self.dim))
        self._envelope.resize((n, self.frames))
        self._backend.finish(self._store, n, lengths, ids, labels, self._attrs())
        self._store = None
        _fsync_tree(self.tmp)
        if self.path.exists():          # re-writing a finished shard: move the old one aside first
            old = self.path.with_name(self.path.name + f".old-{os.getpid()}")
            os.replace(self.path, old)
            remove_path(old)
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)

    def abort(self):
        """Drop the temporary shard; `path` is left as it was."""
        if self._store is not None:
            self._backend.close(self._store)
        self._store = None
        remove_path(self.tmp)


# ----------------------------------------------------------------------------- reading a shard

def open_shard(path: Path):
    """Open a shard read-only: a zarr Group or an h5py File (raises FoleyError naming it)."""
    try:
        return _BACKENDS[fmt_of(path.name)].open(path)
    except FoleyError:
        raise
    except Exception as e:          # any decode/IO error becomes one line that names the file
        raise FoleyError(f"cannot open shard {path}: {type(e).__name__}: {e}") from e


def close_shard(store):
    if hasattr(store, "close"):
        store.close()


def shard_attrs(store) -> dict:
    """A shard's attributes: schema_version, count, frames, dim (ints), dtype, failures (list)."""
    attrs = dict(store.attrs)
    if isinstance(attrs.get("failures"), (str, bytes)):
        attrs["failures"] = json.loads(attrs["failures"])
    for key in ("schema_version", "count", "frames", "dim"):
        attrs[key] = int(attrs[key])
    attrs["dtype"] = str(attrs["dtype"])
    return attrs


def read_shard_attrs(path: Path) -> dict:
    """`shard_attrs` of the shard at `path` (FoleyError naming it when unreadable)."""
    store = open_shard(path)
    try:
        return shard_attrs(store)
    except Exception as e:
        raise FoleyError(f"cannot read shard {path}: {type(e).__name__}: {e}") from e
    finally:
        close_shard(store)


def _read_strings(store, name: str) -> list[str]:
    arr = store[name]
    if hasattr(arr, "asstr"):       # h5py
        return [str(s) for s in arr.asstr()[:]]
    return [str(s) for s in arr[:]]


def _check_meta(path: Path, store, meta: dict):
    attrs = meta["attrs"]
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


def read_shard_meta(path: Path) -> dict:
    """Attributes + small per-clip arrays of a shard (not the features), checked against each
    other: {"attrs", "id" [n], "label" [n], "length" [n] int32, "envelope" [n, T] float32}."""
    store = open_shard(path)
    try:
        meta = {"attrs": shard_attrs(store), "id": _read_strings(store, "id"),
                "label": _read_strings(store, "label"),
                "length": np.asarray(store["length"][:], dtype=np.int32),
                "envelope": np.asarray(store["envelope"][:], dtype=np.float32)}
        _check_meta(path, store, meta)
        return meta
    except FoleyError:
        raise
    except Exception as e:
        raise FoleyError(f"cannot read shard {path}: {type(e).__name__}: {e}") from e
    finally:
        close_shard(store)
