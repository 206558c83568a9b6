"""Caches are identical bytes across code changes: a guard on the on-disk format.

Small caches are built through the public writing API from inputs that are bit-exact on any CPU
(integers from a seeded PCG64 generator scaled by powers of two, so float16 and float32 hold them
exactly; fixed ids, labels, lengths and failure records), in both formats and both feature dtypes,
and every shard's digest (`shard_sha256`), cache.json and failures.jsonl are compared with sha256
values recorded from the code at commit e3cabbd. cache.json
holds no timestamps or library versions, so it is compared whole.

The bytes of a shard also depend on the storage libraries (zarr / zstd, h5py / libhdf5): the
recorded digests are valid for the versions in REFERENCE_VERSIONS, and the byte comparison is
skipped, saying so, under other versions (the determinism test still runs). To re-record after a
deliberate format change, run this file with FOLEY_RECORD_CACHE_BYTES=1 and paste what it prints.

The caches are written with each format's original codec (zstd-1 for Zarr, gzip-1 for HDF5; the
Zarr default is now lz4, `--compression`), whose shard bytes are the recorded ones; cache.json's
digests include the "compression" field every cache.json now carries.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from pipeline.cache import (CACHE_JSON, FAILURES_JSONL, SHARDS_DIR, FeatureCache, ShardWriter, begin_cache,
                            finalize_cache, fingerprint, shard_name, shard_sha256, write_cache)

SEED = 12
N, T, D = 7, 6, 10          # clips, frames, feature dim: 3 shards of 3 with SHARD_SIZE
SHARD_SIZE = 3
LENGTHS = [6, 4, 6, 1, 5, 6, 3]
IDS = [f"clip{i:03d}" for i in range(N)]
LABELS = ["Dropping [something]", "Hitting [something] with [something]", "Tapping [x]", "é ü label",
          "Pushing [something]", "", "Tearing [something] into two pieces"]
FAILURES = [{"id": "bad002", "path": "videos/bad002.webm", "reason": "no_audio", "detail": "no audio stream"},
            {"id": "bad001", "path": "videos/bad001.webm", "reason": "decode_error", "detail": "EOF",
             "frames": 3},
            {"id": "bad003", "path": "videos/bad003.webm", "reason": "too_short", "detail": "2 frames"}]
CONFIG = {"backbone": "reference", "frames": T, "size": 32, "manifest": {"path": "ann.json", "n": N + 2}}
CASES = [("zarr", "float16"), ("zarr", "float32"), ("hdf5", "float16"), ("hdf5", "float32")]
CODEC = {"zarr": "zstd", "hdf5": "gzip"}        # the codec each format's reference bytes were written with

REFERENCE_VERSIONS = {"zarr": "3.1.6", "numcodecs": "0.16.6", "h5py": "3.16.0", "hdf5": "2.0.0", "numpy_major": "2"}
EXPECTED = {   # (writer, fmt, dtype) -> digests; shards recorded at e3cabbd
    ("by_hand", "zarr", "float16"): {
        "shards": {
            "shard-00000.zarr": "f55373fdcb8b84709be01d2f8743476c999ce1351321cf780092f14deb828a17",
            "shard-00001.zarr": "ec0d9d1b86cd742e70a16ff5e7d4cbe8eb5d126b30c46c9050cf92a60f742a78",
            "shard-00002.zarr": "cacdb4961b4ec951abaa62cebe2c94c574812788a1ded3df689ba6e8556b3f5a",
        },
        "cache.json": "6bd684cb8fde3a3ef0542f9b42e9ac47962de275d2489130703604e37c8525d3",
        "failures.jsonl": "9278fe850dbeaf2771869d0d8816c18c11e7ea809ee0619c418b5f50ecaab4c2",
    },
    ("write_cache", "zarr", "float16"): {
        "shards": {
            "shard-00000.zarr": "8f65a9efe0064b8775c061f6397935914530b77fd92e08d8ebb05bb5f6153d47",
            "shard-00001.zarr": "318508ba1ace7e8600e3ea876264aa1d704e5dbd637dd8a07796d4b2bef79a79",
            "shard-00002.zarr": "682da6068e22a1372ede1accc122ab981c91da9a58d987f9efa1c09faa9d5e73",
        },
        "cache.json": "6a070a4ab6855e8de509136cad380ebf9e3ae717d0fc0a2792c60d0e49841c92",
        "failures.jsonl": "bd8ad4e02bae5c50583173ab0f1e591c46dfffd3b290575a46f2e28f94b14e27",
    },
    ("by_hand", "zarr", "float32"): {
        "shards": {
            "shard-00000.zarr": "09415b38c505d0e02e85dfeeb39ac98f18d06409fe114c166f49a014d48552d4",
            "shard-00001.zarr": "7e32005de7f0bea207448dd8228d2ea91397ab143e0de9ae5c56f1f0ba81cfab",
            "shard-00002.zarr": "45ee36eaf933866fdfdd111d165668c1fb92a38766ad219943e38e0a937fb990",
        },
        "cache.json": "88ab51920ce3b59eb41cb6e29c9f8d0b7502f2022c6edf591f99864fc8bceed5",
        "failures.jsonl": "9278fe850dbeaf2771869d0d8816c18c11e7ea809ee0619c418b5f50ecaab4c2",
    },
    ("write_cache", "zarr", "float32"): {
        "shards": {
            "shard-00000.zarr": "44e161498c51131b159e5f32a50faf1ac2c3037faf83fe47031e9ab62b80a064",
            "shard-00001.zarr": "4cbd4a50b24addc61cd372dbf0f1b8ef78af5c339ae76853aef8a93d7faa9a0b",
            "shard-00002.zarr": "f0126d0293ff660ced2f2121dbebd19f5af54ac88b52e3f85dfa483cf9cf4db5",
        },
        "cache.json": "53e6fa3824cd7beb8851e61a5d6c1a6190b40e6e8b3d79549ccb3ff9bb23f79c",
        "failures.jsonl": "bd8ad4e02bae5c50583173ab0f1e591c46dfffd3b290575a46f2e28f94b14e27",
    },
    ("by_hand", "hdf5", "float16"): {
        "shards": {
            "shard-00000.h5": "842209c21d89263984746b3f39f074bac3124fc51f8b4fb6fbf15b40054e9e36",
            "shard-00001.h5": "263f56552b05998e2446f93be8d11a4226f291c8d8efb36a6ef9eeedbbbf7b75",
            "shard-00002.h5": "9a43b6b8ced1016baead6fe0d537f174763502f98f956efbe73538d73ff25117",
        },
        "cache.json": "05c0b6ac26c9000b543a3819d6d07cabc478ca8223d6b15596a0c6375c913930",
        "failures.jsonl": "9278fe850dbeaf2771869d0d8816c18c11e7ea809ee0619c418b5f50ecaab4c2",
    },
    ("write_cache", "hdf5", "float16"): {
        "shards": {
            "shard-00000.h5": "e1f6d307ae569d156d76fea3f5c1d1e9eeddc1798692d5123012530564d0492a",
            "shard-00001.h5": "b13484c5fe72f410e4cdd3396fc5e07ccf73f8e8402bfacc9ac0cede77eb23c3",
            "shard-00002.h5": "68e5649a13f3ea5757ab864ce41160253ee467526bded55c351b3b5a628168b2",
        },
        "cache.json": "cf13c6e30cbf0d3dcab623d413dafff16ad7c8988298080b8fb595ac9948bb3a",
        "failures.jsonl": "bd8ad4e02bae5c50583173ab0f1e591c46dfffd3b290575a46f2e28f94b14e27",
    },
    ("by_hand", "hdf5", "float32"): {
        "shards": {
            "shard-00000.h5": "79e77c7a4839f6ef19685fc3d6e8ac30d2a0b21cb9f05cbdf33752952a96c3d7",
            "shard-00001.h5": "1c98e512b1b6893df1d56999f3c7de813a688253a44931f40c1ab94a80a78f4b",
            "shard-00002.h5": "0643592a7f82d8bf9bfd6bccd21d88f830d08bccb1fcce75f5d5c21d53c3fa51",
        },
        "cache.json": "779324fb3fe53c9f13b5f791e2b92e58113a780eac6d43dcfda5229d85c675ab",
        "failures.jsonl": "9278fe850dbeaf2771869d0d8816c18c11e7ea809ee0619c418b5f50ecaab4c2",
    },
    ("write_cache", "hdf5", "float32"): {
        "shards": {
            "shard-00000.h5": "44d939de5e2589c970d30c2f4fe5118c27f12dee8db185bb85b62483842e2afb",
            "shard-00001.h5": "4db97c0d9b767ded408ebe3872fa27ee55dd04e052d2f633ec368c17a70fc77d",
            "shard-00002.h5": "bc129e40dcc7fe03b1cca0aaa5aff9df7d9b1f16c59cb0d99ed0adefee47b33c",
        },
        "cache.json": "42a484037071bb775acd8e57eae10dfbd31dade695e352822964788ed106f260",
        "failures.jsonl": "bd8ad4e02bae5c50583173ab0f1e591c46dfffd3b290575a46f2e28f94b14e27",
    },
}


def _versions() -> dict:
    import h5py
    import numcodecs
    import zarr
    return {"zarr": zarr.__version__, "numcodecs": numcodecs.__version__, "h5py": h5py.__version__,
            "hdf5": h5py.version.hdf5_version, "numpy_major": np.__version__.split(".")[0]}


def _inputs():
    """features [N, T, D] float32 (ReLU-like: ~half exact zeros), envelopes [N, T] in [0, 1]; zero
    after each clip's length, as extraction pads."""
    rng = np.random.Generator(np.random.PCG64(SEED))
    features = np.maximum(rng.integers(-2047, 2048, size=(N, T, D)), 0).astype(np.float32) / 256
    envelopes = rng.integers(0, 1025, size=(N, T)).astype(np.float32) / 1024
    for i, n in enumerate(LENGTHS):
        features[i, n:] = 0
        envelopes[i, n:] = 0
    return features, envelopes


