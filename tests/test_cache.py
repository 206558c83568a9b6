"""Tests for pipeline.cache on real Zarr v3 and HDF5 shards written to tmp_path (small: T=8, D=64)."""

import json
import os
import pickle
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cache import (
    CACHE_JSON, FAILURES_JSONL, PROGRESS_JSON, SHARDS_DIR, FeatureCache, begin_cache, cache_info, finalize_cache,
    fingerprint, format_cache_info, pending_shards, write_cache,
)
from pipeline.fsio import sha256_file
from pipeline.shards import SCHEMA_VERSION, ShardWriter, shard_name, shard_sha256
from pipeline.cli import cli
from pipeline.errors import FoleyError

N, T, D = 10, 8, 64
FORMATS = ("zarr", "hdf5")
LABEL = "Dropping something onto something"
DEAD_PID = 2 ** 22 + 1          # above Linux's pid_max: never a live process


def relu_data(n=N, frames=T, dim=D, seed=0):
    """ReLU-like features [n, T, D] (~50% exact zeros), envelopes [n, T] in [0, 1], lengths [n]."""
    rng = np.random.default_rng(seed)
    features = np.maximum(rng.standard_normal((n, frames, dim)), 0).astype(np.float32)
    envelopes = rng.random((n, frames)).astype(np.float32)
    lengths = rng.integers(1, frames + 1, n)
    envelopes[np.arange(frames)[None, :] >= lengths[:, None]] = 0      # padding is 0
    return features, envelopes, lengths


def ids_labels(n=N):
    return [f"{1000 + i}" for i in range(n)], [LABEL if i % 2 else "Hitting something with something" for i in range(n)]


FAILURES = [
    {"id": "77", "path": "/v/77.webm", "reason": "too_short", "detail": "5 frames"},
    {"id": "12", "path": "/v/12.webm", "reason": "no_audio_stream", "detail": ""},
]


def make_cache(path, fmt="zarr", dtype="float16", shard_size=4, seed=0, failures=FAILURES):
    features, envelopes, lengths = relu_data(seed=seed)
    ids, labels = ids_labels()
    cache = write_cache(path, ids, labels, features, envelopes, lengths, fmt=fmt, dtype=dtype,
                        shard_size=shard_size, config={"backbone": "test", "frames": T}, failures=failures)
    return cache, (ids, labels, features, envelopes, lengths)


def flip_byte(path, offset=None):
    data = bytearray(path.read_bytes())
    offset = len(data) // 2 if offset is None else offset
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def feature_chunk(cache, k=0):
    """(file, byte offset) of the first clip's compressed feature chunk in shard k."""
    path = cache.shard_path(k)
    if path.suffix == ".zarr":
        return path / "features" / "c" / "0" / "0" / "0", None
    import h5py
    with h5py.File(path, "r") as f:
        info = f["features"].id.get_chunk_info(0)
        return path, info.byte_offset + info.size // 2


# ----------------------------------------------------------------------------- round trip

@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip(tmp_path, fmt):
    cache, (ids, labels, features, envelopes, lengths) = make_cache(tmp_path / fmt, fmt)
    assert len(cache) == N and cache.n_shards == 3 and cache.dtype == "float16"
    assert (cache.frames, cache.dim) == (T, D)
    assert cache.ids == ids and cache.labels == labels
    item = cache[3]
    assert item["id"] == ids[3] and item["label"] == labels[3] and item["length"] == lengths[3]
    assert item["features"].dtype == np.float16 and item["features"].shape == (T, D)
    np.testing.assert_array_equal(item["features"], features[3].astype(np.float16))
    assert item["envelope"].dtype == np.float32
    np.testing.assert_array_equal(item["envelope"], envelopes[3])
    assert cache[-1]["id"] == ids[-1]
    with pytest.raises(IndexError):
        cache[N]
    assert [s["name"] for s in cache.shards] == [shard_name(k, fmt) for k in range(3)]
    assert list(cache.shard_slice(2)) == [8, 9]

    shard = cache.read_shard(1)
    assert shard["id"] == ids[4:8] and shard["features"].shape == (4, T, D)
    np.testing.assert_array_equal(shard["features"], features[4:8].astype(np.float16))
    np.testing.assert_array_equal(shard["length"], lengths[4:8])

    order = [9, 0, 5, 5, -1, 3]
    many = cache.read_many(order)
    np.testing.assert_array_equal(many["features"], features[order].astype(np.float16))
    np.testing.assert_array_equal(many["envelope"], envelopes[order])
    np.testing.assert_array_equal(many["length"], lengths[order])
    assert many["id"] == [ids[i] for i in order] and many["label"] == [labels[i] for i in order]
    assert sorted(f["id"] for f in cache.failures) == ["12", "77"]


