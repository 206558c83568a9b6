"""Smoke tests of the benchmark code paths at tiny sizes (benchmarks/run.py, extract.py, storage.py,
train_head.py, metrics.py, gpu.py on the CPU). They check structure and arithmetic, never timings:
no speed thresholds here."""
from __future__ import annotations

import json

import pytest
import torch

from benchmarks import extract as bench_extract
from benchmarks import metrics as bench_metrics
from benchmarks import run as bench_run
from benchmarks import storage as bench_storage
from benchmarks import train_head as bench_train_head

SIZE = 32           # frame size of the smoke runs: the model is cheap there


pytestmark = pytest.mark.usefixtures("one_thread")      # tests/conftest.py: the machine is shared


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """A few synthetic clips (small frames) and an annotation list of the decodable ones."""
    from pipeline.synthetic import TRAIN_JSON, make_synthetic

    out = tmp_path_factory.mktemp("bench-clips")
    summary = make_synthetic(out, n_train=5, n_val=0, seed=1, jobs=1, progress=False, size=(64, 48))
    good = [e for e in json.loads((out / TRAIN_JSON).read_text()) if e["id"] not in summary["faulty"]]
    annotations = out / "good.json"
    annotations.write_text(json.dumps(good))
    return out / "videos", annotations


@pytest.fixture(scope="module")
def extract_result(clips, tmp_path_factory):
    videos, annotations = clips
    return bench_extract.run(videos, annotations, tmp_path_factory.mktemp("bench-extract"), size=SIZE,
                             batch_size=2, workers=1, device="cpu")


def test_extract_benchmark_measures_three_phases_on_the_same_clips(extract_result):
    r = extract_result
    assert r["clips"] >= 4 and r["size"] == SIZE and r["workers"] == 1 and r["device"] == "cpu"
    assert r["rounds"] == 2 and len(r["extract"]["seconds"]) == 2
    for phase in ("decode_only", "backbone_only"):      # before, between and after the extract rounds
        assert len(r[phase]["seconds"]) == 3 and all(s > 0 for s in r[phase]["seconds"])
    n, d, b = r["clips"], r["decode_only"]["seconds"], r["backbone_only"]["seconds"]
    for k, e in enumerate(r["extract"]["seconds"]):     # each round against its neighbours
        reference = min(2 * n / (d[k] + d[k + 1]), 2 * n / (b[k] + b[k + 1]))
        assert r["efficiency_per_round"][k] == pytest.approx(n / e / reference, rel=2e-3)
    assert r["extract_efficiency"] == pytest.approx(sum(r["efficiency_per_round"]) / 2, rel=1e-3)
    assert r["bound"] in ("decode", "backbone")


def test_storage_benchmark_compares_layouts_on_the_real_cache(extract_result, tmp_path):
    from pipeline.cache import cache_info

    s = bench_storage.run(extract_result["cache_dir"], tmp_path)
    info = cache_info(extract_result["cache_dir"])
    assert s["storage_ratio"] == info["storage_ratio"] and 0 < s["storage_ratio"] < 1
    names = [v["variant"] for v in s["variants"]]
    assert len(names) == 6 and names[0] == f"cache (zarr, float16, {info['compression']})"
    assert set(s["storage_ratio_by_codec"]) == {"lz4", "zstd", "none"}
    assert s["storage_ratio_by_codec"][info["compression"]] == s["storage_ratio"]
    by = {v["variant"]: v for v in s["variants"]}
    npy16 = next(v for n, v in by.items() if n.startswith("npy float16"))
    npy32 = next(v for n, v in by.items() if n.startswith("npy float32"))
    assert npy16["files"] == npy32["files"] == s["clips"]
    assert npy32["bytes"] > npy16["bytes"]                          # same values, twice the bytes
    assert s["npy_comparison"]["files_npy_per_video"] == s["clips"]
    assert s["compression_gain"] == pytest.approx(by["cache (zarr, float16, none)"]["bytes"]
                                                  / s["variants"][0]["bytes"], rel=1e-2)
    assert 0 <= s["zero_fraction"] <= 1
    assert not any(p.name.startswith("npy-") for p in tmp_path.iterdir())   # scratch copies removed