def _write_by_hand(cache_dir: Path, fmt: str, dtype: str):
    """The path extraction takes: begin_cache, one ShardWriter per shard (failures spread over
    shards, added out of order, one shard holding only failures), finalize_cache."""
    features, envelopes = _inputs()
    fp = fingerprint({"config": CONFIG, "dtype": dtype, "frames": T, "dim": D})
    plan = [(range(0, 4), [FAILURES[2]]), (range(4, 4), [FAILURES[1], FAILURES[0]]), (range(4, 7), [])]
    todo = begin_cache(cache_dir, fp, CONFIG, len(plan), fmt=fmt, compression=CODEC[fmt])
    assert todo == [0, 1, 2]
    for k, (rows, failures) in enumerate(plan):
        with ShardWriter(cache_dir / SHARDS_DIR / shard_name(k, fmt), fmt, capacity=len(rows), frames=T,
                         dim=D, dtype=dtype, compression=CODEC[fmt]) as w:
            for i in rows:
                w.append(IDS[i], LABELS[i], features[i], envelopes[i], LENGTHS[i])
            for f in failures:
                w.add_failure(dict(f))
    finalize_cache(cache_dir)


def _write_with_write_cache(cache_dir: Path, fmt: str, dtype: str):
    features, envelopes = _inputs()
    write_cache(cache_dir, IDS, LABELS, features, envelopes, LENGTHS, fmt=fmt, dtype=dtype,
                shard_size=SHARD_SIZE, config=CONFIG, failures=FAILURES, compression=CODEC[fmt]).close()


