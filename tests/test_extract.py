"""extract-features end to end on real tiny videos: shapes, envelopes, resume after kill -9,
torchrun == one process, zarr == hdf5, refused resumes, published checkpoints, hostile pickles."""
import json
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.cache import FeatureCache
from pipeline.data import SOUND12
from pipeline.extract import extract_features
from pipeline.media import load_clip
from tests.mediakit import make_video, ssv2_entry
from tests.modelkit import Evil, published_state, reference_feature_map, rel_l2, write_published
from tests.runkit import assert_one_line_error, foleycache

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32
N_GOOD = 8


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """8 good clips (one 2.5 s), one video-only file, one missing video."""
    root = tmp_path_factory.mktemp("ds")
    videos = root / "videos"
    videos.mkdir()
    ann = []
    for i in range(N_GOOD):
        make_video(videos / f"{100 + i}.webm", seconds=2.5 if i == 3 else 4.5, width=96, height=72,
                   impulses=(0.3 + 0.4 * i,))
        ann.append(ssv2_entry(100 + i, SOUND12[i % 12]))
    make_video(videos / "200.webm", with_audio=False, width=96, height=72)
    ann += [ssv2_entry("200", SOUND12[0]), ssv2_entry("201", SOUND12[1])]
    (root / "train.json").write_text(json.dumps(ann))
    return root


# this process's environment (its thread counts): in-process and CLI caches are compared byte for byte
cli = partial(foleycache, check=True, env=None, timeout=None)


def common(ds, out, *extra):
    return ["extract-features", "--videos", ds / "videos", "--annotations", ds / "train.json", "--out", out,
            "--size", SIZE, "--shard-size", 2, "--calibration-clips", 3, "--quiet", *extra]


def assert_same_cache(a, b):
    a, b = FeatureCache(a), FeatureCache(b)
    assert a.ids == b.ids and a.fingerprint == b.fingerprint
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert np.array_equal(x["features"], y["features"]), i
        assert np.array_equal(x["envelope"], y["envelope"]) and x["length"] == y["length"]


def shard_bytes(cache_dir):
    files = sorted(p for p in (Path(cache_dir) / "shards").rglob("*") if p.is_file())
    return {str(p.relative_to(cache_dir)): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def reference_cache(dataset):
    out = dataset / "ref"
    summary = extract_features(videos=dataset / "videos", annotations=dataset / "train.json", out=out, size=SIZE,
                               shard_size=2, calibration_clips=3, progress=False)
    return out, summary


def test_cache_contents_match_the_data_contract(dataset, reference_cache):
    out, summary = reference_cache
    assert summary["candidates"] == N_GOOD + 2 and summary["cached"] == N_GOOD
    assert summary["failed_by_reason"] == {"missing": 1, "no_audio_stream": 1}
    c = FeatureCache(out)
    assert len(c) == N_GOOD and c.ids == [str(100 + i) for i in range(N_GOOD)]
    assert c.labels[0] == SOUND12[0]
    item = c[3]
    assert item["features"].shape == (48, 512) and item["features"].dtype == np.float16   # 512 * ceil(32/32)^2
    assert item["length"] == 30 and np.all(item["envelope"][30:] == 0)
    for i in range(N_GOOD):   # the cached envelope is the data contract's, from load_clip
        clip = load_clip(dataset / "videos" / f"{100 + i}.webm", size=SIZE)
        np.testing.assert_array_equal(c[i]["envelope"], clip.envelope)
        assert c[i]["length"] == clip.length
    failures = {f["id"]: f["reason"] for f in c.failures}
    assert failures == {"200": "no_audio_stream", "201": "missing"}
    assert (out / "backbone.safetensors").exists()   # calibrated random init, reusable for other splits
    assert c.config["backbone_provenance"]["checkpoint"] == "none"


def test_other_split_with_the_calibrated_backbone_shares_the_fingerprint(dataset, reference_cache):
    out, _ = reference_cache
    val = dataset / "val"
    extract_features(videos=dataset / "videos", annotations=dataset / "train.json", out=val, size=SIZE,
                     shard_size=4, limit=4, checkpoint=out / "backbone.safetensors", progress=False)
    assert FeatureCache(val).fingerprint == FeatureCache(out).fingerprint
    np.testing.assert_array_equal(FeatureCache(val)[0]["features"], FeatureCache(out)[0]["features"])


@pytest.mark.slow
def test_kill_minus_9_then_resume_is_bit_identical(dataset, reference_cache, tmp_path):
    """Slow (~60 s on 2 cores): the default run checks the same through
    test_reliability.py::test_kill_9_then_resume_gives_the_identical_cache (four kills, identical tree)."""
    ref, _ = reference_cache
    out = tmp_path / "killed"
    for delay_shards in (1, 3):     # kill at two different points, then resume
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", *map(str, common(dataset, out))],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            shards = out / "shards"
            done = [p for p in shards.iterdir() if "tmp" not in p.name] if shards.is_dir() else []
            if len(done) >= delay_shards:
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not (out / "cache.json").exists() or delay_shards > 3
    cli(*common(dataset, out))
    assert_same_cache(ref, out)
    assert shard_bytes(ref) == shard_bytes(out)
    assert (ref / "cache.json").read_bytes() == (out / "cache.json").read_bytes()


def test_torchrun_two_ranks_equals_one_process(dataset, reference_cache, tmp_path):
    ref, _ = reference_cache
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "cli.py",
                           *map(str, common(dataset, out))], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_cache(ref, out)
    assert shard_bytes(ref) == shard_bytes(out)


