"""A feature cache as training batches: the epoch order, the reader processes and their
shared-memory lease ring, and preloading into RAM or GPU memory.

    batches = CacheBatches.from_cache(cache, transform, 16, shuffle=True, seed=0, preload="none",
                                      device=device, workers=runtime.reader_workers(1), dist=dist)
    batches.start_workers(); transform.fit(...); batches.prepare()
    batches.set_epoch(e); for b in batches: b["inputs"] [B, T, d], b["target"] [B, T], b["length"], b["index"]

The order of an epoch is `epoch_batches(seed, epoch)`: a function of those two only, so a resumed
run reads what the uninterrupted one read. `CacheBatches.from_tensors` wraps tensors already in
memory (benchmarks, tests) with the same order and iteration.

This module reads caches and hands over batches; it must not train, write files or choose
options (pipeline.train passes the preload mode and the worker count, runtime.reader_workers
gives the default). It resolves `preload="auto"` itself, because what decides it is what a preload
needs (memory) against what is free, which it already checks for "ram" and "gpu".
"""
from __future__ import annotations

import logging
import math
import os

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, get_worker_info

from pipeline.distributed import Distributed
from pipeline.errors import FoleyError
from pipeline.head import InputTransform
from pipeline.options import PRELOADS
from pipeline.runtime import available_ram_bytes

LOADER_PREFETCH = 4             # batches each loader worker reads ahead
LOADER_RING = LOADER_PREFETCH + 2   # reusable batch buffers per worker (read ahead + consumed + in the pin queue)
POOL_SHARDS = 4                 # shuffling mixes clips of this many shards (reads stay on few files)
PRELOAD_HEADROOM = 0.8          # preload only if it needs <= 80% of the free RAM / GPU memory
AUTO_PRELOAD_SHARE = 0.5        # --preload auto holds a cache only within half of it: the head, its
                                # optimizer, the other split's cache and the rest of the machine need room
TRANSFORM_CHUNK = 64            # clips transformed per step when preloaded features shrink once (prepare)

log = logging.getLogger("foleycache")


def epoch_batches(shard_sizes: list[int], batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
                  rank: int = 0, world_size: int = 1, pad: bool = True) -> list[np.ndarray]:
    """This rank's batches of global clip indices for one epoch; a function of (seed, epoch) only.

    shuffle=False: clips in cache order. shuffle=True: shards in a random order, taken POOL_SHARDS at
    a time, their clips shuffled together, so a batch touches a few shard files (batched reads)
    while the order changes every epoch. The batch list is cut round-robin over ranks; pad=True
    repeats the first batches so every rank gets the same count (DDP needs it; training only).
    """
    offsets = np.concatenate([[0], np.cumsum(shard_sizes)]).astype(np.int64)
    shards = [np.arange(offsets[k], offsets[k + 1]) for k in range(len(shard_sizes))]
    if shuffle:
        rng = np.random.default_rng([seed, epoch])
        shards = [shards[k] for k in rng.permutation(len(shards))]
        pools = [np.concatenate(shards[i:i + POOL_SHARDS]) for i in range(0, len(shards), POOL_SHARDS)]
        order = np.concatenate([rng.permutation(p) for p in pools]) if pools else np.zeros(0, np.int64)
    else:
        order = np.arange(offsets[-1])
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if pad and world_size > 1 and batches and len(batches) % world_size:
        extra = world_size - len(batches) % world_size
        batches += [batches[i % len(batches)] for i in range(extra)]
    return batches[rank::world_size]


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def _shared_empty(shape: tuple, dtype: torch.dtype) -> Tensor:
    """An uninitialised tensor in shared memory. `torch.empty(...).share_memory_()` would first
    allocate and then copy the garbage (about twice the time for a [16, 48, 25088] float16 batch)."""
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    try:
        storage = torch.UntypedStorage._new_shared(nbytes)
    except AttributeError:          # a torch without it: the public, slower way
        return torch.empty(shape, dtype=dtype).share_memory_()
    return torch.empty(0, dtype=dtype).set_(storage).view(shape)