def test_run_writes_one_json_with_every_ratio_the_cpu_and_the_precision(tmp_path, monkeypatch):
    calls = {}

    def fake_train_head(quick, device, workdir, **kwargs):      # the real one: test_train_head_benchmark_...
        calls.update(quick=quick, device=device, **kwargs)
        return {"cache_speedup": 25.0, "loader_efficiency": 0.9, "loader_vs_npy_float32": 0.5,
                "streaming_vs_npy_float32": 0.85,
                "backbone_precision": "fp32", "head_amp": "off", "cached_amp": "off"}

    monkeypatch.setattr(bench_run, "train_head_benchmark", fake_train_head)
    monkeypatch.setattr(bench_metrics, "CLIPS", 50)
    out = tmp_path / "out.json"
    assert bench_run.main(["--quick", "--size", str(SIZE), "--clips", "6", "--batch-size", "2", "--rounds", "1",
                           "--json", str(out), "--workdir", str(tmp_path / "work")]) == 0
    r = json.loads(out.read_text())
    for key in bench_run.HEADLINE:
        assert isinstance(r[key], float), key
    assert tuple(r)[:len(bench_run.HEADLINE)] == bench_run.HEADLINE
    assert calls["quick"] is True and calls["device"] == "cpu" and calls["size"] == SIZE
    assert calls["precision"] == "fp32" and calls["videos"].is_dir()    # the quick default; the same clips
    assert calls["weights"].is_file()              # the extract benchmark's calibrated model3d_1, not a second one
    assert r["precision"] == "fp32" and r["extract"]["precision"] == "fp32"
    assert r["phases"]["extract"]["precision"] == {"backbone": "fp32"}
    assert r["phases"]["train_head"]["precision"]["head_amp"] == "off"
    for name in ("make_clips", "extract", "storage", "train_head", "metrics"):
        assert r["phases"][name]["seconds"] >= 0 and len(r["phases"][name]["load_average"]) == 2
    assert r["extract"]["size"] == SIZE and r["extract"]["rounds"] == 1 and r["other_sizes"] == []
    m = r["machine"]
    assert m["cores"] >= 1 and m["torch"] == torch.__version__ and m["cpu"] and m["kernels"]
    assert r["metrics"]["clips"] > 0 and r["metrics_evaluate_s"] == r["metrics"]["seconds"]
    assert r["peak_rss_mib"]["self"] > 0 and r["seconds"] > 0
    assert set(r["targets"]) == set(bench_run.TARGETS)
    assert r["targets"]["cache_speedup"]["met"] is True and r["targets"]["loader_vs_npy_float32"]["met"] is False
    table = bench_run.summary_table(r)
    assert "extract_efficiency" in table and "loader_vs_npy_float32" in table and m["cpu"] in table


def test_precision_auto_is_fp32_where_the_kernels_are_held_to_avx2(monkeypatch):
    for name, value in bench_run.AVX2_ENV.items():
        monkeypatch.setenv(name, value)
    assert bench_run.resolve_precision("auto", "cpu") == "fp32"
    assert bench_run.resolve_precision("bf16", "cpu") == "bf16"        # asked for explicitly
    assert bench_run.machine()["kernels"].startswith("AVX2")
    for name in bench_run.AVX2_ENV:
        monkeypatch.delenv(name)
    assert bench_run.isa_limit() == {}


def test_train_head_precisions_map_to_backbone_and_head():
    cpu = torch.device("cpu")
    assert bench_train_head.phase_precisions("fp32", cpu) == ("fp32", "off")
    assert bench_train_head.phase_precisions("bf16", cpu) == ("bf16", "bf16")
    assert bench_train_head.phase_precisions("auto", cpu)[1] == "auto"
    with pytest.raises(ValueError):
        bench_train_head.phase_precisions("fp16", cpu)