def test_zarr_and_hdf5_read_back_identical(tmp_path):
    z, _ = make_cache(tmp_path / "z", "zarr")
    h, _ = make_cache(tmp_path / "h", "hdf5")
    a, b = z.read_many(range(N)), h.read_many(range(N))
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]))
        assert np.asarray(a[key]).dtype == np.asarray(b[key]).dtype
    assert z.fingerprint == h.fingerprint and z.failures == h.failures


@pytest.mark.parametrize("fmt", FORMATS)
def test_float32_is_exact(tmp_path, fmt):
    cache, (_, _, features, _, _) = make_cache(tmp_path / fmt, fmt, dtype="float32")
    assert cache.dtype == "float32" and cache[0]["features"].dtype == np.float32
    np.testing.assert_array_equal(cache.read_many(range(N))["features"], features)


@pytest.mark.parametrize("fmt", FORMATS)
def test_storage_at_most_half_of_float32_on_relu_data(tmp_path, fmt):
    features, envelopes, lengths = relu_data(n=4, frames=16, dim=4096)
    ids, labels = ids_labels(4)
    write_cache(tmp_path / fmt, ids, labels, features, envelopes, lengths, fmt=fmt, shard_size=4)
    info = cache_info(tmp_path / fmt)
    assert info["storage_ratio"] <= 0.5, info


def test_float16_overflow_is_a_clear_error(tmp_path):
    features, envelopes, lengths = relu_data(n=1)
    features[0, 0, 0] = 1e6
    with pytest.raises(FoleyError, match="float32"):
        write_cache(tmp_path / "c", ["1"], ["x"], features, envelopes, lengths)


# ----------------------------------------------------------------------------- writer

@pytest.mark.parametrize("fmt", FORMATS)
def test_writer_uses_temp_then_renames(tmp_path, fmt):
    path = tmp_path / shard_name(0, fmt)
    features, envelopes, lengths = relu_data(n=2)
    with ShardWriter(path, fmt, capacity=4, frames=T, dim=D, dtype="float16") as w:
        w.append("a", LABEL, features[0], envelopes[0], lengths[0])
        assert w.tmp.exists() and w.tmp.parent == path.parent and ".tmp-" in w.tmp.name
        assert not path.exists()
    assert path.exists() and not w.tmp.exists()
    assert sorted(os.listdir(tmp_path)) == [path.name]


@pytest.mark.parametrize("fmt", FORMATS)
def test_writer_exception_leaves_nothing(tmp_path, fmt):
    path = tmp_path / shard_name(0, fmt)
    features, envelopes, lengths = relu_data(n=2)
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(path, fmt, capacity=4, frames=T, dim=D, dtype="float16") as w:
            w.append("a", LABEL, features[0], envelopes[0], lengths[0])
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_writer_rejects_wrong_shapes_and_overflowing_capacity(tmp_path):
    features, envelopes, lengths = relu_data(n=2)
    with pytest.raises(ValueError):
        with ShardWriter(tmp_path / "s.zarr", "zarr", capacity=1, frames=T, dim=D) as w:
            w.append("a", LABEL, features[0], envelopes[0], 3)
            w.append("b", LABEL, features[1], envelopes[1], 3)
    with pytest.raises(ValueError):
        with ShardWriter(tmp_path / "s.zarr", "zarr", capacity=1, frames=T, dim=D) as w:
            w.append("a", LABEL, features[0][:, :10], envelopes[0], 3)
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- begin / resume / finalize

