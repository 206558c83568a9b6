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


def _losses(run) -> list[tuple]:
    import json
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(m["train_loss"], m["val_loss"], m["val_mae"]) for m in lines]


@pytest.mark.parametrize("compression", ["lz4", "zstd"])
def test_training_is_bit_identical_streaming_or_preloaded(tmp_path, compression):
    """The batch read (chunk files decoded into the batch, cast to float32 in the copy) and the
    preloaded gather give the same losses, bit for bit, for a seed; a zarr read of every batch's
    clips (zarr's own decoder, the reference) gives the same features."""
    from pipeline.cache import write_cache
    from pipeline.train import train_head
    from tests.cachekit import signal_data

    features, envelopes, lengths = signal_data(24, 7, 16, 12)
    make = lambda name: write_cache(  # noqa: E731
        tmp_path / name, [f"{name}{i}" for i in range(24)], ["x"] * 24, features, envelopes, lengths, shard_size=8,
        compression=compression, config={"t": 1})
    train, val = make("train"), make("val")
    runs = {}
    for preload, workers in (("none", 0), ("none", 1), ("ram", 0), ("auto", 0)):
        out = tmp_path / f"run-{preload}-{workers}"
        s = train_head(train.path, val.path, out, epochs=2, batch_size=5, hidden=8, layers=1, seed=3, device="cpu",
                       preload=preload, workers=workers, amp="off", progress=False)
        runs[(preload, workers)] = _losses(out)
        assert s["config"]["preload"] == preload
        assert s["config"]["preload_used"]["train"] == ("ram" if preload == "auto" else preload)
    reference = runs[("none", 0)]
    assert all(r == reference for r in runs.values()), {k: v == reference for k, v in runs.items()}
    batches = loader.CacheBatches.from_cache(train, InputTransform("features", train.dim), 5, shuffle=True, seed=3,
                                             preload="none", device=CPU, workers=0, dist=Distributed())
    import zarr
    for b in batches.raw_batches():
        for row, i in zip(b["features"], b["index"].tolist()):
            k, j = divmod(i, 8)
            ref = zarr.open_array(train.shard_path(k) / "features", mode="r")[j]
            assert b["features"].dtype == torch.float32 and torch.equal(row, torch.from_numpy(ref).float())


def test_preload_auto_holds_a_cache_that_fits_and_streams_one_that_does_not(tmp_path, monkeypatch, caplog):
    import logging
    cache = FeatureCache(make_signal_cache(tmp_path / "c", 16, seed=5, dim=16).path)
    make = lambda: loader.CacheBatches.from_cache(  # noqa: E731
        cache, InputTransform("features", cache.dim), 4, shuffle=False, seed=0, preload="auto", device=CPU,
        workers=0, dist=Distributed(), name="train")
    with caplog.at_level(logging.INFO, logger="foleycache"):
        held = make()
    assert held.preload == "ram" and held.loader is None and held.preload_bytes > 0
    assert "held in RAM" in held.preload_reason and "train cache: --preload auto: held in RAM" in caplog.text
    need = held.preload_bytes
    monkeypatch.setattr(loader, "available_ram_bytes", lambda: int(need / loader.AUTO_PRELOAD_SHARE) - 1)
    streamed = make()
    assert streamed.preload == "none" and streamed.loader is not None and streamed.preload_bytes == 0
    assert "read from the shard files every epoch" in streamed.preload_reason
    for a, b in zip(held, streamed):            # the same batches either way
        assert torch.equal(a["inputs"], b["inputs"]) and torch.equal(a["index"], b["index"])


def test_batches_read_from_hdf5_and_other_layouts_match_the_cache(tmp_path):
    """Shards the chunk reader does not decode itself (HDF5; a zarr layout of another tool) are read
    through their library, with the same numbers."""
    from pipeline import chunks
    cache = FeatureCache(make_signal_cache(tmp_path / "h", 12, seed=2, dim=16, fmt="hdf5").path)
    out = torch.empty((5, cache.frames, cache.dim))
    idx = [11, 0, 7, 3, 3]
    cache.read_into(idx, out)
    assert torch.equal(out, torch.from_numpy(cache.read_many(idx)["features"]).float())
    assert chunks._zarr_decoder({"codecs": [{"name": "bytes"}, {"name": "gzip"}]}, np.dtype("float16")) is None
    assert chunks._zarr_decoder({"codecs": [{"name": "transpose"}, {"name": "bytes"}]}, np.dtype("float16")) is None
    assert chunks._chunk_key({"chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [2, 4, 8]}}},
                             (6, 4, 8)) is None


def test_preload_is_an_option_a_resume_may_change_and_old_runs_lack():
    from pipeline.options import TrainOptions

    assert TrainOptions().preload == "auto"
    old = {"command": "train-head", "options": {k: v for k, v in TrainOptions().to_dict().items() if k != "preload"}}
    assert TrainOptions.resolve({}, old).preload == "auto"              # a run from before the option
    old["options"]["preload"] = "none"
    assert TrainOptions.resolve({"preload": "ram"}, old).preload == "ram"
    with pytest.raises(FoleyError, match="unknown --preload 'disk'"):
        TrainOptions.check_given({"preload": "disk"})