class _ClipReader(Dataset):
    """dataset[indices] → one batch read from the cache (runs in DataLoader workers, which open the
    shard files lazily: FeatureCache is picklable and opens per process).

    A batch is read with `cache.read_into`: its clips grouped by shard, each shard's chunk files
    read in one ascending pass and decoded straight into the batch tensor, cast to `dtype` in the
    same copy (float32 where the trainer computes on the CPU; the stored float16 for a GPU, which
    casts faster and receives half the bytes). The batch tensor lives in shared memory, so handing
    it to the training process copies nothing. A worker reuses its
    batch buffers (a ring of LOADER_RING per worker): a fresh shared-memory batch costs its page
    faults and zeroing on every batch, a fifth of the loader's time at [16, 48, 25088] float16
    (`benchmarks/train_head.py`'s loader_efficiency measures the loader). `leases[worker, slot]`
    is 1 while the training process holds that buffer; the training process sets it back to 0 when
    it asks for the next batch (`CacheBatches.raw_batches`), and a worker that finds no free slot
    allocates a fresh buffer, so reuse never waits and never overwrites a batch still in use.
    """

    def __init__(self, cache, leases: Tensor | None = None, dtype: torch.dtype | None = None):
        self.cache, self.leases = cache, leases
        self.dtype = dtype or getattr(torch, cache.dtype)
        self._ring: list[Tensor | None] | None = None          # this worker's buffers (per process)

    def __len__(self):
        return len(self.cache)

    def _features_buffer(self, shape: tuple, dtype: torch.dtype) -> tuple[Tensor, int, int]:
        """(features [shape] in shared memory, worker, slot); slot -1: a one-off buffer."""
        info = get_worker_info()
        if info is None:
            return torch.empty(shape, dtype=dtype), -1, -1
        if self.leases is None:
            return _shared_empty(shape, dtype), info.id, -1
        if self._ring is None:
            self._ring = [None] * self.leases.shape[1]
        free = (self.leases[info.id] == 0).nonzero()
        if not len(free):
            return _shared_empty(shape, dtype), info.id, -1
        slot = int(free[0])
        buf = self._ring[slot]
        if buf is None or buf.dtype != dtype or buf.shape[1:] != shape[1:] or buf.shape[0] < shape[0]:
            buf = self._ring[slot] = _shared_empty(shape, dtype)
        self.leases[info.id, slot] = 1
        return buf[:shape[0]], info.id, slot

    def __getitem__(self, indices) -> dict:
        c, n = self.cache, len(indices)
        features, worker, slot = self._features_buffer((n, c.frames, c.dim), self.dtype)
        envelope = torch.empty((n, c.frames), dtype=torch.float32)
        length = torch.empty(n, dtype=torch.int64)
        try:
            c.read_into(indices, features, envelope, length)
        except BaseException:
            if slot >= 0:
                self.leases[worker, slot] = 0
            raise
        return {"features": features, "envelope": envelope, "length": length,
                "index": torch.as_tensor(np.asarray(indices, dtype=np.int64)),
                "lease": torch.tensor([worker, slot], dtype=torch.int64)}


class _ShardReader(Dataset):
    """dataset[k] → shard k (features, envelope, length): parallel decompression when preloading."""

    def __init__(self, cache):
        self.cache = cache

    def __len__(self):
        return self.cache.n_shards

    def __getitem__(self, k) -> dict:
        r = self.cache.read_shard(int(k))
        return {"features": torch.from_numpy(r["features"]), "envelope": torch.from_numpy(r["envelope"]),
                "length": torch.from_numpy(r["length"].astype(np.int64))}


class _PreloadedShards:
    """A preloaded cache seen as its shards (`n_shards`, `read_shard(k)`), what InputTransform.fit
    reads from a FeatureCache: fitting from memory then sums in the same chunks as fitting from the
    files, so the statistics, and the training after them, are the same bit for bit."""

    def __init__(self, features: Tensor, length: Tensor, shard_sizes: list[int]):
        self.features, self.length = features, length
        self.offsets = np.concatenate([[0], np.cumsum(shard_sizes)]).astype(np.int64)

    @property
    def n_shards(self) -> int:
        return len(self.offsets) - 1

    def read_shard(self, k: int) -> dict:
        lo, hi = int(self.offsets[k]), int(self.offsets[k + 1])
        return {"features": self.features[lo:hi].cpu().numpy(), "length": self.length[lo:hi].cpu().numpy()}


