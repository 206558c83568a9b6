"""train-head: train the LSTM+FC head from a feature cache, fast (DESIGN.md, "Training").

Read top to bottom: constants; pure helpers (`get_lr`, `resolve_amp`, `epoch_batches`,
`evaluate_model`); the data path (`CacheBatches`); the run directory and checkpoints; the loop
(`fit`); and `train_head`, what `foleycache train-head` calls.

Reusing the loop (finetune, or any model that maps a batch to per-frame logits)
-------------------------------------------------------------------------------
`fit(model, optimizer, train_batches, val_batches, run_dir=..., ...)` owns everything that is not
the model or the data: warmup + cosine schedule, AdamW stepping, gradient clipping, autocast
(+ GradScaler for fp16), DistributedDataParallel, validation with pipeline.metrics every epoch,
early stopping, a tqdm bar, `config.json`, `metrics.jsonl`, atomic `checkpoint-last.pt` /
`checkpoint-best.pt`, and resume (model, optimizer, scaler, step, RNG states per rank, history).
The caller provides:

- `model`: an nn.Module already on `dist.device`; `model(batch["inputs"]) -> logits [B, T]`.
  fit wraps it in DDP under torchrun and saves `model.state_dict()` as checkpoint["model"]. A model
  that contains the head as its `.head` submodule (finetune: backbone → transform → head) keeps
  `pipeline.head.load_head` working on its checkpoints.
- `optimizer`: any torch optimizer; each param group's "lr" is its PEAK lr (e.g. a separate
  backbone lr). fit stores it as group["base_lr"] and sets group["lr"] = get_lr(step, ...) scaled
  to that peak every step.
- `train_batches`: `.set_epoch(epoch)`, `len()` = batches per epoch on this rank (the same on
  every rank, or DDP hangs), iteration yields dicts {"inputs": Tensor (or a tuple/dict of them),
  "target": [B, T] float in [0, 1], "length": [B] int}; CPU tensors (pinned is best) or already on
  the device. The order must be a function of (seed, epoch) so a resumed run sees the same data.
- `val_batches`: the same, plus "index": [B] int64 clip indices (global, 0..N-1); each rank may
  hold any share of the validation set, fit gathers the predictions and scores them all at once.
- `describe`: plain values put into every checkpoint (head_config, transform state_dict,
  fingerprint, ...), `config`: the resolved run config (config.json and checkpoint["config"]).
- `resume`: the checkpoint to continue (`prepare_run_dir(run_dir, resume=True, ...)` returns it,
  or `read_checkpoint(run_dir / CKPT_LAST)`), else None. Build the model and optimizer as for a
  fresh run; fit restores their states. prepare_run_dir also enforces --resume / --overwrite.
The loss is `masked_bce` (pipeline.head) on the real frames. Everything in a checkpoint is a
tensor, number, string, list or dict: `torch.load(path, weights_only=True)` reads it.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, get_worker_info

from pipeline.cache import FeatureCache
from pipeline.distributed import Distributed
from pipeline.errors import FoleyError
from pipeline.head import INPUTS, Head, HeadConfig, InputTransform, masked_bce, splits_input

# ----------------------------------------------------------------------------- constants

# train-head options and their defaults. None = "the default here, or the run's own value when
# resuming" (train_head's signature uses None so that --resume can tell given from defaulted).
DEFAULTS = {
    "epochs": 30, "batch_size": 16, "lr": 1e-3, "weight_decay": 0.01, "warmup": None,
    "hidden": 512, "layers": 2, "fc": (256, 64), "dropout": 0.0, "input": "features", "seed": 0,
    "amp": "auto", "early_stop": 0, "center_clips": False,
}
# Options that change the numbers: a --resume that asks for another value is refused.
RESUME_MUST_MATCH = ("epochs", "batch_size", "lr", "weight_decay", "warmup", "hidden", "layers", "fc",
                     "dropout", "input", "seed", "amp", "center_clips")
WARMUP_FRACTION = 0.05          # default warmup: 5% of all optimizer steps (at least 1)
MIN_LR_RATIO = 0.1              # cosine decays to lr / 10 (nanoGPT's choice)
GRAD_CLIP = 1.0                 # max global gradient norm
ADAM_BETAS = (0.9, 0.999)
LOADER_PREFETCH = 4             # batches each loader worker reads ahead
LOADER_RING = LOADER_PREFETCH + 2   # reusable batch buffers per worker (read ahead + consumed + in the pin queue)
POOL_SHARDS = 4                 # shuffling mixes clips of this many shards (reads stay on few files)
PRELOAD_HEADROOM = 0.8          # preload only if it needs <= 80% of the free RAM / GPU memory
MAX_AUTO_WORKERS = 4
POSTFIX_EVERY = 20              # steps between progress-bar loss updates (each one syncs a GPU)

# Per-epoch validation metrics copied into metrics.jsonl (as val_<name>), from pipeline.metrics.
EPOCH_METRICS = ("bce", "mae", "pearson", "peak_within_1", "peak_error_frames", "onset_f1", "seed_score")

# --amp auto on CPU: bf16 when the CPU computes it natively (AMX / AVX512-BF16) and the head reads
# a wide input (layer 0 as one input GEMM, `head.splits_input`: only that GEMM goes to bf16), else
# off. Measured on this 2-core CPU (AMX bf16), LSTM 2x512 + FC, batch 16, fwd+bwd+AdamW per clip:
# D=25088 float32 46 ms vs bf16 31 ms. oneDNN's fused bf16 LSTM (narrow inputs) was slower than
# float32 at D >= 8192 (backward 6x), so narrow inputs stay float32. On CUDA: bf16 when the device
# and cuDNN's LSTM take it (probed), else fp16 with a GradScaler.
AMP_CHOICES = ("auto", "bf16", "fp16", "off")
PRELOADS = ("none", "ram", "gpu")

CONFIG_JSON = "config.json"
METRICS_JSONL = "metrics.jsonl"
CKPT_LAST = "checkpoint-last.pt"
CKPT_BEST = "checkpoint-best.pt"
RUN_FILES = (CONFIG_JSON, METRICS_JSONL, CKPT_LAST, CKPT_BEST)
CHECKPOINT_FORMAT = "foleycache-run-checkpoint"
CHECKPOINT_VERSION = 1


# ----------------------------------------------------------------------------- pure helpers

def get_lr(step: int, warmup: int, total: int, lr: float, min_lr: float) -> float:
    """Learning rate at optimizer step `step` (0-based): linear warmup over `warmup` steps to `lr`,
    then cosine decay to `min_lr` at step `total`, `min_lr` after it."""
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    if step >= total:
        return min_lr
    ratio = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def resolve_device(name: str) -> torch.device:
    """"auto" → cuda if available, else cpu; "cuda" without CUDA is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise FoleyError("--device cuda: no CUDA device is available here (use --device cpu)")
    if name not in ("cpu", "cuda"):
        raise FoleyError(f"unknown --device {name!r}; choose auto, cpu or cuda")
    return torch.device(name)


