"""Smoke tests of the benchmark code paths at tiny sizes (benchmarks/run.py, extract.py, storage.py,
gpu.py on the CPU). They check structure and arithmetic, never timings: no speed thresholds here."""
from __future__ import annotations

import json

import pytest
import torch

from benchmarks import extract as bench_extract
from benchmarks import run as bench_run
from benchmarks import storage as bench_storage

SIZE = 32           # frame size of the smoke runs: the model is cheap there


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)            # the machine is shared: keep the smoke runs light
    yield
    torch.set_num_threads(threads)


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
    assert len(names) == 5 and names[0].startswith("cache (zarr")
    by = {v["variant"]: v for v in s["variants"]}
    npy16 = next(v for n, v in by.items() if n.startswith("npy float16"))
    npy32 = next(v for n, v in by.items() if n.startswith("npy float32"))
    assert npy16["files"] == npy32["files"] == s["clips"]
    assert npy32["bytes"] > npy16["bytes"]                          # same values, twice the bytes
    assert s["npy_comparison"]["files_npy_per_video"] == s["clips"]
    assert s["compression_gain"] == pytest.approx(by["zarr float16 raw (no compressor)"]["bytes"]
                                                  / s["variants"][0]["bytes"], rel=1e-2)
    assert 0 <= s["zero_fraction"] <= 1
    assert not any(p.name.startswith("npy-") for p in tmp_path.iterdir())   # scratch copies removed


def test_run_writes_one_json_with_the_four_ratios(tmp_path, monkeypatch):
    calls = {}

    def fake_train_head(quick, device, workdir):        # benchmarks/train_head.py has its own tests
        calls.update(quick=quick, device=device)
        return {"cache_speedup": 25.0, "loader_efficiency": 0.9}

    monkeypatch.setattr(bench_run, "train_head_benchmark", fake_train_head)
    out = tmp_path / "out.json"
    assert bench_run.main(["--quick", "--size", str(SIZE), "--clips", "6", "--batch-size", "2", "--rounds", "1",
                           "--json", str(out), "--workdir", str(tmp_path / "work")]) == 0
    r = json.loads(out.read_text())
    for key in ("extract_efficiency", "cache_speedup", "loader_efficiency", "storage_ratio"):
        assert isinstance(r[key], float), key
    assert list(r)[:4] == ["extract_efficiency", "cache_speedup", "loader_efficiency", "storage_ratio"]
    assert calls == {"quick": True, "device": "cpu"}
    assert r["extract"]["size"] == SIZE and r["extract"]["rounds"] == 1 and r["other_sizes"] == []
    assert r["machine"]["cores"] >= 1 and r["machine"]["torch"] == torch.__version__
    assert r["peak_rss_mib"]["self"] > 0 and r["seconds"] > 0
    assert set(r["targets"]) == set(bench_run.TARGETS)
    assert r["targets"]["cache_speedup"]["met"] is True
    table = bench_run.summary_table(r)
    assert "extract_efficiency" in table and "storage_ratio" in table


def test_targets_are_checked_in_the_right_direction():
    r = bench_run.check_targets({"extract_efficiency": 0.9, "cache_speedup": 19.0, "loader_efficiency": None,
                                 "storage_ratio": 0.3})
    assert r["extract_efficiency"]["met"] is True and r["cache_speedup"]["met"] is False
    assert r["loader_efficiency"]["met"] is None and r["storage_ratio"]["met"] is True
    assert bench_run.check_targets({"storage_ratio": 0.6})["storage_ratio"]["met"] is False


def test_missing_train_head_module_is_reported_not_fatal(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_train_head(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "benchmarks" and fromlist and "train_head" in fromlist:
            raise ImportError("No module named 'benchmarks.train_head'")
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", no_train_head)
    r = bench_run.train_head_benchmark(True, "cpu", tmp_path)
    assert "not available" in r["error"] and "cache_speedup" not in r


def test_flops_per_clip_match_the_layout_document():
    from benchmarks.gpu import clip_flops

    assert clip_flops(224) / 1e9 == pytest.approx(974.2, abs=0.5)     # model3d_1-checkpoint-layout.md
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
