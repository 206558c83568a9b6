"""The one torchrun setup: one process group per run, rank-0-only writes, collectives that also
work in a plain single-process run (where they are no-ops). Extraction, training and fine-tuning
all join their process group here.

    dist = Distributed.from_env(device)   # reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK
    dist.rank, dist.world_size, dist.is_main, dist.device
    dist.sum(x)             # float summed over ranks
    dist.gather(obj)        # list of every rank's picklable obj (on every rank)
    dist.broadcast(obj)     # rank 0's obj on every rank
    dist.barrier(); dist.close()

Backend: nccl for CUDA devices (each rank on cuda:LOCAL_RANK), gloo on CPU; a caller that only
exchanges barriers and small objects may ask for gloo on GPUs too. This module owns the process
group and must not know what the ranks compute; it imports nothing from the rest of the package.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as tdist

TIMEOUT = timedelta(minutes=30)     # default: a rank that waits this long for the others fails (a peer died)


def env_world_size() -> int:
    """WORLD_SIZE set by torchrun (1 outside it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialised_here: bool = False

    @classmethod
    def from_env(cls, device: str | torch.device, timeout: timedelta = TIMEOUT,
                 backend: str | None = None) -> "Distributed":
        """Join torchrun's process group if WORLD_SIZE > 1 (else a single-process stand-in).

        device: "cpu" or "cuda"; under torchrun a CUDA rank uses cuda:LOCAL_RANK.
        timeout: how long a collective waits for the other ranks before failing.
        backend: None = nccl on CUDA, gloo on CPU; or "gloo" / "nccl".
        """
        device = torch.device(device)
        world = env_world_size()
        if world <= 1:
            return cls(device=device)
        rank, local_rank = env_rank(), int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        here = False
        if not tdist.is_initialized():
            backend = backend or ("nccl" if device.type == "cuda" else "gloo")
            kwargs = {"device_id": device} if backend == "nccl" else {}
            tdist.init_process_group(backend=backend, timeout=timeout, **kwargs)
            here = True
        return cls(rank=rank, world_size=world, local_rank=local_rank, device=device, initialised_here=here)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.enabled:
            tdist.barrier()

    def sum(self, value: float) -> float:
        if not self.enabled:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        tdist.all_reduce(t)
        return float(t.item())

    def gather(self, obj) -> list:
        """Every rank's `obj` (picklable), in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        tdist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self):
        if self.initialised_here and tdist.is_initialized():
            tdist.destroy_process_group()
            self.initialised_here = False