def _cuda_lstm_takes_bf16(device: torch.device) -> bool:
    """cuDNN runs LSTMs in bf16 only from cuDNN 9.13 (older builds raise): try a tiny one."""
    try:
        lstm = nn.LSTM(8, 8, batch_first=True).to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out, _ = lstm(torch.randn(2, 3, 8, device=device))
        out.float().sum().backward()
        return True
    except RuntimeError:
        return False


def resolve_amp(amp: str, device: torch.device, wide_input: bool = False) -> str:
    """--amp auto|bf16|fp16|off → the autocast dtype name used ("bf16", "fp16" or "off").

    wide_input: the head's input is wide enough for its split layer 0 (`head.splits_input`), which
    is what makes bf16 pay on CPU."""
    if amp not in AMP_CHOICES:
        raise FoleyError(f"unknown --amp {amp!r}; choose one of: {', '.join(AMP_CHOICES)}")
    if device.type == "cpu":
        if amp == "fp16":               # oneDNN: "could not create a primitive descriptor" for the LSTM
            raise FoleyError("--amp fp16 does not run the LSTM on CPU; use --amp bf16 or off")
        if amp == "auto":
            from pipeline.extract import cpu_has_bf16
            return "bf16" if wide_input and cpu_has_bf16() else "off"
        return amp
    bf16_ok = torch.cuda.is_bf16_supported() and _cuda_lstm_takes_bf16(device)
    if amp == "auto":
        return "bf16" if bf16_ok else "fp16"
    if amp == "bf16" and not bf16_ok:
        raise FoleyError("--amp bf16: this GPU / cuDNN cannot run the LSTM in bf16; use --amp fp16 or off")
    return amp


