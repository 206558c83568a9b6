"""Tests for pipeline.shards: ShardWriter's explicit open / commit / abort (tiny shards, T=4, D=8)."""

import numpy as np
import pytest

from pipeline import shards
from pipeline.shards import ShardWriter, read_shard_meta, shard_name, shard_sha256

T, D = 4, 8


def _fill(w: ShardWriter, n: int = 3):
    rng = np.random.default_rng(0)
    for i in range(n):
        w.append(f"c{i}", "Dropping [something]", rng.random((T, D)), rng.random(T), T - i)
    w.add_failure({"id": "bad", "path": "v/bad.webm", "reason": "no_audio", "detail": ""})


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_open_commit_equals_the_with_block(tmp_path, fmt):
    explicit = tmp_path / "a" / shard_name(0, fmt)
    w = ShardWriter(explicit, fmt, capacity=4, frames=T, dim=D).open()
    _fill(w)
    w.commit()
    with ShardWriter(tmp_path / "b" / shard_name(0, fmt), fmt, capacity=4, frames=T, dim=D) as w:
        _fill(w)
    assert shard_sha256(explicit) == shard_sha256(tmp_path / "b" / shard_name(0, fmt))
    meta = read_shard_meta(explicit)
    assert meta["id"] == ["c0", "c1", "c2"] and meta["attrs"]["count"] == 3
    assert [f["id"] for f in meta["attrs"]["failures"]] == ["bad"]
    w.abort()                                       # aborting a committed writer changes nothing
    assert explicit.exists() and read_shard_meta(explicit)["attrs"]["count"] == 3


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_abort_leaves_nothing(tmp_path, fmt):
    path = tmp_path / shard_name(1, fmt)
    w = ShardWriter(path, fmt, capacity=4, frames=T, dim=D).open()
    _fill(w, 2)
    assert w.tmp.exists()
    w.abort()
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_a_failed_commit_aborts(tmp_path, monkeypatch):
    def full(_path):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(shards, "_fsync_tree", full)
    path = tmp_path / shard_name(0, "zarr")
    w = ShardWriter(path, "zarr", capacity=4, frames=T, dim=D).open()
    _fill(w, 1)
    with pytest.raises(OSError, match="No space"):
        w.commit()
    assert list(tmp_path.iterdir()) == []


def test_append_before_open_is_refused(tmp_path):
    with pytest.raises(RuntimeError, match="before open"):
        ShardWriter(tmp_path / shard_name(0, "zarr"), "zarr", capacity=1, frames=T, dim=D).append(
            "c", "x", np.zeros((T, D)), np.zeros(T), T)
