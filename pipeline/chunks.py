"""Reading a shard's clips straight into a batch: one pass over the chunks the batch needs.

A shard stores one clip per chunk (`pipeline.shards`). Zarr's own read path costs ~1.2 ms of
machinery per call on top of decoding (reading the same chunk file directly: ~0.16 ms), so for the
codec chains foleycache writes this module reads a Zarr v3 shard's chunk files itself and decodes
them with numcodecs (Blosc and zstd release the GIL), into a reused [T, D] scratch or straight into
the caller's batch row. The cast to the batch's dtype happens in the same copy (float16 -> float32
with torch's vectorised copy: numpy's cast is ~40x slower on AVX2).

Which chains are read directly (`_zarr_decoder`): `bytes` (little-endian), then nothing, `zstd` or
`blosc`, then optionally `crc32c` (checked). Anything else (an array written by another tool,
Zarr's sharding codec, another chunk layout) is read through zarr itself, slower but the same
numbers; HDF5 shards go through h5py's `read_direct`, one chunk per clip, which is already cheap
per call. A chunk file that is missing (zarr does not write chunks equal to the fill value, NaN)
raises FoleyError: a lost clip never reads back as numbers.

This module knows chunk files and codecs, nothing about caches or training (`pipeline.cache` calls
it; `benchmarks/train_head.py` measures it against one float32 `.npy` per video).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.errors import FoleyError

if TYPE_CHECKING:
    from torch import Tensor

DIRECT_CODECS = ("zstd", "blosc")       # bytes -> bytes codecs this module decodes itself


class LostChunk(FoleyError):
    """A clip's chunk file is missing (the shard was damaged after it was written)."""


def _crc32c_checked(data: np.ndarray) -> np.ndarray:
    """data (uint8) without its trailing crc32c (Zarr's `crc32c` codec: 4 bytes, little-endian), checked."""
    import google_crc32c

    body = data[:-4]
    if len(data) < 4 or google_crc32c.value(body) != int.from_bytes(data[-4:].tobytes(), "little"):
        raise ValueError("crc32c checksum mismatch (damaged chunk)")
    return body


def _zarr_decoder(meta: dict, dtype: np.dtype):
    """decode(chunk uint8 [size], target uint8 [nbytes]) that fills target exactly, for a codec chain this
    module reads directly; None for any other chain (the caller then reads through zarr); "raw"
    for chunks stored as plain bytes (read straight into the target)."""
    import numcodecs

    codecs = list(meta.get("codecs") or [])
    if not codecs or codecs[0].get("name") != "bytes" or not np.little_endian:
        return None
    if dtype.itemsize > 1 and (codecs[0].get("configuration") or {}).get("endian", "little") != "little":
        return None
    rest = codecs[1:]
    crc = bool(rest) and rest[-1].get("name") == "crc32c"
    rest = rest[:-1] if crc else rest
    if len(rest) > 1 or (rest and rest[0].get("name") not in DIRECT_CODECS):
        return None
    name = rest[0]["name"] if rest else None
    if name is None and not crc:
        return "raw"
    if name == "blosc":
        import numcodecs.blosc
        # Reader processes are one per core already: Blosc's own threads would only compete with them.
        numcodecs.blosc.use_threads = False
    codec = numcodecs.Zstd() if name == "zstd" else numcodecs.Blosc() if name == "blosc" else None

    def decode(data: np.ndarray, target: np.ndarray):
        body = _crc32c_checked(data) if crc else data
        if name == "blosc":             # self-describing: check its size, then decode in place
            if numcodecs.blosc._cbuffer_sizes(body)[0] != target.nbytes:
                raise ValueError(f"a chunk decodes to another size than [T, D] ({target.nbytes} bytes)")
            codec.decode(body, out=target)
            return
        # zstd (decoded to a new buffer: a frame shorter than the target would not fill it) or raw
        out = np.frombuffer(codec.decode(body) if codec is not None else body, np.uint8)
        if out.size != target.nbytes:
            raise ValueError(f"a chunk decodes to {out.size} bytes, [T, D] holds {target.nbytes}")
        np.copyto(target, out)
    return decode


