"""The outputs of a backbone's frozen first stages, computed once per clip and kept.

`pretrain --freeze-blocks N` trains only the stages after the first N. The frozen ones never change,
so their output for a clip's frames is the same every epoch and in every run on the same clips with
the same weights: it is computed once (`build_stem_cache`) and training runs `Backbone.trunk` on it.
On a 2-core CPU at 64 px this is what makes pretraining from ImageNet weights affordable (MobileNetV2
train step: 2.8 clips/s for the whole network, 20 with its first 4 stages frozen; docs/pretraining.md).

A stem cache is files sharing a prefix, beside the frame cache it was computed from:

    PREFIX.json          fingerprint (frame cache + backbone + weights' sha256 + N + size), shape, dtype
    PREFIX.maps.npy      float32 [N_clips, *map shape] (np.memmap): `Backbone.stem(frames, N)` per clip
    PREFIX.done.npy      uint8 [N_clips]: 1 once the clip's map is written (flushed first)

A killed build resumes: the clips not marked done are computed again. Under torchrun every rank
computes its share of the rows (rank r: rows r, r + W, ...) into the same files.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline.architectures import Backbone
from pipeline.fsio import atomic_write_json
from pipeline.framecache import FrameCache, normalised

STEM_CACHE_VERSION = 1
BATCH = 4                       # clips per forward pass while building
FLUSH_EVERY = 32                # clips between flushes (a kill loses at most these)


def stem_fingerprint(frame_fingerprint: str, backbone: str, weights_sha256: str, blocks: int, size: int) -> str:
    """What a stem map depends on: the decoded frames, the network and its weights, N and the size."""
    key = json.dumps([STEM_CACHE_VERSION, frame_fingerprint, backbone, weights_sha256, int(blocks), int(size)])
    return hashlib.sha256(key.encode()).hexdigest()


class StemCache:
    """A built stem cache, read-only: `read(rows)` -> float32 maps [B, *shape]."""

    def __init__(self, prefix: str | os.PathLike, mode: str = "r"):
        self.prefix = Path(prefix)
        self.meta = json.loads(self.prefix.with_suffix(".json").read_text(encoding="utf-8"))
        n, shape = self.meta["clips"], tuple(self.meta["shape"])
        self.maps = np.lib.format.open_memmap(_path(self.prefix, "maps"), mode=mode)
        self.done = np.lib.format.open_memmap(_path(self.prefix, "done"), mode=mode)
        assert self.maps.shape == (n, *shape)

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    def read(self, rows) -> np.ndarray:
        return np.asarray(self.maps[np.asarray(rows, np.int64)])


def _path(prefix: Path, part: str) -> Path:
    return prefix.parent / f"{prefix.name}.{part}.npy"


def _usable(prefix: Path, fingerprint: str) -> bool:
    try:
        meta = json.loads(prefix.with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return meta.get("fingerprint") == fingerprint and all(_path(prefix, p).is_file() for p in ("maps", "done"))


def _create(prefix: Path, n: int, shape: tuple, fingerprint: str, params: dict):
    prefix.parent.mkdir(parents=True, exist_ok=True)
    np.lib.format.open_memmap(_path(prefix, "maps"), mode="w+", dtype=np.float32, shape=(n, *shape)).flush()
    np.lib.format.open_memmap(_path(prefix, "done"), mode="w+", dtype=np.uint8, shape=(n,)).flush()
    atomic_write_json(prefix.with_suffix(".json"), {"version": STEM_CACHE_VERSION, "fingerprint": fingerprint,
                                                    "clips": n, "shape": list(shape), "dtype": "float32", **params})


@torch.no_grad()
def build_stem_cache(prefix: str | os.PathLike, frames: FrameCache, net: Backbone, blocks: int, *, backbone: str,
                     weights_sha256: str, mean: tuple, std: tuple, rank: int = 0, world_size: int = 1,
                     barrier=lambda: None, progress: bool = True, desc: str = "frozen stages") -> dict:
    """Compute `net.stem(frames, blocks)` for every decoded clip of `frames` not done yet (created, or
    reused when its fingerprint matches; a mismatching one is rebuilt). Call on every rank.
    Returns {"prefix", "fingerprint", "computed_now", "reused"}."""
    prefix = Path(prefix)
    fingerprint = stem_fingerprint(frames.fingerprint, backbone, weights_sha256, blocks, frames.size)
    reused = _usable(prefix, fingerprint)
    was_training = net.training
    net.eval()
    if rank == 0 and not reused:
        probe = net.stem(normalised(frames.read([int(frames.decoded[0])])["frames"], mean, std), blocks)
        _create(prefix, len(frames), tuple(probe.shape[1:]), fingerprint,
                {"backbone": backbone, "weights_sha256": weights_sha256, "blocks": int(blocks),
                 "size": int(frames.size), "frame_cache": frames.fingerprint})
    barrier()
    cache = StemCache(prefix, mode="r+")
    todo = [int(r) for r in frames.decoded if not cache.done[r] and r % world_size == rank]
    for start in tqdm(range(0, len(todo), BATCH), desc=desc, unit="batch", disable=not progress or not todo,
                      leave=False):
        rows = todo[start:start + BATCH]
        cache.maps[rows] = net.stem(normalised(frames.read(rows)["frames"], mean, std), blocks).numpy()
        if (start // BATCH + 1) % (FLUSH_EVERY // BATCH) == 0 or start + BATCH >= len(todo):
            _commit(cache, todo[:start + BATCH])
    net.train(was_training)
    barrier()
    return {"prefix": str(prefix), "fingerprint": fingerprint, "computed_now": len(todo), "reused": reused}


def _commit(cache: StemCache, rows: list[int]):
    """Maps first (flushed), then their done marks: a kill between the two recomputes them."""
    cache.maps.flush()
    cache.done[rows] = 1
    cache.done.flush()
