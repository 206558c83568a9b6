"""Small caches for the head, training and export tests: a toy task a head can learn in a few
epochs, written as a real cache through `write_cache`; and real caches of real videos with a head
trained on them (`calibrated_caches_and_head`).

A library, not a test module: tests import from here, never from each other.
"""
from __future__ import annotations

import numpy as np

from pipeline.cache import write_cache

LABEL = "Hitting [something] with [something]"


def signal_data(n: int, seed: int, dim: int = 32, frames: int = 24, spike: float = 3.0):
    """A learnable toy task: the envelope is a bump at frame p, where a quarter of the feature
    dimensions spike. Lengths vary (padding frames are junk on purpose: features 1e3)."""
    rng = np.random.default_rng(seed)
    features = rng.normal(0.0, 1.0, (n, frames, dim)).astype(np.float32)
    envelopes = np.zeros((n, frames), np.float32)
    lengths = rng.integers(frames // 2, frames + 1, n)
    t = np.arange(frames)
    for i in range(n):
        p = rng.integers(1, lengths[i] - 1)
        envelopes[i, :lengths[i]] = np.exp(-0.5 * (t[:lengths[i]] - p) ** 2)
        features[i, p, : dim // 4] += spike
        features[i, lengths[i]:] = 1e3             # padding must never reach a statistic or a loss
    return features, envelopes, lengths


def make_signal_cache(path, n: int, seed: int, dim: int = 32, frames: int = 24, config: dict | None = None,
                      fmt: str = "zarr", shard_size: int = 8):
    """A real cache (write_cache) holding `signal_data`; same config -> same fingerprint."""
    features, envelopes, lengths = signal_data(n, seed, dim, frames)
    return write_cache(path, [f"s{seed}-{i}" for i in range(n)], [LABEL] * n, features, envelopes, lengths,
                       fmt=fmt, shard_size=shard_size, config=config or {"backbone": "toy", "purpose": "tests"})


def calibrated_caches_and_head(root, videos, splits: dict, size: int, **train_options):
    """Real caches of real videos and a head trained on them: the SSv2 lists `splits` ({"train": [...],
    "val": [...]}) written to ROOT/{train,val}.json, extracted into ROOT/train (model3d_1 random init,
    BatchNorm calibrated on 4 clips) and ROOT/val (the same calibrated weights), and train-head run on
    them into ROOT/run with `train_options` (preloaded, no reader workers, quiet)."""
    import json

    from pipeline.backbones import CALIBRATED_WEIGHTS
    from pipeline.extract import extract_features
    from pipeline.train import train_head

    for name, entries in splits.items():
        (root / f"{name}.json").write_text(json.dumps(entries))
    common = dict(videos=videos, size=size, fmt="hdf5", shard_size=4, progress=False)
    extract_features(annotations=root / "train.json", out=root / "train", checkpoint="none",
                     calibration_clips=4, **common)
    extract_features(annotations=root / "val.json", out=root / "val",
                     checkpoint=root / "train" / CALIBRATED_WEIGHTS, **common)
    train_head(root / "train", root / "val", root / "run", workers=0, preload="ram", progress=False,
               **train_options)
