"""The cache loader (pipeline/loader.py): epoch order, the reader workers' lease ring, preloading,
and batches over tensors in memory, on small real caches."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from pipeline import loader
from pipeline.cache import FeatureCache
from pipeline.distributed import Distributed
from pipeline.errors import FoleyError
from pipeline.head import InputTransform
from tests.cachekit import make_signal_cache

pytestmark = pytest.mark.usefixtures("one_thread")      # tests/conftest.py
CPU = torch.device("cpu")


def test_epoch_batches_cover_every_clip_once_and_depend_only_on_seed_and_epoch():
    sizes = [8, 8, 8, 5]
    a = loader.epoch_batches(sizes, 4, shuffle=True, seed=0, epoch=3)
    assert sorted(np.concatenate(a).tolist()) == list(range(29))
    assert all(len(b) <= 4 for b in a)
    assert [b.tolist() for b in a] == [b.tolist() for b in loader.epoch_batches(sizes, 4, shuffle=True, seed=0, epoch=3)]
    assert [b.tolist() for b in a] != [b.tolist() for b in loader.epoch_batches(sizes, 4, shuffle=True, seed=0, epoch=4)]
    plain = loader.epoch_batches(sizes, 4, shuffle=False)
    assert np.concatenate(plain).tolist() == list(range(29))
    # DDP: equal batch counts per rank (padded), together covering everything.
    ranks = [loader.epoch_batches(sizes, 4, shuffle=True, seed=0, epoch=1, rank=r, world_size=3) for r in range(3)]
    assert len({len(r) for r in ranks}) == 1
    assert set(np.concatenate([np.concatenate(r) for r in ranks]).tolist()) == set(range(29))


def test_loader_workers_reuse_their_buffers_without_overwriting_a_batch_in_use(tmp_path):
    """Workers recycle shared-memory batch buffers once the next batch is asked for; a batch still
    held (leased) is never written over: a worker with no free buffer allocates a new one."""
    cache = FeatureCache(make_signal_cache(tmp_path / "c", 64, seed=3, dim=48).path)
    dist = Distributed()
    batches = loader.CacheBatches.from_cache(cache, InputTransform("features", cache.dim), 4, shuffle=True, seed=0,
                              preload="none", device=torch.device("cpu"), workers=2, dist=dist)
    batches.start_workers()
    slots = []
    for epoch in range(3):                  # recycled: every batch still equals the cache's clips
        batches.set_epoch(epoch)
        for k, b in enumerate(batches.raw_batches()):
            want = cache.read_many(b["index"].numpy())
            assert torch.equal(b["features"], torch.from_numpy(want["features"]))
            assert torch.equal(b["length"], torch.from_numpy(want["length"]).long())
            if k % 5 == 0:
                time.sleep(0.05)            # let the workers run ahead into the ring
        assert int(batches.leases.sum()) == 0
    # Hold every batch of an epoch (no hand-back): the ring runs out and workers fall back to new
    # buffers; all held batches stay intact to the end.
    batches.set_epoch(3)
    held = [b for b in batches.loader]
    slots = [int(b["lease"][1]) for b in held]
    assert len(held) == 16 and max(slots) == loader.LOADER_RING - 1 and slots.count(-1) > 0
    for b in held:
        assert torch.equal(b["features"], torch.from_numpy(cache.read_many(b["index"].numpy())["features"]))
    batches.leases.zero_()
    # Training through the recycled buffers gives the numbers of a loader without workers.
    plain = loader.CacheBatches.from_cache(cache, InputTransform("features", cache.dim), 4, shuffle=True, seed=0,
                            preload="none", device=torch.device("cpu"), workers=0, dist=dist)
    for b in (batches, plain):
        b.set_epoch(5)
    for a, b in zip(batches, plain):
        assert torch.equal(a["inputs"], b["inputs"]) and torch.equal(a["index"], b["index"])


def test_from_tensors_gives_the_batches_of_the_preloaded_cache(tmp_path):
    """The in-memory constructor orders and transforms exactly like a cache preloaded into RAM."""
    cache = FeatureCache(make_signal_cache(tmp_path / "c", 20, seed=5, dim=16, shard_size=8).path)
    transform = InputTransform("features", cache.dim).fit(cache)
    dist = Distributed()
    ram = loader.CacheBatches.from_cache(cache, transform, 4, shuffle=True, seed=3, preload="ram", device=CPU,
                                         workers=0, dist=dist)
    features, length = ram.preloaded
    tensors = loader.CacheBatches.from_tensors(features, ram.envelope, length, transform, 4, shuffle=True, seed=3,
                                               device=CPU, dist=dist, shard_size=8)
    assert tensors.preload == "ram" and tensors.cache is None and len(tensors) == len(ram) == 5
    for epoch in (0, 2):
        ram.set_epoch(epoch)
        tensors.set_epoch(epoch)
        for a, b in zip(ram, tensors):
            assert torch.equal(a["index"], b["index"]) and torch.equal(a["inputs"], b["inputs"])
            assert torch.equal(a["target"], b["target"]) and torch.equal(a["length"], b["length"])


def test_unknown_preload_and_gpu_preload_without_cuda_are_refused(tmp_path):
    cache = FeatureCache(make_signal_cache(tmp_path / "c", 8, seed=5, dim=16).path)
    make = lambda preload, device: loader.CacheBatches.from_cache(  # noqa: E731
        cache, InputTransform("features", cache.dim), 4, shuffle=False, seed=0, preload=preload, device=device,
        workers=0, dist=Distributed())
    with pytest.raises(FoleyError, match="unknown --preload 'disk'"):
        make("disk", CPU)
    with pytest.raises(FoleyError, match="needs a CUDA device"):
        make("gpu", CPU)
