"""The demo: a tiny end-to-end run (fast), a small one through the CLI and the full default one
(slow: `pytest -m slow tests/test_demo.py`), whose features head on ImageNet features must beat both
baselines on held-out clips of the training look and of an unseen look."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.demo import DEMO_JSON, DEMO_MD, HEADS, MOTION_ENERGY_HEAD, SPLITS, _prepare, run_demo
from pipeline.errors import FoleyError

ROOT = Path(__file__).resolve().parents[1]
TINY_HEADS = {name: dict(options, epochs=1, hidden=16, layers=1)
              for name, options in {**HEADS, **MOTION_ENERGY_HEAD}.items()}


def check_outputs(out: Path, heads):
    summary = json.loads((out / DEMO_JSON).read_text())
    assert summary["status"] == "done"
    keys = [h.replace("-", "_") for h in heads]
    assert set(summary["seconds"]) == {
        "make_synthetic", "make_synthetic_unseen", "extract_train", "extract_val", "extract_unseen",
        *(f"train_{k}" for k in keys), *(f"export_{k}" for k in keys), *(f"export_{k}_unseen" for k in keys)}
    assert summary["settings"]["backbone"] == "mobilenet_v2_spacetime_mid" and summary["settings"]["weights"] == "imagenet"
    for head in heads:
        for suffix in SPLITS.values():
            export = out / "export" / (head + suffix)
            for name in ("report.md", "report.html", "metrics.json", "predictions.h5", "predictions.csv"):
                assert (export / name).is_file(), f"{head}{suffix}/{name}"
            assert list((export / "renders").glob("*.gif")) and list((export / "plots").glob("*.png"))
            metrics = json.loads((export / "metrics.json").read_text())
            assert {"model", "mean_envelope", "shuffled"} <= set(metrics)
            assert metrics["run"]["checkpoint_name"] == "last"
            assert metrics["run_config"]["train_cache"]["dim"] == 96         # pretrained MobileNetV2 after stage 4, pooled
    looks = {json.loads((out / d / "dataset.json").read_text())["look"] for d in ("data", "data-unseen")}
    assert len(looks) == 2, looks
    text = (out / DEMO_MD).read_text()
    assert all(f"{h} head" in text for h in heads) and "mean_envelope" in text
    assert "unseen look" in text and "MobileNetV2" in text
    assert f"The {summary['best_head']} head wins" in text
    return summary


def test_tiny_demo_runs_every_stage(tmp_path):
    torch.set_num_threads(1)
    s = run_demo(out=tmp_path / "d", n_train=6, n_val=3, n_unseen=3, size=64, heads=TINY_HEADS, progress=False,
                 precision="fp32")
    summary = check_outputs(tmp_path / "d", TINY_HEADS)
    assert s["report"] == (tmp_path / "d" / DEMO_MD).read_text()
    assert summary["validation_clips"]["val"] >= 2 and summary["validation_clips"]["unseen"] >= 2


def test_an_earlier_demo_is_replaced_and_any_other_folder_refused(tmp_path):
    earlier = tmp_path / "d"
    (earlier / "runs" / "features").mkdir(parents=True)
    (earlier / DEMO_JSON).write_text("{}")
    _prepare(earlier)
    assert not (earlier / "runs").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    with pytest.raises(FoleyError, match="not empty"):
        run_demo(out=tmp_path / "other", n_train=6, n_val=3, n_unseen=3, size=64, heads=TINY_HEADS, progress=False)


@pytest.mark.slow
def test_small_demo_through_the_cli(tmp_path):
    p = subprocess.run([sys.executable, "-m", "pipeline", "demo", "--out", str(tmp_path / "d"), "--train", "40",
                        "--val", "12", "--unseen", "12", "--size", "64", "--quiet"], capture_output=True, text=True,
                       cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "head wins" in p.stdout and "demo finished in" in p.stdout
    check_outputs(tmp_path / "d", HEADS)


@pytest.mark.slow
def test_default_demo_beats_both_baselines_on_held_out_clips(tmp_path):
    """The acceptance check: `foleycache demo` with its defaults; each head on the pretrained features
    is above both baselines on seed_score and onset_f1 on the held-out clips of the training look and
    of the unseen look (checkpoint-last)."""
    p = subprocess.run([sys.executable, "-m", "pipeline", "demo", "--out", str(tmp_path / "d"), "--quiet"],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = check_outputs(tmp_path / "d", HEADS)
    for head in HEADS:
        for split, suffix in SPLITS.items():
            metrics = json.loads((tmp_path / "d" / "export" / (head + suffix) / "metrics.json").read_text())
            for key in ("seed_score", "onset_f1"):
                assert metrics["model"][key] > metrics["mean_envelope"][key], (head, split, key)
                assert metrics["model"][key] > metrics["shuffled"][key], (head, split, key)
            assert all(summary["beats_baselines"][split][head].values()), (head, split)
