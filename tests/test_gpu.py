"""GPU path checks (run with `pytest -m gpu tests/test_gpu.py` on a CUDA machine; skipped elsewhere).

- bf16 features on the GPU (the extraction path: channels_last_3d, autocast, GPU-side
  normalisation, float16 cast on the device) agree with the CPU float32 result
- extract-features on CUDA gives the same cache as the CPU float32 path within bf16 tolerance
- train-head --preload gpu trains from GPU-resident features
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.mediakit import make_video
from tests.runkit import read_metrics

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SIZE = 64
# bf16 keeps 8 mantissa bits; over 11 conv+BN layers CPU bf16 autocast lands at 4.5-5% relative L2
# from float32 on a calibrated model3d_1, so the GPU's bf16 is held to the same order.
BF16_REL_L2 = 0.08
FP32_REL_L2 = 1e-3          # float32 with TF32 off: rounding only


def rel_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Six small real videos with sound + an SSv2 annotation list."""
    root = tmp_path_factory.mktemp("gpu-data")
    videos = root / "videos"
    videos.mkdir()
    anns = []
    for i in range(6):
        make_video(videos / f"{100 + i}.webm", seconds=4.2, width=96, height=72, impulses=(0.5 + 0.4 * i,),
                   frames=np.random.RandomState(i).randint(0, 255, (51, 72, 96, 3), dtype=np.uint8))
        anns.append({"id": str(100 + i), "label": "dropping a ball onto a table",
                     "template": "Dropping [something] onto [something]", "placeholders": ["a ball", "a table"]})
    annotations = root / "train.json"
    annotations.write_text(json.dumps(anns))
    return videos, annotations


@pytest.fixture(scope="module")
def clips(dataset):
    from pipeline.media import load_clip
    videos, _ = dataset
    return [load_clip(p, size=SIZE, normalize=False).frames for p in sorted(videos.glob("*.webm"))]


@pytest.fixture(scope="module")
def weights(clips, tmp_path_factory):
    """A calibrated random model3d_1 (uncalibrated features are degenerate: docs/learning.md)."""
    from pipeline import backbones
    from pipeline.media import normalize_frames
    model = backbones.create_backbone("model3d_1", seed=0)
    backbones.calibrate_batchnorm(model, [normalize_frames(torch.stack(clips[:4]), 1)])
    path = tmp_path_factory.mktemp("gpu-weights") / "w.safetensors"
    backbones.save_safetensors(model, path)
    return path


def _model(weights, device, channels_last):
    from pipeline import backbones
    model = backbones.create_backbone("model3d_1", seed=0)
    backbones.load_checkpoint(model, weights)
    model = model.to(device).eval()
    return model.to(memory_format=torch.channels_last_3d) if channels_last else model


def test_gpu_bf16_features_match_cpu_fp32(clips, weights):
    from pipeline import extract as ex
    from pipeline import runtime
    from pipeline.media import normalize_frames

    dev = torch.device("cuda")
    assert runtime.resolve_precision("auto", dev) == "bf16"
    cpu = _model(weights, "cpu", channels_last=False)
    with torch.no_grad():
        ref = cpu(normalize_frames(torch.stack(clips[4:6]), 1)).numpy()                  # [2, T, D]
    gpu = _model(weights, dev, channels_last=True)
    feats = ex.batch_features(gpu, clips[4:6], dev, "bf16", normalize=True, out_dtype="float16")
    assert feats.dtype == np.float16 and feats.shape == ref.shape
    for a, b in zip(feats, ref):
        assert rel_l2(a, b) < BF16_REL_L2
    torch.backends.cudnn.allow_tf32 = False
    try:
        fp32 = ex.batch_features(gpu, clips[4:6], dev, "fp32", normalize=True, out_dtype="float32")
    finally:
        torch.backends.cudnn.allow_tf32 = True
    assert rel_l2(fp32, ref) < FP32_REL_L2


def test_channels_last_3d_gives_the_same_features(clips, weights):
    from pipeline import runtime
    from pipeline.media import normalize_frames

    dev = torch.device("cuda")
    last = _model(weights, dev, channels_last=True)
    plain = _model(weights, dev, channels_last=False)
    conv = last.block1[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last_3d)
    x = normalize_frames(torch.stack(clips[:2]).to(dev), 1)
    with torch.no_grad(), runtime.autocast(dev, "bf16"):
        a, b = last(x).float().cpu().numpy(), plain(x).float().cpu().numpy()
    assert rel_l2(a, b) < BF16_REL_L2


def test_extract_features_on_cuda_matches_the_cpu_float32_cache(dataset, weights, tmp_path):
    from pipeline.cache import FeatureCache
    from pipeline.extract import extract_features

    videos, annotations = dataset
    common = dict(videos=videos, annotations=annotations, checkpoint=weights, size=SIZE, shard_size=4,
                  batch_size=3, progress=False)
    g = extract_features(out=tmp_path / "gpu", device="cuda", workers=2, **common)
    c = extract_features(out=tmp_path / "cpu", device="cpu", precision="fp32", workers=1, **common)
    assert g["device"] == "cuda" and g["precision"] == "bf16" and g["cached"] == c["cached"] == 6
    a, b = FeatureCache(tmp_path / "gpu"), FeatureCache(tmp_path / "cpu")
    fa, fb = a.read_many(range(6)), b.read_many(range(6))
    assert fa["id"] == fb["id"]
    np.testing.assert_array_equal(fa["envelope"], fb["envelope"])     # the envelope never sees the GPU
    assert rel_l2(fa["features"], fb["features"]) < BF16_REL_L2


def test_train_head_preload_gpu_smoke(tmp_path):
    from pipeline.cache import write_cache
    from pipeline.train import train_head

    rng = np.random.RandomState(0)
    n, t, d = 16, 48, 512
    feats = np.maximum(rng.randn(n, t, d), 0).astype(np.float16)          # ReLU-like
    env = rng.rand(n, t).astype(np.float32)
    for split in ("train", "val"):
        write_cache(tmp_path / split, [f"{split}{i}" for i in range(n)], ["Dropping something onto something"] * n,
                    feats, env, [t] * n, shard_size=8)
    s = train_head(tmp_path / "train", tmp_path / "val", tmp_path / "run", epochs=2, batch_size=4, hidden=32,
                   device="cuda", preload="gpu", progress=False)
    assert s["config"]["preload"] == "gpu"
    lines = read_metrics(tmp_path / "run")
    assert len(lines) == 2 and all(np.isfinite(x["train_loss"]) for x in lines)
