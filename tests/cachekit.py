"""Small learnable feature caches for the head and training tests: a toy task a head can learn in
a few epochs, written as a real cache through `write_cache`.

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