class _EpochSampler:
    """Yields the current epoch's batches of indices (DataLoader sampler with batch_size=None)."""

    def __init__(self, make):
        self.make, self.batches = make, make(0)

    def set_epoch(self, epoch: int):
        self.batches = self.make(epoch)

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


class CacheBatches:
    """Clips as batches for `pipeline.loop.fit`: {"inputs" [B, T, d] float32 (transformed), "target"
    [B, T], "length" [B], "index" [B]}, on `device`. The order is `epoch_batches(seed, epoch)`.

    Built by `from_cache` (a FeatureCache) or `from_tensors` (tensors already in memory); the
    constructor holds what both share (the order, the transform, the device) and no data yet.
    preload "none": a DataLoader whose workers read each batch from the shard files (batched, per
    shard), pinned on CUDA; the transform runs on the device. "ram": the whole cache as tensors
    in RAM; "gpu": on the GPU (no I/O at all per epoch). Preloaded features are kept as stored
    (float16) when the transform keeps their size, else transformed once (motion-energy: [N, T, 17]).
    Fit the transform before iterating (with preload, `preloaded` hands the raw tensors to fit it
    from memory), then call `prepare()`.
    """

    def __init__(self, transform: InputTransform, batch_size: int, *, shard_sizes: list[int], shuffle: bool,
                 seed: int, preload: str, device: torch.device, dist: Distributed, name: str = "cache"):
        self.cache = None
        self.transform, self.device, self.preload = transform, device, preload
        self.shuffle, self.batch_size, self.seed = shuffle, batch_size, seed
        self.dist, self.name = dist, name
        self.features = self.envelope = self.length = None
        self.transformed = False
        self._gathered: Tensor | None = None     # `gather`'s reused float32 batch
        self.loader = self.leases = None
        self._workers_started = False
        self.preload_bytes = 0          # memory the preloaded cache takes (before a shrinking transform)
        self.preload_reason = f"--preload {preload}"    # why this mode (auto: what fitted where)
        self.shard_sizes = list(shard_sizes)
        self.sampler = _EpochSampler(lambda epoch: epoch_batches(
            shard_sizes, batch_size, shuffle=shuffle, seed=seed, epoch=epoch, rank=dist.rank,
            world_size=dist.world_size, pad=shuffle))

    @classmethod
    def from_cache(cls, cache, transform: InputTransform, batch_size: int, *, shuffle: bool, seed: int,
                   preload: str, device: torch.device, workers: int, dist: Distributed, progress: bool = False,
                   name: str = "cache") -> "CacheBatches":
        """Batches of a FeatureCache: read by `workers` reader processes (preload "none"), or
        preloaded into RAM / GPU memory ("ram" / "gpu", FoleyError when it does not fit); "auto":
        the GPU (on CUDA) or RAM when the cache fits AUTO_PRELOAD_SHARE of what is free, else "none"
        (the choice and its reason: `.preload`, `.preload_reason`, and the log)."""
        if preload not in PRELOADS:
            raise FoleyError(f"unknown --preload {preload!r}; choose one of: {', '.join(PRELOADS)}")
        if preload == "gpu" and device.type != "cuda":
            raise FoleyError("--preload gpu needs a CUDA device (--device cuda); use --preload ram on CPU")
        self = cls(transform, batch_size, shard_sizes=[len(cache.shard_slice(k)) for k in range(cache.n_shards)],
                   shuffle=shuffle, seed=seed, preload=preload, device=device, dist=dist, name=name)
        self.cache = cache
        if preload == "auto":
            self.preload, self.preload_reason = self._choose_preload()
            log.info("%s cache: %s", name, self.preload_reason)
        if self.preload == "none":
            # created before the workers fork, so that they and this process share it
            self.leases = torch.zeros((workers, LOADER_RING), dtype=torch.uint8).share_memory_() if workers else None
            # float32 where the trainer computes on the CPU (cast during the read), as stored for a GPU
            dtype = getattr(torch, cache.dtype) if device.type == "cuda" else torch.float32
            self.loader = DataLoader(
                _ClipReader(cache, self.leases, dtype), sampler=self.sampler, batch_size=None, num_workers=workers,
                pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                prefetch_factor=LOADER_PREFETCH if workers > 0 else None,
                # Own generator: the workers' base seed must not consume the global RNG (resume).
                generator=torch.Generator().manual_seed(seed))
        else:
            self._preload(workers, progress)
        return self

    @classmethod
    def from_tensors(cls, features: Tensor, envelope: Tensor, length: Tensor, transform: InputTransform,
                     batch_size: int, *, shuffle: bool, seed: int, device: torch.device, dist: Distributed,
                     shard_size: int = 64) -> "CacheBatches":
        """Batches over tensors already in RAM or on the GPU (features [N, T, D] raw, envelope [N, T],
        length [N]), ordered as a cache of `shard_size`-clip shards would be (benchmarks, tests)."""
        n = features.shape[0]
        self = cls(transform, batch_size, shard_sizes=[min(shard_size, n - lo) for lo in range(0, n, shard_size)],
                   shuffle=shuffle, seed=seed, preload="gpu" if features.is_cuda else "ram", device=device,
                   dist=dist, name="tensors")
        self.features, self.envelope, self.length = features, envelope, length
        return self

    # -- preloading
    def _preload_need(self) -> int:
        """Bytes the whole cache takes in memory: features as stored, envelope float32, length int64."""
        c = self.cache
        return len(c) * c.frames * (c.dim * np.dtype(c.dtype).itemsize + 4) + len(c) * 8

    def _free(self, where: str) -> tuple[int, int, str]:
        """(free bytes, processes on this machine that each preload, its name) of "ram" or "gpu"."""
        if where == "ram":
            return available_ram_bytes(), int(os.environ.get("LOCAL_WORLD_SIZE", "1")), "RAM"
        return torch.cuda.mem_get_info(self.device)[0], 1, f"free GPU memory on {self.device}"   # one process per GPU

    def _choose_preload(self) -> tuple[str, str]:
        """--preload auto: (mode, reason). The GPU (CUDA) or RAM when the cache needs at most
        AUTO_PRELOAD_SHARE of what is free there (per process on this machine), else streaming."""
        need = self._preload_need()
        what = f"{len(self.cache)} clips, {_gb(need)}"
        for where in (["gpu"] if self.device.type == "cuda" else []) + ["ram"]:
            free, local, name = self._free(where)
            if need * local <= AUTO_PRELOAD_SHARE * free:
                return where, (f"--preload auto: held in {where.upper()} ({what}; {_gb(free)} of {name} free)")
        free, _, name = self._free("ram")
        return "none", (f"--preload auto: read from the shard files every epoch ({what} is more than "
                        f"{AUTO_PRELOAD_SHARE:.0%} of the {_gb(free)} of {name} free)")

    def _check_fits(self, need: int):
        """FoleyError unless `need` bytes (per process) fit PRELOAD_HEADROOM of the free RAM / GPU memory."""
        c = self.cache
        free, local, where = self._free(self.preload)
        if need * local > PRELOAD_HEADROOM * free:
            per = f" per process x {local} processes" if local > 1 else ""
            raise FoleyError(f"--preload {self.preload}: the {self.name} cache ({len(c)} clips of [{c.frames}, {c.dim}] "
                             f"{c.dtype}) needs {_gb(need)}{per}, but only {_gb(free)} of {where} is available; "
                             f"use --preload none (reads from disk each epoch)")

    def _preload(self, workers: int, progress: bool):
        from tqdm import tqdm

        c = self.cache
        need = self._preload_need()
        self._check_fits(need)
        self.preload_bytes = need
        target = self.device if self.preload == "gpu" else torch.device("cpu")
        self.features = torch.empty((len(c), c.frames, c.dim), dtype=getattr(torch, c.dtype), device=target)
        self.envelope = torch.empty((len(c), c.frames), dtype=torch.float32, device=target)
        self.length = torch.empty(len(c), dtype=torch.int64, device=target)
        shards = DataLoader(_ShardReader(c), batch_size=None, num_workers=workers,
                            pin_memory=target.type == "cuda", generator=torch.Generator().manual_seed(0))
        for k, shard in enumerate(tqdm(shards, desc=f"preloading {self.name} cache ({self.preload})",
                                       unit="shard", disable=not progress, leave=False)):
            rows = c.shard_slice(k)
            self.features[rows.start:rows.stop].copy_(shard["features"], non_blocking=True)
            self.envelope[rows.start:rows.stop].copy_(shard["envelope"])
            self.length[rows.start:rows.stop].copy_(shard["length"])

    @property
    def preloaded(self) -> tuple[Tensor, Tensor] | None:
        """(features [N, T, D], length [N]) in memory, raw (untransformed); None without preload."""
        if self.features is None or self.transformed:
            return None
        return self.features, self.length

    @property
    def fit_source(self) -> _PreloadedShards | None:
        """The preloaded cache as shards, for `InputTransform.fit` (same sums as from the files);
        None without preload."""
        raw = self.preloaded
        return None if raw is None else _PreloadedShards(raw[0], raw[1], self.shard_sizes)

    def prepare(self):
        """After transform.fit: transform preloaded features once when that makes them smaller."""
        if self.features is None or self.transformed or self.transform.out_dim >= self.transform.dim:
            return
        out = torch.empty((*self.features.shape[:2], self.transform.out_dim), device=self.features.device)
        with torch.no_grad():
            for lo in range(0, len(out), TRANSFORM_CHUNK):
                chunk = self.features[lo:lo + TRANSFORM_CHUNK].to(self.device)
                length = self.length[lo:lo + TRANSFORM_CHUNK].to(self.device)
                out[lo:lo + TRANSFORM_CHUNK] = self.transform(chunk, length).to(out.device)
        self.features, self.transformed = out, True

    def start_workers(self):
        """Fork the DataLoader's (persistent) workers now, while this process is still small.

        A worker forked after the head and its optimizer state exist shares their pages
        copy-on-write, and the next optimizer step then copies them page by page (at D = 25088 the
        first step after validation's workers started took many times a normal step). Started with
        an empty sampler, so nothing is read now."""
        if self.loader is None or self.loader.num_workers == 0 or self._workers_started:
            return
        batches, self.sampler.batches = self.sampler.batches, []
        try:
            iter(self.loader)               # persistent: the DataLoader keeps this iterator and its workers
        finally:
            self.sampler.batches = batches
        self._workers_started = True

    # -- iteration
    def gather(self, i: Tensor) -> Tensor:
        """Preloaded features of clips i [B] → [B, T, D]. In RAM, float16 is cast to float32 row by
        row into one reused buffer: one pass, where index_select + .float() makes two and a fresh
        [B, T, D] float32 tensor per batch (about twice the time). The buffer is valid until the
        next call (the transform reads it into a new tensor at once). Elsewhere: index_select."""
        f = self.features
        if f.device.type != "cpu" or f.dtype == torch.float32 or self.transformed:
            return f.index_select(0, i)
        if self._gathered is None or self._gathered.shape[0] < len(i):
            self._gathered = torch.empty((len(i), *f.shape[1:]), dtype=torch.float32)
        out = self._gathered[:len(i)]
        # One thread: a memory-bound copy gains little from a second one, and on a shared CPU its
        # parallel regions wait for a descheduled thread (1.4x slower at load 6 on 2 cores,
        # `benchmarks/train_head.py`'s default path).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for j, k in enumerate(i.tolist()):
                out[j].copy_(f[k])
        finally:
            torch.set_num_threads(threads)
        return out

    def raw_batches(self):
        """preload none: the loader's batches as read ({"features" [B, T, D] (float32 on a CPU
        device, as stored for CUDA), "envelope", "length", "index"}). A batch's features live in a
        worker's reusable buffer, handed back when the next batch is asked for: use (or copy) them
        before that."""
        for b in self.loader:
            worker, slot = (int(v) for v in b.pop("lease"))
            yield b
            del b
            if slot >= 0:
                self.leases[worker, slot] = 0

    def set_epoch(self, epoch: int):
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        if self.loader is not None:
            for b in self.raw_batches():
                yield {"inputs": self.transform(b["features"].to(self.device, non_blocking=True), b["length"]),
                       "target": b["envelope"], "length": b["length"], "index": b["index"]}
            return
        for idx in self.sampler:
            i = torch.from_numpy(idx).to(self.features.device)
            x = self.gather(i).to(self.device, non_blocking=True)
            length = self.length.index_select(0, i)
            yield {"inputs": x if self.transformed else self.transform(x, length),
                   "target": self.envelope.index_select(0, i), "length": length, "index": i}
