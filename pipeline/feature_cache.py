"""Reading a finished feature cache: `FeatureCache` over cache.json and its shards, `cache_info`.

The directory's layout (docs/design.md, "The cache") is described in `pipeline.cache`, which builds
it; the file names and the index checksum are defined here, next to the reader that checks them, and
`pipeline.cache` imports them from here, so writer and reader cannot drift apart. What is inside one
shard belongs to `pipeline.shards`, decoding a shard's chunks into a batch to `pipeline.chunks`.
Callers import these names from `pipeline.cache`.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np

from pipeline.errors import FoleyError
from pipeline.fsio import read_json
from pipeline.chunks import LostChunk, clip_reader
from pipeline.shards import (LEGACY_COMPRESSION, SCHEMA_VERSION, SHARD_RE, canonical_json, check_dtype, check_fmt,
                             close_shard, disk_bytes, open_shard, read_shard_meta, shard_sha256)

CACHE_JSON = "cache.json"
FAILURES_JSONL = "failures.jsonl"
PROGRESS_JSON = "progress.json"
SHARDS_DIR = "shards"
MAX_OPEN_SHARDS = 64        # open shard files kept per process by FeatureCache (LRU)
CORRUPT_HINT = "it is corrupt: re-run extract-features with --overwrite to rebuild the cache"


def _read_record(path: Path) -> dict:
    """cache.json or progress.json as a dict (a one-line FoleyError that says "corrupt" otherwise)."""
    data = read_json(path, "cache index" if path.name == CACHE_JSON else "cache progress record", hint=CORRUPT_HINT)
    if not isinstance(data, dict):
        raise FoleyError(f"{path} is corrupt (not a JSON object)")
    return data


def _index_checksum(index: dict) -> str:
    return hashlib.sha256(canonical_json({k: v for k, v in index.items() if k != "checksum"})
                          .encode()).hexdigest()


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