WRITERS = {"write_cache": _write_with_write_cache, "by_hand": _write_by_hand}


def _digests(cache_dir: Path) -> dict:
    """{"shards": {name: shard_sha256}, cache.json: sha256, failures.jsonl: sha256}."""
    shards = sorted((cache_dir / SHARDS_DIR).iterdir())
    return {"shards": {p.name: shard_sha256(p) for p in shards},
            CACHE_JSON: hashlib.sha256((cache_dir / CACHE_JSON).read_bytes()).hexdigest(),
            FAILURES_JSONL: hashlib.sha256((cache_dir / FAILURES_JSONL).read_bytes()).hexdigest()}


@pytest.mark.parametrize("fmt,dtype", CASES)
def test_cache_bytes_are_deterministic_and_read_back(tmp_path, fmt, dtype):
    """Two writes of the same inputs give the same bytes (the precondition of the reference
    digests), cache.json has no time or version field, and the cache reads back what went in."""
    for name, write in WRITERS.items():
        write(tmp_path / f"{name}-a", fmt, dtype)
        write(tmp_path / f"{name}-b", fmt, dtype)
        assert _digests(tmp_path / f"{name}-a") == _digests(tmp_path / f"{name}-b")
        index = json.loads((tmp_path / f"{name}-a" / CACHE_JSON).read_text())
        assert not {k for k in index if "time" in k or "date" in k or "version" in k} - {"schema_version"}

    features, envelopes = _inputs()
    for name in WRITERS:
        cache = FeatureCache(tmp_path / f"{name}-a")
        try:
            assert cache.ids == IDS and cache.labels == LABELS
            assert cache.lengths.tolist() == LENGTHS
            got = cache.read_many(range(N))
            np.testing.assert_array_equal(np.asarray(got["features"], dtype=np.float32), features)
            np.testing.assert_array_equal(cache.envelopes, envelopes)
            assert sorted(f["id"] for f in cache.failures) == ["bad001", "bad002", "bad003"]
        finally:
            cache.close()


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize("fmt,dtype", CASES)
def test_cache_bytes_match_the_reference(tmp_path, fmt, dtype, writer):
    """Every shard digest, cache.json and failures.jsonl equal the values recorded before the
    reorganisation (same inputs, same library versions)."""
    WRITERS[writer](tmp_path / "cache", fmt, dtype)
    got = _digests(tmp_path / "cache")
    if os.environ.get("FOLEY_RECORD_CACHE_BYTES"):
        print(f"\nRECORD {(writer, fmt, dtype)!r}: {got!r}")
        return
    versions = _versions()
    if versions != REFERENCE_VERSIONS:
        pytest.skip(f"reference digests were recorded with {REFERENCE_VERSIONS}, this env has {versions}")
    assert got == EXPECTED[(writer, fmt, dtype)]