def test_train_head_benchmark_measures_both_sides_and_every_loader_reader(clips, tmp_path, monkeypatch):
    """benchmarks/train_head.py in this process at a tiny size: one round, a small loader cache."""
    monkeypatch.setattr(bench_train_head, "CACHED_MIN_CLIPS", 20)
    monkeypatch.setattr(bench_train_head, "LOADER_PASSES", 1)
    videos, annotations = clips
    r = bench_train_head.measure(True, "cpu", tmp_path, sizes=[SIZE], rounds=1, precision="fp32",
                                 videos=videos, annotations=annotations, loader_clips=40)
    s = r["by_size"][0]
    assert s["backbone_precision"] == "fp32" and s["head_amp"] == "off" and r["cached_amp"] == "off"
    assert s["frozen_clips"] == r["clips"] >= 4 and s["cached_clips"] == 20      # tiled to CACHED_MIN_CLIPS
    assert s["cache_speedup"] == pytest.approx(s["frozen_backbone_s_per_clip"] / s["cached_s_per_clip"], rel=0.02)
    loader = r["loader"]
    cps = loader["clips_per_s"]
    assert set(cps) == {"default", "preload_ram", "stream_lz4", "stream_zstd", "stream_none", "shard_files",
                        "npy_float32_memmap"}
    assert loader["default_preload"] == "ram" and loader["default_codec"] == "lz4"    # a small cache fits
    assert r["loader_vs_npy_float32"] == pytest.approx(cps["default"] / cps["npy_float32_memmap"], rel=0.01)
    assert r["streaming_vs_npy_float32"] == pytest.approx(cps["stream_lz4"] / cps["npy_float32_memmap"], rel=0.01)
    assert r["loader_efficiency"] == pytest.approx(cps["stream_lz4"] / cps["shard_files"], rel=0.01)
    assert loader["clips"] == 40 and set(loader["storage_ratio"]) == {"lz4", "zstd", "none"}
    disk = loader["disk_bytes_per_clip"]
    assert disk["lz4"] < disk["none"] < disk["npy_float32"] and disk["zstd"] < disk["none"]
    cold = loader["cold"]
    assert cold["possible"] is False or set(cold["vs_npy_float32_cold"]) == {"lz4", "zstd", "none"}
    assert not (tmp_path / "loader-npy-float32").exists()           # scratch copies removed


def test_metrics_benchmark_times_evaluate_without_a_threshold():
    r = bench_metrics.run(clips=60, repeats=2)
    assert r["clips"] == 60 and len(r["seconds_all"]) == 2 and r["seconds"] > 0
    assert r["target_s"] is None            # the 2-second goal is for 2000 clips only
    target, length = bench_metrics.envelopes(40)
    assert target.shape == (40, 48) and target.max() <= 1 and (target[-2:] == 0).all()


def test_targets_are_checked_in_the_right_direction():
    r = bench_run.check_targets({"extract_efficiency": 0.9, "cache_speedup": 19.0, "loader_efficiency": None,
                                 "storage_ratio": 0.3, "metrics_evaluate_s": 2.5})
    assert r["extract_efficiency"]["met"] is True and r["cache_speedup"]["met"] is False
    assert r["loader_efficiency"]["met"] is None and r["storage_ratio"]["met"] is True
    assert r["metrics_evaluate_s"]["met"] is False
    assert bench_run.check_targets({"storage_ratio": 0.36})["storage_ratio"]["met"] is False


def test_missing_train_head_module_is_reported_not_fatal(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_train_head(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "benchmarks" and fromlist and "train_head" in fromlist:
            raise ImportError("No module named 'benchmarks.train_head'")
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", no_train_head)
    r = bench_run.train_head_benchmark(True, "cpu", tmp_path, size=SIZE, rounds=1, precision="fp32",
                                       videos=tmp_path, annotations=tmp_path / "a.json")
    assert "not available" in r["error"] and "cache_speedup" not in r


def test_flops_per_clip_match_the_layout_document():
    from benchmarks.gpu import clip_flops

    assert clip_flops(224) / 1e9 == pytest.approx(974.2, abs=0.5)     # docs/model3d_1.md
    assert clip_flops(112) / 1e9 == pytest.approx(246.1, abs=0.5)


def test_gpu_peak_table_and_floor_arithmetic():
    from benchmarks.gpu import assumed_peak

    assert assumed_peak("NVIDIA H100 80GB HBM3", None)[0] == 989.4
    assert assumed_peak("NVIDIA H100 PCIe", None)[0] == 756.0
    assert assumed_peak("NVIDIA H200", None)[0] == 989.4
    assert assumed_peak("Some GPU", None)[0] is None
    assert assumed_peak("NVIDIA H100", 500.0) == (500.0, "--peak-tflops")


@pytest.mark.slow
def test_gpu_script_runs_end_to_end_on_the_cpu(tmp_path):
    """benchmarks/gpu.py's code paths (everything but CUDA events) at a tiny size, so the one-call
    GPU run does not fail on a typo. Slow: ~1-2 min on 2 shared cores."""
    from benchmarks import gpu

    out = tmp_path / "gpu.json"
    assert gpu.main(["--device", "cpu", "--size", str(SIZE), "--clips", "10", "--batch-sizes", "2",
                     "--train-clips", "16", "--no-compile", "--json", str(out),
                     "--workdir", str(tmp_path / "work")]) == 0
    r = json.loads(out.read_text())
    for section in ("flops", "data", "correctness", "backbone", "extract", "train_head"):
        assert "error" not in r[section], (section, r[section].get("traceback"))
    assert r["correctness"]["ok"] is True
    assert r["train_head"]["extrapolated"] is True and r["train_head"]["preload"] == "ram"