def test_zarr_and_hdf5_hold_identical_numbers(dataset, reference_cache, tmp_path):
    ref, _ = reference_cache
    cli(*common(dataset, tmp_path / "h5", "--format", "hdf5"))
    assert any(p.suffix == ".h5" for p in (tmp_path / "h5" / "shards").iterdir())
    assert_same_cache(ref, tmp_path / "h5")


def test_resume_with_other_settings_is_refused_without_traceback(dataset, reference_cache):
    ref, _ = reference_cache
    for extra in (["--size", 64], ["--dtype", "float32"], ["--envelope-reduce", "mean"]):
        args = common(dataset, ref)
        args[args.index("--size") + 1] = extra[1] if extra[0] == "--size" else SIZE
        proc = cli(*args, *(extra if extra[0] != "--size" else []), check=False)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("error:") and "Traceback" not in proc.stderr
        assert "--overwrite" in proc.stderr
    assert FeatureCache(ref).config["preprocess"]["size"] == SIZE     # nothing was touched


def test_verify_passes_then_fails_on_one_flipped_byte(dataset, tmp_path):
    out = tmp_path / "v"
    cli(*common(dataset, out))
    assert cli("cache-info", out, "--verify").returncode == 0
    chunk = max((p for p in (out / "shards").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    proc = cli("cache-info", out, "--verify", check=False)
    assert proc.returncode != 0
    assert chunk.relative_to(out / "shards").parts[0] in proc.stdout + proc.stderr


def test_published_checkpoint_features_match_an_independent_implementation(dataset, tmp_path):
    """Random weights in the published layout: cached features within 3% (relative L2) of F.conv3d
    from the layout table on the same decoded frames (bf16 autocast + float16 storage included)."""
    state = published_state(seed=3)
    ckpt = write_published(tmp_path / "model_best.pth.tar", state)
    out = tmp_path / "pub"
    cli("extract-features", "--videos", dataset / "videos", "--annotations", dataset / "train.json", "--out", out,
        "--size", 64, "--limit", 2, "--checkpoint", ckpt, "--quiet")
    c = FeatureCache(out)
    assert c.config["backbone_provenance"]["checkpoint_format"] == "published"
    conv = {k.removeprefix("module.conv_column."): v for k, v in state.items() if "conv_column" in k}
    for i in range(2):
        clip = load_clip(dataset / "videos" / f"{c.ids[i]}.webm", size=64)
        with torch.no_grad():
            ref = reference_feature_map({"module.conv_column." + k: v for k, v in conv.items()}, clip.frames[None])
        ref = ref[0].permute(1, 0, 2, 3).reshape(48, -1)                  # [T, 512*h*w] channel-major
        assert c[i]["features"].shape == (48, 512 * 4)
        assert rel_l2(torch.from_numpy(c[i]["features"].astype(np.float32)), ref) < 0.03


@pytest.mark.parametrize("size,dim", [(224, 25088), (112, 8192)])
def test_feature_shapes_at_real_sizes(dataset, tmp_path, size, dim):
    out = tmp_path / f"s{size}"
    extract_features(videos=dataset / "videos", annotations=dataset / "train.json", out=out, size=size, limit=1,
                     calibration_clips=1, progress=False)
    assert FeatureCache(out)[0]["features"].shape == (48, dim)


def test_malicious_checkpoint_is_refused_and_never_runs(dataset, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth.tar"
    torch.save({"epoch": 0, "state_dict": {"block1.0.weight": Evil(marker)}}, evil)
    proc = cli("extract-features", "--videos", dataset / "videos", "--annotations", dataset / "train.json",
               "--out", tmp_path / "c", "--size", SIZE, "--checkpoint", evil, check=False)
    assert proc.returncode == 2 and "refused" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()
    assert not (tmp_path / "c" / "cache.json").exists()


def test_bad_flags_are_one_line_errors(dataset, tmp_path):
    for args, needle in ((["--format", "parquet"], "--format"), (["--backbone", "resnet9000"], "resnet9000"),
                         (["--checkpoint", tmp_path / "nope.pt"], "nope.pt"), (["--size", 8], "--size")):
        proc = cli("extract-features", "--videos", dataset / "videos", "--annotations", dataset / "train.json",
                   "--out", tmp_path / "c", *args, check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        assert_one_line_error(proc.stderr, needle)