def autocast(device: torch.device, amp: str):
    """The autocast context for a resolved amp ("off" → no autocast)."""
    if amp == "off":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict:
    """This process's RNG states (torch, cuda, numpy, python) as tensors and numbers."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
             "python": torch.tensor(random.getstate()[1], dtype=torch.int64)}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device):
    torch.set_rng_state(state["torch"].cpu())
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    random.setstate((3, tuple(int(v) for v in state["python"].tolist()), None))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


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


def _to_device(x, device: torch.device):
    if isinstance(x, Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, dict):
        return {k: _to_device(v, device) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_to_device(v, device) for v in x)
    return x


@torch.no_grad()
def evaluate_model(model: nn.Module, batches, device: torch.device, amp: str = "off") -> dict:
    """Run `model` over `batches` (this rank's share of the validation set) in eval mode.

    Returns {"loss_sum": summed masked BCE, "frames": real frames, "index" [n] int64,
    "pred" [n, T] float32 probabilities, "target" [n, T], "length" [n]} as numpy arrays.
    """
    was_training = model.training
    model.eval()
    loss_sum, frames = 0.0, 0
    index, pred, target, length = [], [], [], []
    for batch in batches:
        batch = _to_device(batch, device)
        with autocast(device, amp):
            logits = model(batch["inputs"])
        loss_sum += float(masked_bce(logits, batch["target"], batch["length"], reduction="sum"))
        frames += int(batch["length"].sum())
        index.append(batch["index"].cpu())
        pred.append(torch.sigmoid(logits.float()).cpu())
        target.append(batch["target"].float().cpu())
        length.append(batch["length"].cpu())
    model.train(was_training)
    cat = lambda xs, shape: torch.cat(xs).numpy() if xs else np.zeros(shape, np.float32)  # noqa: E731
    return {"loss_sum": loss_sum, "frames": frames, "index": cat(index, (0,)).astype(np.int64),
            "pred": cat(pred, (0, 0)), "target": cat(target, (0, 0)), "length": cat(length, (0,)).astype(np.int64)}


def gather_predictions(local: dict, dist: Distributed) -> dict:
    """evaluate_model results of all ranks → one dict in clip order (every rank gets it)."""
    parts = dist.gather(local)
    out = {"loss_sum": sum(p["loss_sum"] for p in parts), "frames": sum(p["frames"] for p in parts)}
    parts = [p for p in parts if len(p["index"])] or parts[:1]     # a rank may hold no val batch
    order = np.argsort(np.concatenate([p["index"] for p in parts]), kind="stable")
    for key in ("index", "pred", "target", "length"):
        out[key] = np.concatenate([p[key] for p in parts])[order]
    return out


# ----------------------------------------------------------------------------- the data path

def available_ram_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), else total physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def _shared_empty(shape: tuple, dtype: torch.dtype) -> Tensor:
    """An uninitialised tensor in shared memory. `torch.empty(...).share_memory_()` would first
    allocate and then copy the garbage: 57 vs 28 ms for a [16, 48, 25088] float16 batch."""
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    try:
        storage = torch.UntypedStorage._new_shared(nbytes)
    except AttributeError:          # a torch without it: the public, slower way
        return torch.empty(shape, dtype=dtype).share_memory_()
    return torch.empty(0, dtype=dtype).set_(storage).view(shape)


class _ClipReader(Dataset):
    """dataset[indices] → one batch read from the cache (runs in DataLoader workers, which open the
    shard files lazily: FeatureCache is picklable and opens per process).

    Clips are read one chunk each (`cache[i]`) straight into the batch tensor, which a worker keeps
    in shared memory, so handing it to the training process copies nothing. A worker reuses its
    batch buffers (a ring of LOADER_RING per worker): a fresh shared-memory batch costs its page
    faults and zeroing on every batch, 20% of the loader's time at [16, 48, 25088] float16 (2
    cores). `leases[worker, slot]` is 1 while the training process holds that buffer; the training
    process sets it back to 0 when it asks for the next batch (`CacheBatches.raw_batches`), and a
    worker that finds no free slot allocates a fresh buffer, so reuse never waits and never
    overwrites a batch still in use.
    """

    def __init__(self, cache, leases: Tensor | None = None):
        self.cache, self.leases = cache, leases
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
        features, worker, slot = self._features_buffer((n, c.frames, c.dim), getattr(torch, c.dtype))
        envelope = torch.empty((n, c.frames), dtype=torch.float32)
        length = torch.empty(n, dtype=torch.int64)
        out = features.numpy()
        try:
            for j, i in enumerate(indices):
                clip = c[int(i)]
                out[j] = clip["features"]
                envelope[j] = torch.from_numpy(clip["envelope"])
                length[j] = clip["length"]
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
    """One cache as batches for `fit`: {"inputs" [B, T, d] float32 (transformed), "target" [B, T],
    "length" [B], "index" [B]}, on `device`. The order is `epoch_batches(seed, epoch)`.

    preload "none": a DataLoader whose workers read each batch from the shard files (batched, per
    shard), pinned on CUDA; the transform runs on the device. "ram": the whole cache as tensors
    in RAM; "gpu": on the GPU (no I/O at all per epoch). Preloaded features are kept as stored
    (float16) when the transform keeps their size, else transformed once (motion-energy: [N, T, 17]).
    Fit the transform before iterating (with preload, `preloaded` hands the raw tensors to fit it
    from memory), then call `prepare()`. `from_tensors` wraps tensors already in memory.
    """

    def __init__(self, cache, transform: InputTransform, batch_size: int, *, shuffle: bool, seed: int,
                 preload: str, device: torch.device, workers: int, dist: Distributed, progress: bool = False,
                 name: str = "cache"):
        if preload not in PRELOADS:
            raise FoleyError(f"unknown --preload {preload!r}; choose one of: {', '.join(PRELOADS)}")
        if preload == "gpu" and device.type != "cuda":
            raise FoleyError("--preload gpu needs a CUDA device (--device cuda); use --preload ram on CPU")
        self._setup(cache, transform, batch_size, shuffle, seed, preload, device, dist, name,
                    [len(cache.shard_slice(k)) for k in range(cache.n_shards)])
        if preload == "none":
            # created before the workers fork, so that they and this process share it
            self.leases = torch.zeros((workers, LOADER_RING), dtype=torch.uint8).share_memory_() if workers else None
            self.loader = DataLoader(
                _ClipReader(cache, self.leases), sampler=self.sampler, batch_size=None, num_workers=workers,
                pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                prefetch_factor=LOADER_PREFETCH if workers > 0 else None,
                # Own generator: the workers' base seed must not consume the global RNG (resume).
                generator=torch.Generator().manual_seed(seed))
        else:
            self._preload(workers, progress)

    def _setup(self, cache, transform, batch_size, shuffle, seed, preload, device, dist, name, shard_sizes):
        self.cache, self.transform, self.device, self.preload = cache, transform, device, preload
        self.shuffle, self.batch_size, self.seed = shuffle, batch_size, seed
        self.dist, self.name = dist, name
        self.features = self.envelope = self.length = None
        self.transformed = False
        self.loader = self.leases = None
        self._workers_started = False
        self.preload_bytes = 0          # memory the preloaded cache takes (before a shrinking transform)
        self.sampler = _EpochSampler(lambda epoch: epoch_batches(
            shard_sizes, batch_size, shuffle=shuffle, seed=seed, epoch=epoch, rank=dist.rank,
            world_size=dist.world_size, pad=shuffle))

    @classmethod
    def from_tensors(cls, features: Tensor, envelope: Tensor, length: Tensor, transform: InputTransform,
                     batch_size: int, *, shuffle: bool, seed: int, device: torch.device, dist: Distributed,
                     shard_size: int = 64) -> "CacheBatches":
        """Batches over tensors already in RAM or on the GPU (features [N, T, D] raw, envelope [N, T],
        length [N]), ordered as a cache of `shard_size`-clip shards would be (benchmarks, tests)."""
        n = features.shape[0]
        self = cls.__new__(cls)
        self._setup(None, transform, batch_size, shuffle, seed, "gpu" if features.is_cuda else "ram", device, dist,
                    "tensors", [min(shard_size, n - lo) for lo in range(0, n, shard_size)])
        self.features, self.envelope, self.length = features, envelope, length
        return self

    # -- preloading
    def _preload(self, workers: int, progress: bool):
        from tqdm import tqdm

        c = self.cache
        item = np.dtype(c.dtype).itemsize
        need = len(c) * c.frames * (c.dim * item + 4 + 0) + len(c) * 8
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if self.preload == "ram":
            free = available_ram_bytes()
            where = "RAM"
        else:
            free = torch.cuda.mem_get_info(self.device)[0]
            where = f"free GPU memory on {self.device}"
            local = 1           # one process per GPU
        if need * local > PRELOAD_HEADROOM * free:
            per = f" per process x {local} processes" if local > 1 else ""
            raise FoleyError(f"--preload {self.preload}: the {self.name} cache ({len(c)} clips of [{c.frames}, {c.dim}] "
                             f"{c.dtype}) needs {_gb(need)}{per}, but only {_gb(free)} of {where} is available; "
                             f"use --preload none (reads from disk each epoch)")
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

    def prepare(self):
        """After transform.fit: transform preloaded features once when that makes them smaller."""
        if self.features is None or self.transformed or self.transform.out_dim >= self.transform.dim:
            return
        out = torch.empty((*self.features.shape[:2], self.transform.out_dim), device=self.features.device)
        step = 64
        with torch.no_grad():
            for lo in range(0, len(out), step):
                out[lo:lo + step] = self.transform(self.features[lo:lo + step].to(self.device)).to(out.device)
        self.features, self.transformed = out, True

    def start_workers(self):
        """Fork the DataLoader's (persistent) workers now, while this process is still small.

        A worker forked after the head and its optimizer state exist shares their pages
        copy-on-write, and the next optimizer step then copies them page by page: measured at
        D = 25088 on the 2-core CPU, the first step after validation's workers started took 1.8 s
        instead of 0.04 s. Started with an empty sampler, so nothing is read now."""
        if self.loader is None or self.loader.num_workers == 0 or self._workers_started:
            return
        batches, self.sampler.batches = self.sampler.batches, []
        try:
            iter(self.loader)               # persistent: the DataLoader keeps this iterator and its workers
        finally:
            self.sampler.batches = batches
        self._workers_started = True

    # -- iteration
    def raw_batches(self):
        """preload none: the loader's batches as read ({"features" [B, T, D] as stored, "envelope",
        "length", "index"}). A batch's features live in a worker's reusable buffer, handed back
        when the next batch is asked for: use (or copy) them before that."""
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
                yield {"inputs": self.transform(b["features"].to(self.device, non_blocking=True)),
                       "target": b["envelope"], "length": b["length"], "index": b["index"]}
            return
        for idx in self.sampler:
            i = torch.from_numpy(idx).to(self.features.device)
            x = self.features.index_select(0, i).to(self.device, non_blocking=True)
            yield {"inputs": x if self.transformed else self.transform(x),
                   "target": self.envelope.index_select(0, i), "length": self.length.index_select(0, i),
                   "index": i}


# ----------------------------------------------------------------------------- run directory

def _atomic_write_bytes(path: Path, write, also: Path | None = None):
    """write(tmp_path) then rename: a kill -9 leaves either the old file or the new one, whole.
    `also`: a second name for the same bytes (a hard link, else a copy), renamed into place first."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if also is not None:
            twin = also.with_name(f"{also.name}.tmp-{os.getpid()}")
            try:
                os.link(tmp, twin)
            except OSError:             # a filesystem without hard links
                shutil.copyfile(tmp, twin)
            os.replace(twin, also)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def _fsync_dir(path: Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_torch_save(obj, path: Path, also: Path | None = None):
    """torch.save(obj) to `path` (and `also`) atomically; one write even with two names."""
    _atomic_write_bytes(Path(path), lambda tmp: torch.save(obj, tmp), also=also)


def atomic_write_text(path: Path, text: str):
    _atomic_write_bytes(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _to_cpu(obj):
    """Tensors to CPU, tuples to lists (plain, weights_only-safe, device-independent)."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_cpu(v) for v in obj]
    return obj


def _is_run_file(name: str, run_files: tuple[str, ...]) -> bool:
    return name in run_files or any(name.startswith(f + ".tmp-") for f in run_files)


def prepare_run_dir(out: Path, resume: bool, overwrite: bool, extra_files: tuple[str, ...] = ()) -> dict | None:
    """Check (and with overwrite, empty) a run directory; return the checkpoint to resume or None.

    A non-empty `out` needs --resume (continue checkpoint-last.pt) or --overwrite (delete the run's
    files: RUN_FILES + `extra_files`, e.g. finetune's exported backbone; a directory holding
    anything else is never wiped). Call on rank 0 only.
    """
    out = Path(out)
    if resume and overwrite:
        raise FoleyError("--resume and --overwrite contradict each other: choose one")
    if out.exists() and not out.is_dir():
        raise FoleyError(f"--out {out} exists and is not a directory")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if resume:
        if CONFIG_JSON not in entries:
            raise FoleyError(f"--resume: no run to resume in {out} (no {CONFIG_JSON}); drop --resume to start one")
        for name in entries:            # half-written temporaries of a killed run
            if ".tmp-" in name and _is_run_file(name, RUN_FILES + tuple(extra_files)):
                (out / name).unlink()
        return read_checkpoint(out / CKPT_LAST) if CKPT_LAST in entries else None
    if entries:
        if not overwrite:
            raise FoleyError(f"--out {out} already holds a run (or other files); pass --resume to continue it "
                             f"or --overwrite to replace it")
        run_files = RUN_FILES + tuple(extra_files)
        foreign = [n for n in entries if not _is_run_file(n, run_files) or (out / n).is_dir()]
        if foreign:
            raise FoleyError(f"--overwrite: {out} holds files that are not part of a run ({', '.join(foreign[:3])}); "
                             "refusing to delete them: choose another --out")
        for name in entries:
            (out / name).unlink()
    return None


def read_checkpoint(path: Path) -> dict:
    """A run checkpoint, read with weights_only=True onto the CPU (FoleyError if unreadable)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise FoleyError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}; "
                         "start over with --overwrite") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise FoleyError(f"{path} is not a foleycache run checkpoint")
    return ckpt