def _chunk_key(meta: dict, shape: tuple) -> str | None:
    """The chunk file name pattern ("c/{}/0/0") of a one-clip-per-chunk array; None for another layout."""
    grid = meta.get("chunk_grid") or {}
    chunks = (grid.get("configuration") or {}).get("chunk_shape")
    if grid.get("name") != "regular" or list(chunks or []) != [1, *shape[1:]]:
        return None
    if meta.get("storage_transformers"):
        return None
    enc = meta.get("chunk_key_encoding") or {}
    if enc.get("name") != "default":
        return None
    sep = (enc.get("configuration") or {}).get("separator", "/")
    return sep.join(["c", "{}"] + ["0"] * (len(shape) - 1))


class _Rows:
    """What every reader shares: the [T, D] scratch a decoded clip lands in before its cast."""

    def __init__(self, shape: tuple, dtype):
        import torch                    # here: pipeline.cache (and cache-info) stay torch-free at import

        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.torch_dtype = getattr(torch, self.dtype.name)
        self._scratch: np.ndarray | None = None

    def _target(self, row: Tensor) -> np.ndarray:
        """Where clip bytes go: the batch row itself when it has the stored dtype, else the scratch."""
        if row.dtype == self.torch_dtype and row.is_contiguous():
            return row.numpy()
        if self._scratch is None:
            self._scratch = np.empty(self.shape[1:], self.dtype)
        return self._scratch

    def _finish(self, row: Tensor, target: np.ndarray):
        if target is self._scratch:
            import torch
            row.copy_(torch.from_numpy(target))         # the cast, in torch's vectorised copy

    def read_into(self, local: np.ndarray, out: Tensor, rows: np.ndarray):
        """out[rows[j]] = clip local[j] of this shard, for every j (clips read in ascending order)."""
        for j in np.argsort(local, kind="stable"):
            row = out[int(rows[j])]
            target = self._target(row)
            self._read_one(int(local[j]), target)
            self._finish(row, target)

    def _read_one(self, i: int, target: np.ndarray):
        raise NotImplementedError


class _ZarrChunkFiles(_Rows):
    """A Zarr v3 array's chunk files, read and decoded here."""

    def __init__(self, folder: Path, key: str, decode, shape: tuple, dtype):
        super().__init__(shape, dtype)
        self.folder, self.key, self.decode = Path(folder), key, decode
        self._file_buf: np.ndarray | None = None

    def _read_one(self, i: int, target: np.ndarray):
        path = self.folder / self.key.format(i)
        dest = target.reshape(-1).view(np.uint8)
        try:
            with open(path, "rb", buffering=0) as f:
                size = os.fstat(f.fileno()).st_size
                if self.decode == "raw":        # plain bytes: the file is the clip
                    if size != dest.nbytes or f.readinto(dest) != size:
                        raise ValueError(f"a chunk file holds {size} bytes, [T, D] holds {dest.nbytes}")
                    return
                # one reused buffer: a fresh one per chunk costs its page faults every time
                if self._file_buf is None or self._file_buf.size < size:
                    self._file_buf = np.empty(max(size, 1 << 20), np.uint8)
                data = self._file_buf[:size]
                if f.readinto(data) != size:
                    raise ValueError(f"short read of {path}")
        except FileNotFoundError:
            raise LostChunk(f"shard {self.folder.parent} has lost the features of clip {i} (chunk file "
                            f"{path.relative_to(self.folder.parent)} missing); run `foleycache cache-info --verify`")
        self.decode(data, dest)


class _ArrayRows(_Rows):
    """Any other array (zarr Array of another layout, h5py Dataset): one clip per library call."""

    def __init__(self, arr):
        super().__init__(arr.shape, arr.dtype)
        self.arr = arr

    def _read_one(self, i: int, target: np.ndarray):
        if hasattr(self.arr, "read_direct"):            # h5py: no intermediate array
            self.arr.read_direct(target, source_sel=np.s_[i])
        else:
            target[...] = self.arr[i]


def clip_reader(arr, folder: Path | None = None) -> _Rows:
    """A reader of one shard's `features` array (zarr Array or h5py Dataset) [n, T, D]:
    `reader.read_into(local [m], out [B, T, D] tensor, rows [m])`. folder: the array's directory
    (Zarr), which enables reading its chunk files directly when their codecs allow it."""
    if folder is not None and hasattr(arr, "metadata") and getattr(arr.metadata, "zarr_format", None) == 3:
        meta = arr.metadata.to_dict()
        key = _chunk_key(meta, arr.shape)
        decode = _zarr_decoder(meta, np.dtype(arr.dtype)) if key else None
        if decode is not None:
            return _ZarrChunkFiles(folder, key, decode, arr.shape, arr.dtype)
    return _ArrayRows(arr)
