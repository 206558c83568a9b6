"""finetune end to end on real tiny videos: frozen blocks, saved backbone, kill -9 + resume, --init-head."""
import json
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import torch

from pipeline.data import SOUND12
from tests.mediakit import make_video, ssv2_entry
from tests.modelkit import published_state, write_published
from tests.runkit import assert_one_line_error, foleycache, read_metrics

ROOT = Path(__file__).resolve().parents[1]
P = "module.conv_column."
# Frame size of every run here: model3d_1's cost grows with the pixels, and backward through it is
# most of this file's time (32 px: a 1x1 final map, 1/4 of the work at 64 px; nothing here needs more).
SIZE = 32


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """12 clips (8 train, 4 val) in one videos folder, SSv2 JSONs, a published-layout checkpoint."""
    root = tmp_path_factory.mktemp("ft")
    videos = root / "videos"
    videos.mkdir()
    train, val = [], []
    for i in range(12):
        make_video(videos / f"{300 + i}.webm", seconds=4.2, width=80, height=64, impulses=(0.4 + 0.25 * i,))
        (train if i < 8 else val).append(ssv2_entry(300 + i, SOUND12[i % 12]))
    (root / "train.json").write_text(json.dumps(train))
    (root / "val.json").write_text(json.dumps(val))
    write_published(root / "model_best.pth.tar", published_state(seed=5))
    return root


run = partial(foleycache, check=True, env=None, timeout=None)


def ft_args(data, out, *extra):
    return ["finetune", "--videos", data / "videos", "--annotations", data / "train.json", "--val-annotations",
            data / "val.json", "--out", out, "--size", SIZE, "--batch-size", 4, "--quiet", *extra]


metrics = read_metrics


def test_two_epochs_frozen_blocks_and_saved_backbone(data, tmp_path):
    out = tmp_path / "run"
    # 2 train and 2 val clips (one step an epoch) show what frozen blocks and the export do as well as
    # 8 and 4: backward through model3d_1 costs ~2 CPU s a clip even at 32 px
    run(*ft_args(data, out, "--checkpoint", data / "model_best.pth.tar", "--freeze-blocks", 2, "--epochs", 2,
                 "--backbone-lr", 1e-3, "--limit", 2))
    assert [m["epoch"] for m in metrics(out)] == [1, 2]
    before = torch.load(data / "model_best.pth.tar", weights_only=True)["state_dict"]
    after = torch.load(out / "backbone.pth.tar", weights_only=True)["state_dict"]   # the published layout
    assert set(after) == {k for k in before if k.startswith(P)}
    for k in after:
        if ".block1." in k or ".block2." in k:
            assert torch.equal(before[k], after[k]), k
    assert not torch.equal(before[P + "block5.3.weight"], after[P + "block5.3.weight"])
    assert (out / "backbone.safetensors").exists()
    ckpt = torch.load(out / "checkpoint-best.pt", weights_only=True)
    assert ckpt["kind"] == "finetune" and ckpt["size"] == SIZE and ckpt["fingerprint"]
    # the finetuned backbone re-caches: extract-features accepts it as --checkpoint
    run("extract-features", "--videos", data / "videos", "--annotations", data / "val.json", "--out",
        tmp_path / "recache", "--size", SIZE, "--checkpoint", out / "backbone.pth.tar", "--quiet")


@pytest.mark.slow
def test_kill_minus_9_then_resume(data, tmp_path):
    out = tmp_path / "killed"
    args = ft_args(data, out, "--checkpoint", data / "model_best.pth.tar", "--freeze-blocks", 2, "--epochs", 3)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *map(str, args)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").exists() and len(metrics(out)) >= 1:
            break
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(metrics(out))
    assert 1 <= done < 3
    run(*args, "--resume")
    assert [m["epoch"] for m in metrics(out)] == [1, 2, 3]
    assert (out / "backbone.pth.tar").exists()


def test_bad_options_are_one_line_errors(data, tmp_path):
    for extra in (["--freeze-blocks", 9], ["--checkpoint", tmp_path / "missing.pt"], ["--input", "pixels"]):
        proc = run(*ft_args(data, tmp_path / "bad", *extra), check=False)
        assert proc.returncode == 2, (extra, proc.stderr)
        assert_one_line_error(proc.stderr, str(extra[0]) if extra[0] != "--checkpoint" else "missing.pt")


def test_init_head_starts_from_the_heads_validation_loss(data, tmp_path):
    """A train-head run on caches of the same backbone; finetune --init-head's first val loss is
    within 10% of that head's best (it starts where the head is, not from scratch)."""
    ckpt = data / "model_best.pth.tar"
    for split in ("train", "val"):
        run("extract-features", "--videos", data / "videos", "--annotations", data / f"{split}.json", "--out",
            tmp_path / split, "--size", SIZE, "--checkpoint", ckpt, "--quiet")
    head_run = tmp_path / "head"
    run("train-head", "--train-cache", tmp_path / "train", "--val-cache", tmp_path / "val", "--out", head_run,
        "--epochs", 15, "--batch-size", 4, "--hidden", 64, "--quiet")
    best = min(m["val_loss"] for m in metrics(head_run))
    out = tmp_path / "ft"
    run(*ft_args(data, out, "--init-head", head_run / "checkpoint-best.pt", "--epochs", 1, "--limit", 4))
    first = metrics(out)[0]["val_loss"]
    assert abs(first - best) / best < 0.10, (first, best)
    config = json.loads((out / "config.json").read_text())
    assert config["options"]["checkpoint"] == str(ckpt.resolve()) or Path(config["options"]["checkpoint"]).samefile(ckpt)


def test_the_imagenet_classifier_keeps_its_optimizer_slot_but_no_gradient():
    """MobileNetV2's classifier never reaches the map: frozen (DDP refuses parameters without a gradient),
    yet still in the backbone's group, so runs saved before resume into the same optimizer layout."""
    from pipeline import backbones
    from pipeline.finetune import _optimizer
    from pipeline.head import Head, HeadConfig
    from pipeline.options import FinetuneOptions
    net = backbones.freeze_blocks(backbones.create_backbone("mobilenet_v2"), 2)
    optimizer = _optimizer(net, Head(HeadConfig(input_dim=8, hidden=4)), FinetuneOptions(backbone_lr=1e-6))
    classifier = {id(p) for p in net.classifier.parameters()}
    assert not any(p.requires_grad for p in net.classifier.parameters())
    assert classifier <= {id(p) for p in optimizer.param_groups[1]["params"]}
    assert all(p.requires_grad for p in net.blocks()[4].parameters())


@pytest.mark.slow
def test_torchrun_two_processes_finetune_mobilenet(data, tmp_path):
    """DDP over a MobileNetV2 whose ImageNet classifier never reaches the loss: each epoch logged once."""
    out = tmp_path / "ddp"
    extra = ("--backbone", "mobilenet_v2_spacetime_mid", "--checkpoint", "none", "--epochs", 2, "--device", "cpu")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "pipeline",
                           *[str(a) for a in ft_args(data, out, *extra)]],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [m["epoch"] for m in metrics(out)] == [1, 2]