def versions() -> dict:
    import pipeline

    return {"foleycache": str(pipeline.__version__), "torch": str(torch.__version__),
            "numpy": str(np.__version__), "python": sys.version.split()[0]}


def _json_plain(obj):
    """A JSON round trip: only dict/list/str/int/float/bool/None remain (weights_only-safe)."""
    return json.loads(json.dumps(obj))


# ----------------------------------------------------------------------------- the loop

def fit(model: nn.Module, optimizer: torch.optim.Optimizer, train_batches, val_batches, *,
        run_dir: Path, epochs: int, warmup_steps: int, dist: Distributed, describe: dict, config: dict,
        amp: str = "off", grad_clip: float = GRAD_CLIP, min_lr_ratio: float = MIN_LR_RATIO,
        early_stop: int = 0, seed: int = 0, resume: dict | None = None, progress: bool = True) -> dict:
    """Train `model` for `epochs`, validating and checkpointing every epoch (see the module docstring).

    Returns {"run_dir", "epochs_run", "best_epoch", "best_val_loss", "best_metrics",
    "last_metrics", "stopped_early", "seconds"} (the same on every rank).
    """
    from tqdm import tqdm

    from pipeline.metrics import evaluate

    run_dir, device = Path(run_dir), dist.device
    config = _json_plain(config)
    raw_model = model
    steps_per_epoch = len(train_batches)
    total_steps = epochs * steps_per_epoch
    for group in optimizer.param_groups:
        group.setdefault("base_lr", group["lr"])
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    # State that a checkpoint carries (restored on resume).
    start_epoch, step, best_val, best_epoch, bad_epochs, history = 0, 0, math.inf, 0, 0, []
    if resume is not None:
        raw_model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scaler.load_state_dict(resume["scaler"])
        start_epoch, step = int(resume["epoch"]), int(resume["step"])
        best_val, best_epoch = float(resume["best_val_loss"]), int(resume["best_epoch"])
        bad_epochs, history = int(resume["bad_epochs"]), list(resume["history"])
    if dist.enabled:
        model = nn.parallel.DistributedDataParallel(
            raw_model, device_ids=[device] if device.type == "cuda" else None,
            forward_sync_buffers=False)     # the head has no BatchNorm: nothing to sync per step

    if dist.is_main:                        # the run's record: config, and metrics up to the checkpoint
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / CONFIG_JSON, json.dumps(config, indent=2) + "\n")
        atomic_write_text(run_dir / METRICS_JSONL, "".join(json.dumps(h) + "\n" for h in history))
    if resume is not None and len(resume["rng"]) == dist.world_size:
        set_rng_state(resume["rng"][dist.rank], device)
    else:                                   # each rank its own dropout stream
        seed_everything(seed + dist.rank if resume is None else seed + dist.rank + 7919 * start_epoch)

    stopped_early = early_stop > 0 and bad_epochs >= early_stop
    t_start = time.perf_counter()
    for epoch in range(start_epoch, epochs):
        if stopped_early:
            break
        # ---- train one epoch
        t0 = time.perf_counter()
        model.train()
        train_batches.set_epoch(epoch)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        frames = torch.zeros((), dtype=torch.int64, device=device)
        samples = 0
        bar = tqdm(train_batches, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=False,
                   disable=not (progress and dist.is_main))
        for i, batch in enumerate(bar):
            batch = _to_device(batch, device)
            lr_factor = get_lr(step, warmup_steps, total_steps, 1.0, min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * lr_factor
            with autocast(device, amp):
                logits = model(batch["inputs"])
            loss = masked_bce(logits, batch["target"], batch["length"])
            scaler.scale(loss).backward()
            if grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(raw_model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            n_frames = batch["length"].sum()
            loss_sum += loss.detach().double() * n_frames
            frames += n_frames
            samples += int(batch["length"].shape[0])
            step += 1
            if i % POSTFIX_EVERY == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
        train_loss = dist.sum(float(loss_sum)) / max(1.0, dist.sum(float(frames)))
        samples = int(dist.sum(samples))
        train_seconds = time.perf_counter() - t0

        # ---- validate: every rank its share, scored together
        val = gather_predictions(evaluate_model(raw_model, val_batches, device, amp), dist)
        val_loss = val["loss_sum"] / max(1, val["frames"])
        improved = val_loss < best_val
        if improved:
            best_val, best_epoch, bad_epochs = val_loss, epoch + 1, 0
        else:
            bad_epochs += 1
        stopped_early = early_stop > 0 and bad_epochs >= early_stop
        record = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "val_clips": len(val["index"])}
        if dist.is_main:
            metrics = evaluate(val["pred"], val["target"], val["length"])
            record.update({f"val_{k}": metrics[k] for k in EPOCH_METRICS})
        record.update(seconds=round(time.perf_counter() - t0, 3), train_seconds=round(train_seconds, 3),
                      samples_per_s=round(samples / train_seconds, 2) if train_seconds else None,
                      lr=optimizer.param_groups[0]["lr"], step=step, best=improved)
        record = dist.broadcast(record)
        history.append(record)

        # ---- checkpoint (atomic; best renamed in before last, so a kill between re-runs this epoch;
        # best is a hard link to the same bytes: a 25088-d head with AdamW state is ~660 MB)
        rngs = dist.gather(rng_state(device))
        if dist.is_main:
            ckpt = _to_cpu({
                "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **describe,
                "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(), "epoch": epoch + 1, "step": step,
                "val_loss": val_loss, "metrics": record, "best_val_loss": best_val, "best_epoch": best_epoch,
                "bad_epochs": bad_epochs, "history": history, "rng": rngs, "config": config,
                "world_size": dist.world_size})
            atomic_torch_save(ckpt, run_dir / CKPT_LAST, also=run_dir / CKPT_BEST if improved else None)
            with open(run_dir / METRICS_JSONL, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        dist.barrier()

    best = next((h for h in history if h["epoch"] == best_epoch), None)
    return {"run_dir": str(run_dir), "epochs_run": len(history), "best_epoch": best_epoch,
            "best_val_loss": best_val if best is not None else None, "best_metrics": best,
            "last_metrics": history[-1] if history else None, "stopped_early": stopped_early,
            "seconds": round(time.perf_counter() - t_start, 2)}


# ----------------------------------------------------------------------------- train-head

def _resolve_options(given: dict, resume_config: dict | None) -> dict:
    """Given options over (the resumed run's options or DEFAULTS); refuse a resume that changes one
    of RESUME_MUST_MATCH."""
    base = dict(DEFAULTS)
    if resume_config is not None:
        saved = resume_config.get("options")
        if resume_config.get("command") != "train-head" or not isinstance(saved, dict):
            raise FoleyError("--resume: the run in --out is not a train-head run (its config.json says "
                             f"command {resume_config.get('command')!r})")
        base.update(saved)
        changed = [k for k in RESUME_MUST_MATCH
                   if given.get(k) is not None and _plain(given[k]) != _plain(saved.get(k))]
        if changed:
            listed = ", ".join(f"--{k.replace('_', '-')} {saved.get(k)!r} -> {given[k]!r}" for k in changed)
            raise FoleyError(f"--resume with other training options than the run's ({listed}); "
                             "resume with the same options, or start over with --overwrite")
    base.update({k: v for k, v in given.items() if v is not None})
    base["fc"] = list(base["fc"])
    return base


def _run_config(out: Path) -> dict | None:
    """The config of the run in `out` (None if there is none: prepare_run_dir then says so)."""
    try:
        return json.loads((Path(out) / CONFIG_JSON).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise FoleyError(f"--resume: {Path(out) / CONFIG_JSON} is unreadable ({e}); start over with --overwrite") from e


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


OPTION_RANGES = {"epochs": ">= 1", "batch_size": ">= 1", "lr": "> 0", "weight_decay": ">= 0", "warmup": ">= 0",
                 "hidden": ">= 1", "layers": ">= 1", "dropout": "in [0, 1)", "early_stop": ">= 0"}


def _check_options(o: dict):
    """Ranges and choices of the options that are set (None = not given): a one-line FoleyError."""
    ok = {"epochs": lambda v: v >= 1, "batch_size": lambda v: v >= 1, "lr": lambda v: v > 0,
          "weight_decay": lambda v: v >= 0, "warmup": lambda v: v >= 0, "hidden": lambda v: v >= 1,
          "layers": lambda v: v >= 1, "dropout": lambda v: 0 <= v < 1, "early_stop": lambda v: v >= 0}
    for name, test in ok.items():
        if o.get(name) is not None and not test(o[name]):
            raise FoleyError(f"--{name.replace('_', '-')} must be {OPTION_RANGES[name]}, got {o[name]!r}")
    if o.get("input") is not None and o["input"] not in INPUTS:
        raise FoleyError(f"unknown --input {o['input']!r}; choose one of: {', '.join(INPUTS)}")
    if o.get("amp") is not None and o["amp"] not in AMP_CHOICES:
        raise FoleyError(f"unknown --amp {o['amp']!r}; choose one of: {', '.join(AMP_CHOICES)}")


def _cache_record(cache) -> dict:
    return {"path": str(Path(cache.path).resolve()), "fingerprint": cache.fingerprint, "clips": len(cache),
            "frames": cache.frames, "dim": cache.dim, "dtype": cache.dtype}


def _default_workers(world_size: int) -> int:
    """Reader processes per rank: one per core of the rank's share, at most MAX_AUTO_WORKERS.
    Readers sleep while their prefetched batches wait, so they take little from the training step
    (2-core CPU, [48, 25088] cache: 2 workers read 1.1x a plain sequential read, 1 worker 0.7x;
    the training epoch took the same time within noise)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_AUTO_WORKERS, cores // world_size))


def train_head(train_cache, val_cache, out, *, epochs: int | None = None, batch_size: int | None = None,
               lr: float | None = None, weight_decay: float | None = None, warmup: int | None = None,
               hidden: int | None = None, layers: int | None = None, dropout: float | None = None,
               input: str | None = None, seed: int | None = None, amp: str | None = None,
               early_stop: int | None = None, center_clips: bool | None = None, device: str = "auto",
               preload: str = "none", workers: int | None = None, resume: bool = False, overwrite: bool = False,
               progress: bool = True) -> dict:
    """Train the head on `train_cache`, validate on `val_cache`, write the run to `out`.

    Options left None take DEFAULTS (or, with resume=True, the run's own values). warmup is in
    optimizer steps (default 5% of all steps). Returns fit()'s summary plus "config" and the paths
    of the run's files. Raises FoleyError for bad options, mismatched caches or a run dir in the way.
    """
    out = Path(out)
    given = dict(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup=warmup,
                 hidden=hidden, layers=layers, dropout=dropout, input=input, seed=seed, amp=amp, early_stop=early_stop,
                 center_clips=center_clips)
    _check_options(given)                   # before anything touches --out
    if preload not in PRELOADS:
        raise FoleyError(f"unknown --preload {preload!r}; choose one of: {', '.join(PRELOADS)}")
    if workers is not None and workers < 0:
        raise FoleyError(f"--workers must be >= 0, got {workers}")
    dist = Distributed.from_env(resolve_device(device))
    try:
        return _train_head(train_cache, val_cache, out, dist, given, preload, workers, resume, overwrite, progress)
    finally:
        dist.close()


def _on_main(dist: Distributed, fn):
    """Run fn() on rank 0; its FoleyError (or result) reaches every rank."""
    result, error = None, None
    if dist.is_main:
        try:
            result = fn()
        except FoleyError as e:
            error = str(e)
    result, error = dist.broadcast((result, error))
    if error:
        raise FoleyError(error)
    return result


def _train_head(train_path, val_path, out, dist, given, preload, workers, resume, overwrite,
                progress) -> dict:
    device = dist.device
    train_cache, val_cache = FeatureCache(train_path), FeatureCache(val_path)
    if train_cache.fingerprint != val_cache.fingerprint:
        raise FoleyError(f"train and val caches were extracted differently (fingerprints "
                         f"{train_cache.fingerprint[:12]}… vs {val_cache.fingerprint[:12]}…): extract both "
                         "with the same backbone, weights and settings")
    if (train_cache.frames, train_cache.dim) != (val_cache.frames, val_cache.dim):
        raise FoleyError(f"train and val caches hold different shapes ([T, D] {train_cache.frames, train_cache.dim} "
                         f"vs {val_cache.frames, val_cache.dim})")
    if len(train_cache) == 0 or len(val_cache) == 0:
        raise FoleyError("the train and val caches must each hold at least one clip")

    # Options first (read-only: a resumed run's own options fill what was not given), so that a bad
    # option never costs an --overwrite its old run; then rank 0 prepares the run dir.
    resume_config = _run_config(out) if resume else None
    opts = _resolve_options(given, resume_config)
    _check_options(opts)
    # The head reads the transform's output: its width decides CPU autocast (see CPU auto amp above).
    # Built before the run dir is touched, so a cache motion-energy cannot read costs nothing either.
    transform = InputTransform(opts["input"], train_cache.dim, cache_config=train_cache.config,
                               center=opts["center_clips"])
    amp = resolve_amp(opts["amp"], device, wide_input=splits_input(transform.out_dim, opts["hidden"]))
    workers = _default_workers(dist.world_size) if workers is None else workers
    has_ckpt = _on_main(dist, lambda: prepare_run_dir(out, resume, overwrite) is not None)
    ckpt = read_checkpoint(out / CKPT_LAST) if has_ckpt else None
    if ckpt is not None and ckpt["fingerprint"] != train_cache.fingerprint:
        raise FoleyError(f"--resume: the run was trained on a cache with fingerprint {ckpt['fingerprint'][:12]}…, "
                         f"--train-cache has {train_cache.fingerprint[:12]}…")
    seed_everything(opts["seed"])

    # Input transform: statistics from the TRAIN cache only (or the checkpoint's, on resume), fitted
    # from memory when the cache is preloaded; the val cache is read through the same numbers.
    if ckpt is not None:
        transform = InputTransform.from_state_dict(ckpt["transform"])
    transform = transform.to(device)
    batches = lambda cache, shuffle, name: CacheBatches(  # noqa: E731
        cache, transform, opts["batch_size"], shuffle=shuffle, seed=opts["seed"], preload=preload, device=device,
        workers=workers, dist=dist, progress=progress and dist.is_main, name=name)
    train_batches = batches(train_cache, True, "train")
    val_batches = batches(val_cache, False, "val")      # reads through `transform`, fitted in place below
    for b in (train_batches, val_batches):
        b.start_workers()                   # before anything big is allocated (see start_workers)
    if ckpt is None:
        source = train_batches.preloaded or train_cache
        state = _on_main(dist, lambda: _to_cpu(transform.fit(source, progress=progress).state_dict()))
        transform.load_state_dict(state)
    train_batches.prepare()
    val_batches.prepare()

    head_config = HeadConfig(input_dim=transform.out_dim, hidden=opts["hidden"], layers=opts["layers"],
                             fc=tuple(opts["fc"]), dropout=opts["dropout"], input=opts["input"])
    torch.manual_seed(opts["seed"])         # same initial weights on every rank and every run
    head = Head(head_config).to(device)
    decay = [p for p in head.parameters() if p.dim() >= 2]      # no weight decay on biases
    rest = [p for p in head.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": opts["weight_decay"]}, {"params": rest, "weight_decay": 0.0}],
        lr=opts["lr"], betas=ADAM_BETAS, fused=True)   # one kernel: CPU 0.27 vs 1.06 s per step at D=25088

    steps_per_epoch = len(train_batches)
    total_steps = opts["epochs"] * steps_per_epoch
    warmup_steps = opts["warmup"] if opts["warmup"] is not None else max(1, round(WARMUP_FRACTION * total_steps))
    config = {
        "command": "train-head", "options": opts, "amp": amp, "device": str(device), "preload": preload,
        "preload_bytes": {"train": train_batches.preload_bytes, "val": val_batches.preload_bytes},
        "workers": workers, "world_size": dist.world_size, "global_batch_size": opts["batch_size"] * dist.world_size,
        "steps_per_epoch": steps_per_epoch, "total_steps": total_steps, "warmup_steps": warmup_steps,
        "min_lr_ratio": MIN_LR_RATIO, "grad_clip": GRAD_CLIP, "adam_betas": list(ADAM_BETAS),
        "train_cache": _cache_record(train_cache), "val_cache": _cache_record(val_cache),
        "cache_config": train_cache.config, "head": head_config.to_dict(),
        "transform": {"kind": transform.kind, "in_dim": transform.dim, "out_dim": transform.out_dim,
                      "cells": transform.cells, "fitted_on": "train_cache"},
        "versions": versions(),
    }
    describe = {"head_config": head_config.to_dict(), "transform": transform.state_dict(),
                "fingerprint": train_cache.fingerprint, "val_fingerprint": val_cache.fingerprint,
                "cache_config": train_cache.config, "kind": "train-head"}
    summary = fit(head, optimizer, train_batches, val_batches, run_dir=out, epochs=opts["epochs"],
                  warmup_steps=warmup_steps, dist=dist, describe=describe, config=config, amp=amp,
                  early_stop=opts["early_stop"], seed=opts["seed"], resume=ckpt, progress=progress)
    summary.update(config=config, files={name: str(out / name) for name in RUN_FILES})
    return summary

