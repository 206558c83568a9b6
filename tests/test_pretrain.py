"""pretrain on real tiny videos: the width variant's layout, the frame cache, augmentation that keeps
time, frozen stages computed once, export into extract-features, aux weight 0 = no aux, the envelope
alone, bad flags, kill -9 + resume, torchrun; the four-arm comparison's report."""
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

from pipeline import backbones
from pipeline.data import SOUND12, load_annotations
from pipeline.errors import FoleyError
from pipeline.framecache import PENDING, FrameCache, build_frame_cache
from pipeline.pretrain import pretrain
from pipeline.pretrainer import augment_clip, augment_params, topk_accuracy
from tests.mediakit import make_video, ssv2_entry
from tests.runkit import foleycache, read_metrics

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TIMING = ("seconds", "train_seconds", "samples_per_s")      # metrics.jsonl fields that are clocks


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """10 clips of 3 classes (7 train, 3 val) + one missing video in val; SSv2 JSONs."""
    root = tmp_path_factory.mktemp("pt")
    videos = root / "videos"
    videos.mkdir()
    train, val = [], []
    for i in range(10):
        make_video(videos / f"{500 + i}.webm", seconds=4.2, width=64, height=48, impulses=(0.4 + 0.3 * i,))
        (train if i < 7 else val).append(ssv2_entry(500 + i, SOUND12[i % 3]))
    val.append(ssv2_entry(404, SOUND12[0]))
    (root / "train.json").write_text(json.dumps(train))
    (root / "val.json").write_text(json.dumps(val))
    return root


def args(data, out, *extra):
    return ["pretrain", "--videos", data / "videos", "--annotations", data / "train.json", "--val-annotations",
            data / "val.json", "--out", out, "--size", 32, "--frames", 16, "--batch-size", 4, "--amp", "off",
            "--workers", 0, "--quiet", *extra]


cli = partial(foleycache, check=True, env=ENV, timeout=None)
metrics = read_metrics