def test_begin_resume_returns_only_unfinished_shards(tmp_path):
    fp = fingerprint({"backbone": "test"})
    assert begin_cache(tmp_path, fp, {"backbone": "test"}, 3, overwrite=False) == [0, 1, 2]
    assert json.loads((tmp_path / PROGRESS_JSON).read_text())["fingerprint"] == fp
    features, envelopes, lengths = relu_data(n=1)
    for k in (0, 2):
        with ShardWriter(tmp_path / SHARDS_DIR / shard_name(k, "zarr"), "zarr", 1, T, D) as w:
            w.append(str(k), LABEL, features[0], envelopes[0], lengths[0])
    stale = tmp_path / SHARDS_DIR / f"{shard_name(1, 'zarr')}.tmp-{DEAD_PID}"   # a kill -9'd writer
    (stale / "features").mkdir(parents=True)
    assert begin_cache(tmp_path, fp, {"backbone": "test"}, 3, overwrite=False) == [1]
    assert not stale.exists()
    assert pending_shards(tmp_path, 3) == [1]
    with pytest.raises(FoleyError, match="shard-00001"):
        finalize_cache(tmp_path)


def test_fingerprint_mismatch_refused_then_overwrite(tmp_path):
    cache, _ = make_cache(tmp_path / "c")
    old = cache.config
    new_config = {**old, "frames": 16}
    new_fp = fingerprint(new_config)
    with pytest.raises(FoleyError, match=r"frames.*--overwrite"):
        begin_cache(tmp_path / "c", new_fp, new_config, 3, overwrite=False)
    assert FeatureCache(tmp_path / "c").fingerprint == cache.fingerprint     # untouched
    assert begin_cache(tmp_path / "c", new_fp, new_config, 2, overwrite=True) == [0, 1]
    assert not (tmp_path / "c" / CACHE_JSON).exists()
    assert os.listdir(tmp_path / "c" / SHARDS_DIR) == []


def test_same_fingerprint_on_finished_cache_has_nothing_to_do(tmp_path):
    cache, _ = make_cache(tmp_path / "c")
    before = (tmp_path / "c" / CACHE_JSON).read_bytes()
    assert begin_cache(tmp_path / "c", cache.fingerprint, cache.config, 3, overwrite=False) == []
    assert (tmp_path / "c" / CACHE_JSON).read_bytes() == before
    with pytest.raises(FoleyError, match="shards"):
        begin_cache(tmp_path / "c", cache.fingerprint, cache.config, 5, overwrite=False)


def test_never_wipes_an_unrelated_directory(tmp_path):
    (tmp_path / "thesis.tex").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(FoleyError, match="not a foleycache cache"):
            begin_cache(tmp_path, fingerprint({}), {}, 1, overwrite=overwrite)
    assert (tmp_path / "thesis.tex").read_text() == "precious"


def test_finalize_writes_failures_and_index(tmp_path):
    cache, _ = make_cache(tmp_path / "c", failures=FAILURES)
    index = json.loads((tmp_path / "c" / CACHE_JSON).read_text())
    assert index["schema_version"] == SCHEMA_VERSION and index["fingerprint"] == cache.fingerprint
    assert index["counts"] == {"candidates": N + 2, "cached": N, "failed": 2,
                               "failed_by_reason": {"no_audio_stream": 1, "too_short": 1}}
    assert [s["count"] for s in index["shards"]] == [4, 4, 2]
    assert [s["n_failed"] for s in index["shards"]] == [2, 0, 0]
    for s in index["shards"]:
        assert s["sha256"] == shard_sha256(tmp_path / "c" / SHARDS_DIR / s["name"])
    lines = (tmp_path / "c" / FAILURES_JSONL).read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["12", "77"]        # sorted, whatever the order added
    assert not (tmp_path / "c" / PROGRESS_JSON).exists()
    assert sorted(os.listdir(tmp_path / "c")) == [CACHE_JSON, FAILURES_JSONL, SHARDS_DIR]


