"""train-head (pipeline/train.py, with loader.py, loop.py, runs.py, options.py): schedule, data order,
the run directory, checkpoints, resume after an interruption (kill -9: test_reliability), DDP under torchrun, and the CLI's refusals, on
small real caches."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline import loader, loop, runs
from pipeline import train as tr
from pipeline.distributed import Distributed
from pipeline.errors import FoleyError
from pipeline.head import Head, HeadConfig, InputTransform
from pipeline.runs import RunDescription, load_head
from tests.cachekit import make_signal_cache
from tests.runkit import foleycache, read_metrics

ROOT = Path(__file__).resolve().parent.parent
# Small and fast: a tiny head, a few epochs; 1 thread per process (2 shared cores).
FAST = dict(hidden=32, batch_size=8, lr=3e-3, device="cpu", progress=False, workers=0)
FAST_FLAGS = ["--hidden", "32", "--batch-size", "8", "--lr", "3e-3", "--device", "cpu", "--quiet"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))


pytestmark = pytest.mark.usefixtures("one_thread")      # tests/conftest.py


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    root = tmp_path_factory.mktemp("caches")
    train = make_signal_cache(root / "train", 48, seed=1)
    val = make_signal_cache(root / "val", 16, seed=2)
    small = make_signal_cache(root / "val-small", 8, seed=4)       # one batch: a DDP rank gets none
    other = make_signal_cache(root / "other", 16, seed=3, config={"backbone": "toy", "purpose": "other"})
    return {"train": train.path, "val": val.path, "val_small": small.path, "other": other.path}


metrics_lines = read_metrics


# ----------------------------------------------------------------------------- a run

def test_train_head_improves_and_writes_a_self_describing_run(caches, tmp_path):
    run = tmp_path / "run"
    s = tr.train_head(caches["train"], caches["val"], run, epochs=5, **FAST)   # the default weight average
    lines = metrics_lines(run)
    assert [m["epoch"] for m in lines] == [1, 2, 3, 4, 5]
    for key in ("train_loss", "val_loss", "val_mae", "val_pearson", "val_peak_within_1", "seconds",
                "samples_per_s", "lr"):
        assert all(isinstance(m[key], float) for m in lines), key
    assert lines[-1]["val_loss"] < lines[0]["val_loss"] * 0.9          # it learns the bump
    assert min(m["val_loss"] for m in lines) == pytest.approx(s["best_val_loss"])
    assert {p.name for p in run.iterdir()} == {"config.json", "metrics.jsonl", "checkpoint-last.pt",
                                               "checkpoint-best.pt"}
    config = json.loads((run / "config.json").read_text())
    from pipeline.cache import FeatureCache
    fp = FeatureCache(caches["train"]).fingerprint
    assert config["train_cache"]["fingerprint"] == fp == config["val_cache"]["fingerprint"]
    assert config["train_cache"]["path"] == str(Path(caches["train"]).resolve())
    assert config["options"]["epochs"] == 5 and "torch" in config["versions"]
    ckpt = torch.load(run / "checkpoint-last.pt", weights_only=True)
    assert ckpt["fingerprint"] == fp and ckpt["epoch"] == 5
    assert ckpt["head_config"]["hidden"] == 32 and ckpt["transform"]["_extra_state"]["kind"] == "features"
    assert {"optimizer", "rng", "config", "history", "scaler"} <= set(ckpt)
    best = torch.load(run / "checkpoint-best.pt", weights_only=True)
    assert best["epoch"] == s["best_epoch"]
    # load_head (export's entry point) rebuilds the best head with the train statistics.
    head, transform, _ = load_head(run / "checkpoint-best.pt")
    x = torch.from_numpy(FeatureCache(caches["val"]).read_many([0, 1])["features"])
    assert head(transform(x)).shape == (2, 24)
    fitted = InputTransform("features", 32, center=True).fit(FeatureCache(caches["train"]))
    assert torch.allclose(transform.mean, fitted.mean) and torch.allclose(transform.std, fitted.std)


def test_a_short_run_averages_faster_and_keeps_no_more_of_its_start():
    from pipeline.options import EMA_MEASURED_STEPS, ema_decay_for
    assert ema_decay_for(0.993, EMA_MEASURED_STEPS) == 0.993 and ema_decay_for(0.993, 5000) == 0.993
    for steps in (8, 30, 100):
        assert ema_decay_for(0.993, steps) ** steps == pytest.approx(0.993 ** EMA_MEASURED_STEPS)


def test_weight_ema_is_the_decayed_average_from_the_initial_weights():
    model = nn.Linear(2, 1)
    w0 = model.weight.detach().clone()
    ema = loop.WeightEMA(model, 0.9)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    ema.update(model)
    expected = 0.81 * w0 + 0.19 * (w0 + 1.0)       # two steps toward the moved weights
    assert torch.allclose(ema.shadow["weight"], expected)
    assert torch.equal(model.weight, w0 + 1.0)      # the trained model is left alone
    assert torch.allclose(ema.model(model).weight, expected)


def test_ema_decay_saves_the_average_and_trains_the_same_weights(caches, tmp_path):
    """--ema-decay changes what the checkpoint holds, not what is trained: the averaged run's
    train_model is the plain run's model, its model the average of the steps' weights."""
    plain = tr.train_head(caches["train"], caches["val"], tmp_path / "plain", epochs=2, ema_decay=0.0, **FAST)
    ema = tr.train_head(caches["train"], caches["val"], tmp_path / "ema", epochs=2, ema_decay=0.9, **FAST)
    assert plain["config"]["options"]["ema_decay"] == 0.0 and ema["config"]["options"]["ema_decay"] == 0.9
    a = torch.load(tmp_path / "plain" / "checkpoint-last.pt", weights_only=True)
    b = torch.load(tmp_path / "ema" / "checkpoint-last.pt", weights_only=True)
    assert a["train_model"] is None
    assert all(torch.equal(b["train_model"][k], v) for k, v in a["model"].items())
    assert not all(torch.equal(b["model"][k], v) for k, v in a["model"].items())
    head, _, _ = load_head(tmp_path / "ema" / "checkpoint-last.pt")      # what export and score read
    assert all(torch.equal(head.state_dict()[k], v) for k, v in b["model"].items())
    # the recorded val loss is the averaged head's, which a plain run's differs from
    assert metrics_lines(tmp_path / "ema")[-1]["val_loss"] != metrics_lines(tmp_path / "plain")[-1]["val_loss"]


def test_a_checkpoint_without_train_model_reads_as_a_plain_run(caches, tmp_path):
    tr.train_head(caches["train"], caches["val"], tmp_path / "run", epochs=1, ema_decay=0.0, **FAST)
    path = tmp_path / "run" / "checkpoint-last.pt"
    ckpt = torch.load(path, weights_only=True)
    del ckpt["train_model"]                         # as written before weight averaging existed
    torch.save(ckpt, path)
    assert runs.RunCheckpoint.read(path).train_model is None


def test_preload_ram_trains_exactly_like_reading_from_disk(caches, tmp_path):
    a = tr.train_head(caches["train"], caches["val"], tmp_path / "a", epochs=2, dropout=0.1, **FAST)
    b = tr.train_head(caches["train"], caches["val"], tmp_path / "b", epochs=2, dropout=0.1, preload="ram",
                      **{**FAST, "workers": 1})
    assert [m["val_loss"] for m in metrics_lines(tmp_path / "a")] == pytest.approx(
        [m["val_loss"] for m in metrics_lines(tmp_path / "b")], rel=1e-6)
    assert a["best_epoch"] == b["best_epoch"]


def test_motion_energy_run_stores_train_statistics(tmp_path):
    config = {"backbone": "model3d_1", "purpose": "tests"}
    train = make_signal_cache(tmp_path / "train", 16, seed=6, dim=2048, frames=12, config=config)
    val = make_signal_cache(tmp_path / "val", 8, seed=7, dim=2048, frames=12, config=config)
    tr.train_head(train.path, val.path, tmp_path / "run", epochs=2, input="motion-energy", preload="ram", **FAST)
    head, transform, ckpt = load_head(tmp_path / "run" / "checkpoint-last.pt")
    assert transform.kind == "motion-energy" and head.config.input_dim == transform.out_dim == 5
    fitted = InputTransform("motion-energy", 2048, cache_config=config).fit(train)
    assert torch.allclose(transform.out_mean, fitted.out_mean, atol=1e-5)


def test_preload_refusals_are_clear(caches, tmp_path, monkeypatch):
    with pytest.raises(FoleyError, match="needs a CUDA device"):
        tr.train_head(caches["train"], caches["val"], tmp_path / "g", epochs=1, preload="gpu", **FAST)
    monkeypatch.setattr(loader, "available_ram_bytes", lambda: 1000)
    with pytest.raises(FoleyError, match=r"needs 0\.0 GB.*--preload none"):
        tr.train_head(caches["train"], caches["val"], tmp_path / "r", epochs=1, preload="ram", **FAST)


def test_out_dir_rules(caches, tmp_path):
    run = tmp_path / "run"
    tr.train_head(caches["train"], caches["val"], run, epochs=1, **FAST)
    with pytest.raises(FoleyError, match="--resume.*--overwrite"):
        tr.train_head(caches["train"], caches["val"], run, epochs=1, **FAST)
    s = tr.train_head(caches["train"], caches["val"], run, epochs=1, overwrite=True, **FAST)
    assert s["epochs_run"] == 1 and len(metrics_lines(run)) == 1
    # A finished run resumed: nothing left to do, nothing rewritten wrongly.
    s = tr.train_head(caches["train"], caches["val"], run, resume=True, **FAST)
    assert s["epochs_run"] == 1 and len(metrics_lines(run)) == 1
    with pytest.raises(FoleyError, match="--resume with other training options.*--lr"):
        tr.train_head(caches["train"], caches["val"], run, resume=True, **{**FAST, "lr": 1e-2})
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    with pytest.raises(FoleyError, match="refusing to delete"):
        tr.train_head(caches["train"], caches["val"], other, epochs=1, overwrite=True, **FAST)
    assert (other / "thesis.tex").exists()


def test_early_stop_and_fit_reuse_with_another_model(caches, tmp_path):
    """fit() with a model that is not a bare Head (as finetune will use it): lr 0 keeps the val loss
    flat, so --early-stop 1 stops after the second epoch; load_head still reads the checkpoint."""

    class Wrapped(nn.Module):
        def __init__(self, transform, head):
            super().__init__()
            self.transform, self.head = transform, head

        def forward(self, features, length=None):
            return self.head(self.transform(features), length)

    from pipeline.cache import FeatureCache
    dist = Distributed()
    train, val = FeatureCache(caches["train"]), FeatureCache(caches["val"])
    transform = InputTransform("features", train.dim).fit(train)
    identity = InputTransform("features", train.dim)        # the batches hand over raw features
    batches = lambda c, shuffle: loader.CacheBatches.from_cache(c, identity, 8, shuffle=shuffle, seed=0, preload="none",  # noqa: E731
                                                 device=torch.device("cpu"), workers=0, dist=dist)
    model = Wrapped(transform, Head(HeadConfig(input_dim=train.dim, hidden=8)))
    opt = torch.optim.AdamW(model.head.parameters(), lr=0.0)
    s = loop.fit(model, opt, batches(train, True), batches(val, False), run_dir=tmp_path / "ft", epochs=6,
                 warmup_steps=0, dist=dist, config={"command": "test"}, early_stop=1,
                 description=RunDescription(kind="test", head_config=model.head.config.to_dict(),
                                            transform=transform.state_dict(), fingerprint=train.fingerprint))
    assert s["stopped_early"] and s["epochs_run"] == 2 and s["best_epoch"] == 1
    head, t, ckpt = load_head(tmp_path / "ft" / "checkpoint-best.pt")
    x = torch.from_numpy(val.read_many([0])["features"])
    assert torch.allclose(head(t(x)), model(x))


# ----------------------------------------------------------------------------- the CLI

run_cli = partial(foleycache, "train-head", env=ENV)


def test_cli_refuses_caches_of_different_fingerprints_in_one_line(caches, tmp_path):
    r = run_cli("--train-cache", caches["train"], "--val-cache", caches["other"], "--out", tmp_path / "run",
                "--epochs", "1", *FAST_FLAGS)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "fingerprint" in lines[0], r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "run").exists()


def test_cli_bad_flag_is_a_one_line_error(caches, tmp_path):
    r = run_cli("--train-cache", caches["train"], "--val-cache", caches["val"], "--out", tmp_path / "run",
                *FAST_FLAGS, "--amp", "fp8", timeout=120)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--amp" in lines[0], r.stderr


@pytest.mark.parametrize("option,value,flag", [("epochs", 0, "--epochs"), ("input", "pixels", "--input"),
                                               ("preload", "disk", "--preload"), ("dropout", 1.5, "--dropout"),
                                               ("workers", -1, "--workers"), ("device", "tpu", "--device")])
def test_bad_options_are_refused_before_touching_out(caches, tmp_path, option, value, flag):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")         # an existing run: --overwrite must not delete it yet
    with pytest.raises(FoleyError, match=flag):
        tr.train_head(caches["train"], caches["val"], run, overwrite=True, **{**FAST, option: value})
    assert (run / "config.json").exists()


def test_bf16_wide_input_run_interrupted_then_resumed_ends_like_an_uninterrupted_run(tmp_path, monkeypatch):
    """The CPU bf16 path (a wide input: split layer 0, bf16 input GEMM): a run that dies after
    epoch 2's checkpoint resumes to the uninterrupted run's numbers, exactly."""
    train = make_signal_cache(tmp_path / "train", 24, seed=1, dim=640)
    val = make_signal_cache(tmp_path / "val", 8, seed=2, dim=640)
    opts = dict(epochs=4, hidden=32, batch_size=8, lr=3e-3, amp="bf16", device="cpu", progress=False, workers=0)
    whole = tr.train_head(train.path, val.path, tmp_path / "whole", **opts)
    assert whole["config"]["amp"] == "bf16" and whole["config"]["head"]["input_dim"] > 4 * 32
    saves, real = [], runs.atomic_torch_save

    def dies_after_two(obj, path, also=None):
        real(obj, path, also=also)
        saves.append(path)
        if len(saves) == 2:
            raise KeyboardInterrupt         # after epoch 2's checkpoint, before its metrics line
    monkeypatch.setattr(runs, "atomic_torch_save", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        tr.train_head(train.path, val.path, tmp_path / "cut", **opts)
    monkeypatch.setattr(runs, "atomic_torch_save", real)
    tr.train_head(train.path, val.path, tmp_path / "cut", resume=True, **opts)
    a, b = metrics_lines(tmp_path / "whole"), metrics_lines(tmp_path / "cut")
    assert [m["epoch"] for m in b] == [1, 2, 3, 4]
    assert [m["train_loss"] for m in b] == [m["train_loss"] for m in a]
    assert b[-1]["val_loss"] == a[-1]["val_loss"] and b[-1]["val_loss"] < b[0]["val_loss"]


def test_torchrun_ddp_trains_and_logs_each_epoch_once(caches, tmp_path):
    run = tmp_path / "ddp"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        str(ROOT / "cli.py"), "train-head", "--train-cache", str(caches["train"]),
                        "--val-cache", str(caches["val_small"]), "--out", str(run), "--epochs", "3",
                        "--workers", "0", *FAST_FLAGS[:-1]],
                       capture_output=True, text=True, env=ENV, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = metrics_lines(run)
    assert [m["epoch"] for m in lines] == [1, 2, 3]
    config = json.loads((run / "config.json").read_text())
    assert config["world_size"] == 2 and config["global_batch_size"] == 16
    assert config["steps_per_epoch"] == 3                   # 48 clips / (8 per rank x 2 ranks)
    assert r.stdout.count("best epoch") == 1                # the summary is printed by rank 0 only
    assert lines[-1]["samples_per_s"] > 0 and lines[-1]["val_loss"] < lines[0]["val_loss"]
    # Validation: rank 0 held the only val batch, rank 1 none; all 8 clips are scored once.
    assert all(m["val_clips"] == 8 for m in lines)
    ckpt = torch.load(run / "checkpoint-last.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_preload_gpu_trains_on_cuda_with_autocast(caches, tmp_path):
    run = tmp_path / "gpu"
    s = tr.train_head(caches["train"], caches["val"], run, epochs=4, preload="gpu",
                      **{**FAST, "device": "cuda"})
    lines = metrics_lines(run)
    assert len(lines) == 4 and lines[-1]["val_loss"] < lines[0]["val_loss"]
    assert s["config"]["amp"] in ("bf16", "fp16") and s["config"]["device"].startswith("cuda")
    head, transform, ckpt = load_head(run / "checkpoint-best.pt")      # CPU tensors: loads anywhere
    assert next(head.parameters()).device.type == "cpu" and ckpt.description.fingerprint == s["config"]["train_cache"]["fingerprint"]