def untimed(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def small(data, out, **kw):
    return pretrain(videos=data / "videos", annotations=data / "train.json", val_annotations=data / "val.json",
                    out=out, size=32, frames=16, batch_size=4, amp="off", workers=0, progress=False, **kw)


SCRATCH = dict(backbone="model3d_1_w025", checkpoint="none", freeze_blocks=0)   # every stage trained, from a seeded init


# --------------------------------------------------------------------------- the backbone

def test_width_variant_has_the_published_keys_with_quarter_shapes():
    full = backbones.create_backbone("model3d_1").state_dict()
    small_ = backbones.create_backbone("model3d_1_w025").state_dict()
    assert list(small_) == list(full)
    for key, value in full.items():
        want = [d // 4 if i < 2 and not (key == "block1.0.weight" and i == 1) else d for i, d in enumerate(value.shape)]
        if value.dim() == 1:
            want = [value.shape[0] // 4]
        assert list(small_[key].shape) == want, key
    assert backbones.feature_dim("model3d_1_w025", 64) == 128 * 2 * 2


# --------------------------------------------------------------------------- data

def test_augmentation_never_moves_a_frame_in_time():
    frames = torch.full((16, 40, 40, 3), 30, dtype=torch.uint8)
    frames[7] = 220                                     # the "impact" frame
    for seed in range(5):
        p = augment_params(seed, 0, 3, 32, 40, flip=True)
        x = augment_clip(frames, p, 32)
        assert x.shape == (16, 3, 32, 32)
        per_frame = x.mean((1, 2, 3))
        assert int(per_frame.argmax()) == 7 and torch.allclose(per_frame[:7], per_frame[0])
    assert augment_params(1, 2, 3, 32, 40, True) == augment_params(1, 2, 3, 32, 40, True)     # resume draws alike


def test_frame_cache_decodes_once_records_failures_and_resumes(data, tmp_path):
    entries = load_annotations(data / "val.json", videos=data / "videos")
    kw = dict(frames=16, fps=12, size=32, workers=0, progress=False)
    first = build_frame_cache(tmp_path / "val", entries, data / "videos", **kw)
    assert (first["decoded"], first["failed"], first["decoded_now"]) == (3, 1, 3)
    cache = FrameCache(tmp_path / "val")
    assert cache.frames.shape == (4, 16, 32, 32, 3) and cache.frames.dtype == np.uint8
    assert [f["reason"] for f in cache.failures] == ["missing"] and cache.failures[0]["id"] == "404"
    before = np.array(cache.frames[1])
    again = build_frame_cache(tmp_path / "val", entries, data / "videos", **kw)
    assert again["reused"] and again["decoded_now"] == 0
    # a build killed before row 1's status was written decodes row 1 only, to the same frames
    writable = FrameCache(tmp_path / "val", mode="r+")
    writable.clips["status"][1] = PENDING
    writable.clips.flush()
    resumed = build_frame_cache(tmp_path / "val", entries, data / "videos", **kw)
    assert resumed["decoded_now"] == 1 and resumed["decoded"] == 3
    assert np.array_equal(FrameCache(tmp_path / "val").frames[1], before)


def test_topk_accuracy():
    logits = np.array([[3.0, 2.0, 1.0], [0.0, 1.0, 2.0]])
    assert topk_accuracy(logits, np.array([0, 0]), 1) == 0.5
    assert topk_accuracy(logits, np.array([1, 0]), 2) == 0.5
    assert topk_accuracy(logits, np.array([2, 1]), 5) == 1.0


# --------------------------------------------------------------------------- runs

def test_run_exports_a_backbone_extract_features_caches_with(data, tmp_path, one_thread):
    from pipeline.cache import FeatureCache
    from pipeline.extract import extract_features
    run = tmp_path / "run"
    summary = small(data, run, epochs=1, aux_envelope=0.5, **SCRATCH)
    record = metrics(run)[0]
    assert {"val_top1", "val_top5", "val_per_class", "val_aux_bce", "train_loss", "samples_per_s"} <= set(record)
    assert set(record["val_per_class"]) == set(SOUND12[:3]) and record["val_clips"] == 3
    config = json.loads((run / "config.json").read_text())
    assert config["backbone"] == "model3d_1_w025" and config["failed"] == 1
    assert "--backbone model3d_1_w025" in summary["extract_command"]
    published = torch.load(run / "backbone.pth.tar", weights_only=True)
    assert published["arch"] == "Conv4Col" and all(k.startswith("module.conv_column.") for k in published["state_dict"])
    trained = torch.load(run / "checkpoint-last.pt", weights_only=True)["model"]
    net = backbones.create_backbone("model3d_1_w025")
    backbones.load_checkpoint(net, run / "backbone.safetensors")
    assert all(torch.equal(v, trained["backbone." + k]) for k, v in net.state_dict().items())
    cache = tmp_path / "cache"
    extract_features(videos=data / "videos", annotations=data / "val.json", out=cache, backbone="model3d_1_w025",
                     checkpoint=run / "backbone.pth.tar", size=32, frames=16, precision="fp32", workers=0,
                     progress=False)
    c = FeatureCache(cache)
    assert len(c) == 3 and c.dim == 128 and c.config["backbone_provenance"]["checkpoint_format"] == "published"


def test_aux_weight_zero_equals_no_aux(data, tmp_path, one_thread):
    small(data, tmp_path / "plain", epochs=1, frame_cache=tmp_path / "frames")
    small(data, tmp_path / "zero", epochs=1, aux_envelope=0.0, frame_cache=tmp_path / "frames")
    a = torch.load(tmp_path / "plain" / "checkpoint-last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "zero" / "checkpoint-last.pt", weights_only=True)["model"]
    assert set(b) - set(a) == {"aux.weight", "aux.bias"}
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert metrics(tmp_path / "plain")[0]["val_top1"] == metrics(tmp_path / "zero")[0]["val_top1"]
    caches = json.loads((tmp_path / "zero" / "config.json").read_text())["frame_caches"]["train"]
    assert caches["reused"] and caches["stem"]["reused"] and caches["stem"]["computed_now"] == 0


def test_frozen_stages_stay_imagenet_and_train_from_their_cached_maps(data, tmp_path, one_thread):
    from pipeline.pretrainer import Pretrainer
    from pipeline.framecache import normalised
    from pipeline.stemcache import StemCache
    run = tmp_path / "run"
    small(data, run, epochs=1)                          # defaults: mobilenet_v2, imagenet, 4 stages frozen
    trained = backbones.create_backbone("mobilenet_v2")
    backbones.load_checkpoint(trained, run / "backbone.safetensors")
    imagenet = backbones.create_backbone("mobilenet_v2")
    backbones.load_checkpoint(imagenet, backbones.resolve_checkpoint("mobilenet_v2", "imagenet")[0])
    frozen = [p for block in imagenet.blocks()[:4] for p in block.state_dict().values()]
    kept = [p for block in trained.blocks()[:4] for p in block.state_dict().values()]
    assert all(torch.equal(a, b) for a, b in zip(frozen, kept))
    last = zip(imagenet.blocks()[4].parameters(), trained.blocks()[4].parameters())
    assert not all(torch.equal(a, b) for a, b in last)
    # the cached maps are the frozen stages' output, and training from them is training from the frames
    config = json.loads((run / "config.json").read_text())
    stem = StemCache(config["frame_caches"]["val"]["stem"]["prefix"])
    frames = FrameCache(config["frame_caches"]["val"]["prefix"])
    x = normalised(frames.read([0, 1])["frames"], backbones.get_spec("mobilenet_v2").mean,
                   backbones.get_spec("mobilenet_v2").std)
    trained.eval()
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(stem.read([0, 1])), trained.stem(x, 4), atol=1e-5)
        model = Pretrainer(trained, 1280, 3, aux=True, dropout=0.0, stem_blocks=4).eval()
        whole = Pretrainer(trained, 1280, 3, aux=True, dropout=0.0).eval()
        whole.load_state_dict(model.state_dict())
        for a, b in zip(model(torch.from_numpy(stem.read([0, 1]))), whole(x)):
            assert torch.allclose(a, b, atol=1e-4)


def test_envelope_only_trains_without_labels_and_exports(data, tmp_path, one_thread):
    run = tmp_path / "env"
    small(data, run, epochs=1, aux_envelope=1.0, envelope_only=True)
    record = metrics(run)[0]
    assert record["val_aux_bce"] > 0 and "val_top1" not in record and record["val_loss"] == record["val_aux_bce"]
    model = torch.load(run / "checkpoint-last.pt", weights_only=True)["model"]
    assert not any(k.startswith("classifier.") for k in model) and "aux.weight" in model
    assert (run / "backbone.safetensors").is_file()
    with pytest.raises(FoleyError, match="--envelope-only .* --aux-envelope"):
        small(data, tmp_path / "no-weight", envelope_only=True)


@pytest.mark.parametrize("extra,message", [
    (("--aux-envelope", "-1"), "--aux-envelope"),
    (("--size", "16"), "--size"),
    (("--lr", "0"), "--lr"),
    (("--freeze-blocks", "5"), "--freeze-blocks"),
])
def test_bad_flags_are_one_line_errors(data, tmp_path, extra, message):
    proc = cli(*args(data, tmp_path / "run", *extra), check=False)
    assert proc.returncode == 2 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2 and "Traceback" not in proc.stderr


def test_bad_options_fail_before_the_run_dir_is_touched(data, tmp_path):
    with pytest.raises(FoleyError, match="unknown backbone 'resnet9000'"):
        small(data, tmp_path / "run", backbone="resnet9000")
    with pytest.raises(FoleyError, match="--label-smoothing must be in"):
        small(data, tmp_path / "run", label_smoothing=1.0)
    with pytest.raises(FoleyError, match="--freeze-blocks 4 leaves nothing of mobilenet_v2_spacetime_mid to train"):
        small(data, tmp_path / "run", backbone="mobilenet_v2_spacetime_mid", checkpoint="none", freeze_blocks=4)
    assert not (tmp_path / "run").exists()


def test_resume_with_other_options_is_refused(data, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"command": "pretrain", "options": {"epochs": 2}}))
    with pytest.raises(FoleyError, match="--resume with other training options.*--epochs 2 -> 3"):
        small(data, tmp_path / "run", epochs=3, resume=True)


@pytest.mark.slow
def test_kill_9_then_resume_ends_where_an_uninterrupted_run_ends(data, tmp_path):
    cli(*args(data, tmp_path / "whole", "--epochs", 3))
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *map(str, args(data, run, "--epochs", 3))], cwd=ROOT,
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "metrics.jsonl").is_file() or not (run / "metrics.jsonl").read_text():
        time.sleep(0.05)                                # the first epoch's checkpoint is written
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(metrics(run)) < 3
    cli(*args(data, run, "--epochs", 3, "--resume"))
    assert untimed(metrics(run)) == untimed(metrics(tmp_path / "whole"))
    from safetensors.torch import load_file
    a, b = (load_file(r / "backbone.safetensors") for r in (run, tmp_path / "whole"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_torchrun_two_processes_log_each_epoch_once(data, tmp_path):
    run = tmp_path / "ddp"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "pipeline",
                           *[str(a) for a in args(data, run, "--epochs", 2, "--device", "cpu") if a != "--quiet"]],
                          capture_output=True, text=True, cwd=ROOT, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [m["epoch"] for m in metrics(run)] == [1, 2]
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    assert proc.stdout.count("pretrain run") == 1


def test_compare_report_pairs_seeds_and_says_whether_the_difference_is_clear():
    from pipeline.compare import ARMS, markdown, summarise
    rows = []
    for seed in (0, 1, 2):
        for arm, gain in zip(ARMS, (0.0, 0.0, 0.2, -0.2)):
            scores = {"model": {"seed_score": 0.3 + gain + 0.01 * seed, "onset_f1": 0.6},
                      "mean_envelope": {"seed_score": -0.8, "onset_f1": 0.0},
                      "shuffled": {"seed_score": -0.7, "onset_f1": 0.2}}
            rows.append({"arm": arm, "seed": seed, "pretrain_val_top1": None if arm in ("imagenet", "envelope") else 0.4,
                         "probe_top1": 0.5 + gain / 2, "probe_chance": 1 / 12, "pretrain_seconds": 1.0,
                         "sets": {"held-out": scores, "night": scores}})
    settings = {"seeds": [0, 1, 2], "aux_weight": 1.0,
                "recipe": {"backbone": "mobilenet_v2", "checkpoint": "/w/mobilenet_v2-b0353104.pth", "size": 64,
                           "freeze_blocks": 4, "epochs": 8, "batch_size": 8, "lr": 1e-3}}
    report = summarise(rows, settings)
    assert report["table"]["held-out: seed_score"]["classes+envelope"]["n"] == 3
    assert report["paired"]["held-out: seed_score"]["classes+envelope - imagenet"]["mean"] == pytest.approx(0.2)
    assert report["paired"]["linear probe top-1"]["envelope - imagenet"]["mean"] == pytest.approx(-0.1)
    assert report["table"]["pretrain val top-1"]["imagenet"] is None
    text = markdown(report)
    said = {line.split("**")[1]: line for line in text.splitlines() if line.startswith("- **")}
    assert "held-out: seed_score +0.200 ± 0.000: better" in said["classes+envelope - imagenet"]
    assert "linear probe top-1 -0.100 ± 0.000: worse" in said["envelope - imagenet"]
    assert "night: onset_f1 +0.000 ± 0.000: no clear difference" in said["classes - imagenet"]
    assert "| held-out: seed_score | -0.800 ± 0.000 | -0.700 ± 0.000 |" in text


def test_compare_runs_four_arms_and_a_rerun_continues(data, tmp_path, one_thread):
    from pipeline.compare import ARMS, compare
    common = dict(videos=data / "videos", annotations=data / "train.json", val_annotations=data / "val.json",
                  out=tmp_path / "cmp", evals={"again": (data / "videos", data / "val.json")}, seeds=[0, 1],
                  checkpoint="imagenet", size=32, frames=16, epochs=1, batch_size=4, amp="off", progress=False)
    report = compare(**common)
    assert sorted((r["arm"], r["seed"]) for r in report["rows"]) == sorted((a, s) for a in ARMS for s in (0, 1))
    assert report["sets"] == ["held-out", "again"]
    imagenet = [r for r in report["rows"] if r["arm"] == "imagenet"]
    assert imagenet[0]["probe_top1"] == imagenet[1]["probe_top1"]        # one backbone, one probe
    assert not (tmp_path / "cmp" / "runs" / "imagenet-seed0").exists()
    assert (tmp_path / "cmp" / "runs" / "envelope-seed1" / "backbone.safetensors").is_file()
    text = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| linear probe top-1 |" in text and "again: seed_score" in text
    stamp = (tmp_path / "cmp" / "rows.jsonl").stat().st_mtime_ns
    again = compare(**common)                           # everything done: nothing is trained again
    assert again["rows"] == report["rows"] and (tmp_path / "cmp" / "rows.jsonl").stat().st_mtime_ns == stamp
    with pytest.raises(FoleyError, match="other recipe"):
        compare(**dict(common, epochs=2))


@pytest.mark.parametrize("extra,message", [
    (("--checkpoint", "none"), "starts every arm from pretrained weights"),
    (("--seeds", "1"), "at least 2 different seeds"),
    (("--eval", "train", ".", "val.json"), "--eval train: give a new name"),
])
def test_compare_bad_flags_are_one_line_errors(data, tmp_path, extra, message):
    argv = ["pretrain-compare", "--videos", data / "videos", "--annotations", data / "train.json",
            "--val-annotations", data / "val.json", "--out", tmp_path / "cmp", "--quiet", *extra]
    proc = cli(*argv, check=False)
    assert proc.returncode != 0 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2 and "Traceback" not in proc.stderr