@pytest.mark.parametrize("fmt", FORMATS)
def test_deterministic_bytes_and_resume_equals_uninterrupted(tmp_path, fmt):
    make_cache(tmp_path / "a", fmt)
    make_cache(tmp_path / "b", fmt, failures=FAILURES[::-1])
    for name in [CACHE_JSON, FAILURES_JSONL]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    for k in range(3):
        a, b = (tmp_path / x / SHARDS_DIR / shard_name(k, fmt) for x in "ab")
        assert shard_sha256(a) == shard_sha256(b)
        if fmt == "hdf5":
            assert sha256_file(a) == sha256_file(b)
    # "kill" run b after its first shard, then resume: the same cache.json, byte for byte
    for k in (1, 2):
        shutil.rmtree(tmp_path / "b" / SHARDS_DIR / shard_name(k, fmt), ignore_errors=True)
        (tmp_path / "b" / SHARDS_DIR / shard_name(k, fmt)).unlink(missing_ok=True)
    make_cache(tmp_path / "b", fmt)
    assert (tmp_path / "a" / CACHE_JSON).read_bytes() == (tmp_path / "b" / CACHE_JSON).read_bytes()


# ----------------------------------------------------------------------------- verify and damage

@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_verify_names_the_damaged_shard(tmp_path, fmt, damage):
    cache, _ = make_cache(tmp_path / "c", fmt)
    assert cache.verify() == []
    target = cache.shard_path(1)
    if damage == "flip":
        file, offset = feature_chunk(cache, 1)
        flip_byte(file, offset)
    elif damage == "truncate":
        file = target if target.is_file() else target / "features" / "c" / "1" / "0" / "0"
        file.write_bytes(file.read_bytes()[:-7])
    elif damage == "delete":
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    if damage == "delete":
        with pytest.raises(FoleyError, match=target.name):
            FeatureCache(tmp_path / "c")
    problems = cache.verify()
    assert len(problems) == 1 and target.name in problems[0], problems


@pytest.mark.parametrize("fmt", FORMATS)
def test_any_flipped_byte_is_caught_by_verify(tmp_path, fmt):
    cache, _ = make_cache(tmp_path / "c", fmt)
    target = cache.shard_path(0)
    file = target if target.is_file() else target / "zarr.json"
    flip_byte(file, 3)
    assert [p.split(":")[0] for p in cache.verify()] == [target.name]


@pytest.mark.parametrize("fmt", FORMATS)
def test_undecodable_shard_raises_naming_it(tmp_path, fmt):
    cache, _ = make_cache(tmp_path / "c", fmt)
    file, offset = feature_chunk(cache, 0)
    flip_byte(file, offset)
    fresh = FeatureCache(tmp_path / "c")
    with pytest.raises(FoleyError, match=cache.shard_path(0).name):
        fresh[0]


