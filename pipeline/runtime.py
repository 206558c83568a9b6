"""Where and how the numbers are computed: device, precision, autocast, worker counts, seeds, RNG state.

One implementation of each, used by extraction, training, fine-tuning and export, so that
`--device`, `--precision` and `--amp` mean the same thing in every command. Extraction speaks of
*precision* (`auto|bf16|fp32`: the backbone's forward pass), training of *amp* (`auto|bf16|fp16|off`:
autocast around a head that also has an LSTM); both resolve to one name that `autocast` takes.

Speed decisions are made from float32 measurements (`benchmarks/`); bf16 is taken on a CPU only
where the CPU has it natively (AMX or AVX512-BF16): emulated bf16 on an AVX2-only CPU is slower
than float32.

This module must not import from the rest of the package except `pipeline.errors` and the
torch-free vocabulary of choices in `pipeline.options`.
"""
from __future__ import annotations

import os
import random
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.errors import FoleyError
from pipeline.options import AMP_CHOICES, PRECISIONS

MAX_CUDA_DECODERS = 32      # decode workers on a GPU machine: all cores but one, up to this
MAX_READERS = 4             # cache reader processes per training process


# ----------------------------------------------------------------------------- devices

def resolve_device(name: str) -> torch.device:
    """"auto" → cuda if available, else cpu; "cuda" / "cuda:N" without CUDA is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise FoleyError(f"--device {name}: no CUDA device is available here (use --device cpu or auto)")
        return torch.device(name)
    raise FoleyError(f"unknown --device {name!r}; choose auto, cpu or cuda")


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def decode_workers(device: torch.device) -> int:
    """Video decode worker processes. CPU: 1, the model takes the other threads (at 224 px decoding
    costs ~1/5 of model3d_1's time, so one worker keeps up; `benchmarks/extract.py` measures it).
    CUDA: every core but one, so decoding can feed the GPU."""
    if device.type == "cuda":
        return min(MAX_CUDA_DECODERS, max(1, usable_cores() - 1))
    return 1


def reader_workers(world_size: int) -> int:
    """Cache reader processes per training process: one per core of the process's share, at most
    MAX_READERS. Readers sleep while their prefetched batches wait, so they take little from the
    training step (`benchmarks/train_head.py` measures the loader against a plain read)."""
    return max(1, min(MAX_READERS, usable_cores() // world_size))


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


# ----------------------------------------------------------------------------- precision

def cpu_has_bf16() -> bool:
    """Native bf16 on this CPU (AMX or AVX512-BF16). Without it bf16 autocast is emulated and slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """Extraction's --precision auto|bf16|fp32 → "bf16" or "fp32"."""
    if precision not in PRECISIONS:
        raise FoleyError(f"unknown --precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16() else "fp32"


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
    """Training's --amp auto|bf16|fp16|off → the autocast used ("bf16", "fp16" or "off").

    wide_input: the head's input is wide enough for its split layer 0 (`head.splits_input`), which
    is what makes bf16 pay on CPU."""
    if amp not in AMP_CHOICES:
        raise FoleyError(f"unknown --amp {amp!r}; choose one of: {', '.join(AMP_CHOICES)}")
    if device.type == "cpu":
        if amp == "fp16":               # oneDNN: "could not create a primitive descriptor" for the LSTM
            raise FoleyError("--amp fp16 does not run the LSTM on CPU; use --amp bf16 or off")
        if amp == "auto":
            return "bf16" if wide_input and cpu_has_bf16() else "off"
        return amp
    bf16_ok = torch.cuda.is_bf16_supported() and _cuda_lstm_takes_bf16(device)
    if amp == "auto":
        return "bf16" if bf16_ok else "fp16"
    if amp == "bf16" and not bf16_ok:
        raise FoleyError("--amp bf16: this GPU / cuDNN cannot run the LSTM in bf16; use --amp fp16 or off")
    return amp


def autocast(device: torch.device, precision: str):
    """The autocast context for a resolved precision or amp: "bf16", "fp16", or "fp32" / "off"
    (no autocast)."""
    if precision in ("off", "fp32"):
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


# ----------------------------------------------------------------------------- seeds and RNG state

def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict:
    """This process's RNG states (torch, cuda, numpy, python) as tensors and numbers, so a
    checkpoint holding them loads with `torch.load(weights_only=True)`."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
             "python": torch.tensor(random.getstate()[1], dtype=torch.int64)}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device):
    """Restore what `rng_state` captured."""
    torch.set_rng_state(state["torch"].cpu())
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    random.setstate((3, tuple(int(v) for v in state["python"].tolist()), None))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