def test_cache_errors_are_clear(tmp_path):
    with pytest.raises(FoleyError, match="not found"):
        FeatureCache(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FoleyError, match="no cache.json"):
        FeatureCache(tmp_path / "empty")
    make_cache(tmp_path / "c")
    index_path = tmp_path / "c" / CACHE_JSON
    good = index_path.read_text()

    index_path.write_text(good[: len(good) // 2])
    with pytest.raises(FoleyError, match="corrupt"):
        FeatureCache(tmp_path / "c")
    index_path.write_text(good.replace('"count": 4', '"count": 5', 1))
    with pytest.raises(FoleyError, match="edited"):
        FeatureCache(tmp_path / "c")
    index_path.write_text(good.replace('"schema_version": 1', '"schema_version": 99', 1))
    with pytest.raises(FoleyError, match="schema version 99"):
        FeatureCache(tmp_path / "c")
    index_path.write_text(good)
    (tmp_path / "c" / PROGRESS_JSON).write_text("{}")
    index_path.unlink()
    with pytest.raises(FoleyError, match="unfinished"):
        FeatureCache(tmp_path / "c")


@pytest.mark.parametrize("fmt", FORMATS)
def test_picklable_and_lazy(tmp_path, fmt):
    cache, (ids, _, features, _, _) = make_cache(tmp_path / fmt, fmt)
    cache[0]                                     # opens a shard in this process
    clone = pickle.loads(pickle.dumps(cache))
    assert len(clone._handles) == 0
    assert clone[0]["id"] == ids[0]
    np.testing.assert_array_equal(clone[9]["features"], features[9].astype(np.float16))


def test_fingerprint_is_canonical():
    a = fingerprint({"b": 1, "a": [1, 2], "nested": {"y": 1.5, "x": "s"}})
    b = fingerprint({"nested": {"x": "s", "y": 1.5}, "a": [1, 2], "b": 1})
    assert a == b and len(a) == 64
    assert a != fingerprint({"b": 2, "a": [1, 2], "nested": {"y": 1.5, "x": "s"}})


# ----------------------------------------------------------------------------- CLI

def test_cache_info_cli(tmp_path):
    cache, _ = make_cache(tmp_path / "c", "hdf5")
    runner = CliRunner()
    result = runner.invoke(cli, ["cache-info", str(tmp_path / "c"), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["clips"] == N and info["shards"] == 3 and info["format"] == "hdf5"
    assert info["failed_by_reason"] == {"no_audio_stream": 1, "too_short": 1}
    assert info["fingerprint"] == cache.fingerprint

    result = runner.invoke(cli, ["cache-info", str(tmp_path / "c"), "--verify", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "ok" in result.stdout

    flip_byte(cache.shard_path(2))
    result = runner.invoke(cli, ["cache-info", str(tmp_path / "c"), "--verify", "--quiet"])
    assert result.exit_code == 1
    assert cache.shard_path(2).name in result.stdout
    result = runner.invoke(cli, ["cache-info", str(tmp_path / "c"), "--verify", "--json", "--quiet"])
    assert result.exit_code == 1
    assert [p.split(":")[0] for p in json.loads(result.stdout)["problems"]] == [cache.shard_path(2).name]

    assert runner.invoke(cli, ["cache-info", str(tmp_path / "missing")]).exit_code != 0
    (tmp_path / "empty").mkdir()
    result = runner.invoke(cli, ["cache-info", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "no cache.json" in result.output


def _read_in_child(args):
    cache, i = args
    item = cache[i]
    return item["id"], item["features"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_reads_in_worker_processes(tmp_path, fmt, start):
    """DataLoader workers: the parent has files open before the fork (or pickles the cache)."""
    import multiprocessing
    if start not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {start} start method here")
    cache, (ids, _, features, _, _) = make_cache(tmp_path / fmt, fmt)
    cache[0], cache[9]
    with multiprocessing.get_context(start).Pool(1) as pool:
        results = pool.map(_read_in_child, [(cache, i) for i in (9, 0, 4)])
    for (got_id, got), i in zip(results, (9, 0, 4)):
        assert got_id == ids[i]
        np.testing.assert_array_equal(got, features[i].astype(np.float16))
    assert cache[5]["id"] == ids[5]          # the parent's handles still work


# ----------------------------------------------------------------------------- compression

@pytest.mark.parametrize("fmt,codecs", [("zarr", ("lz4", "zstd", "none")), ("hdf5", ("gzip", "none"))])
def test_compression_is_recorded_lossless_and_outside_the_fingerprint(tmp_path, fmt, codecs):
    import torch

    features, envelopes, lengths = relu_data()
    ids, labels = ids_labels()
    prints = set()
    for codec in codecs:
        c = write_cache(tmp_path / codec, ids, labels, features, envelopes, lengths, fmt=fmt, shard_size=4,
                        compression=codec)
        assert c.compression == codec == json.loads((c.path / CACHE_JSON).read_text())["compression"]
        assert c.config.get("compression") is None          # write_cache keeps the caller's config
        info = cache_info(c.path)
        assert info["compression"] == codec and f"({codec})" in format_cache_info(info)
        prints.add(c.fingerprint)
        out = torch.empty((N, T, D))
        idx = np.random.default_rng(1).permutation(N)
        c.read_into(idx, out)
        assert np.array_equal(out.numpy(), features[idx].astype(np.float16).astype(np.float32))
    assert len(prints) == 1                                 # lossless: the same numbers, the same fingerprint


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_a_damaged_or_lost_chunk_never_reads_back_as_numbers(tmp_path, codec):
    import torch

    features, envelopes, lengths = relu_data()
    ids, labels = ids_labels()
    c = write_cache(tmp_path / "c", ids, labels, features, envelopes, lengths, shard_size=4, compression=codec)
    chunk = c.shard_path(0) / "features" / "c" / "1" / "0" / "0"
    flip_byte(chunk)                                        # checksum (crc32c after Blosc, zstd's own)
    out = torch.empty((2, T, D))
    with pytest.raises(FoleyError, match="shard-00000"):
        FeatureCache(c.path).read_into([0, 1], out)
    chunk.unlink()                                          # a lost chunk: never NaN or zeros handed on
    with pytest.raises(FoleyError, match="lost the features"):
        FeatureCache(c.path).read_into([1], out[:1])
    with pytest.raises(FoleyError, match="lost the features"):
        FeatureCache(c.path).read_shard(0)


def test_caches_without_a_compression_record_read_as_before(tmp_path):
    from pipeline.cache import _index_checksum

    cache, (_, _, features, _, _) = make_cache(tmp_path / "c", "zarr")
    index = json.loads((cache.path / CACHE_JSON).read_text())
    assert index["compression"] == "lz4"
    old = write_cache(tmp_path / "old", *ids_labels(), features, relu_data()[1], relu_data()[2], shard_size=4,
                      compression="zstd")
    index = json.loads((old.path / CACHE_JSON).read_text())
    del index["compression"]                                # as written before the choice existed
    index["checksum"] = _index_checksum(index)
    (old.path / CACHE_JSON).write_text(json.dumps(index, indent=2) + "\n")
    again = FeatureCache(old.path)
    assert again.compression == "zstd"
    assert np.array_equal(again.read_shard(1)["features"], features[4:8].astype(np.float16))


def test_resume_keeps_the_cache_s_compression_and_refuses_another(tmp_path):
    from pipeline.cache import resolve_compression

    out = tmp_path / "c"
    begin_cache(out, "f" * 64, {"a": 1}, 2, fmt="zarr", compression="zstd")
    assert resolve_compression(out, "zarr", None) == "zstd"             # a resume keeps its codec
    with pytest.raises(FoleyError, match="started with --compression zstd"):
        resolve_compression(out, "zarr", "lz4")
    with pytest.raises(FoleyError, match="started with --compression zstd"):
        begin_cache(out, "f" * 64, {"a": 1}, 2, fmt="zarr", compression="none")
    assert resolve_compression(out, "zarr", "lz4", overwrite=True) == "lz4"
    progress = json.loads((out / PROGRESS_JSON).read_text())
    del progress["compression"]                             # started before the choice existed
    (out / PROGRESS_JSON).write_text(json.dumps(progress))
    assert resolve_compression(out, "zarr", None) == "zstd"
    assert resolve_compression(tmp_path / "new", "zarr", None) == "lz4"
    assert resolve_compression(tmp_path / "new", "hdf5", None) == "gzip"
    with pytest.raises(FoleyError, match="does not apply to --format hdf5"):
        resolve_compression(tmp_path / "new", "hdf5", "lz4")
