"""Speed of `pipeline.metrics.evaluate` (export-predictions and every train-head epoch call it).

    python benchmarks/metrics.py [--clips 2000] [--repeats 3]

Target-like envelopes [N, 48] (1-3 Gaussian bumps of ~1 frame on a low noisy floor, 5% silent
clips, lengths 48 and 30), predictions = the targets shifted by one frame + 0.05, 12 class labels
(so `per_class` is computed too). Reports the median seconds of `repeats` calls after one
warm-up call. The goal, 2000 clips in <= 2 s on a 2-core CPU, is checked here, not in a unit
test: a timing belongs in a benchmark, next to the machine's load.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:          # `python benchmarks/metrics.py` from anywhere
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

CLIPS = 2000
FRAMES = 48
REPEATS = 3
TARGET_S = 2.0              # seconds for CLIPS clips (the former unit-test bound)
SILENT_FRACTION = 0.05      # clips with an all-zero target (no onset)
SEED = 0


def envelopes(n: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Target-like envelopes: (target [n, T] in [0, 1], padding 0; length [n] int)."""
    rng = np.random.default_rng(seed)
    length = np.where(np.arange(n) % 2 == 0, FRAMES, 30).astype(np.int64)
    target = np.zeros((n, FRAMES))
    silent = n - int(round(SILENT_FRACTION * n))
    for i in range(silent):
        L = length[i]
        t = np.arange(L)
        curve = 0.03 + 0.03 * rng.random(L)
        for f in rng.choice(np.arange(4, L - 4), size=rng.integers(1, 4), replace=False):
            curve += rng.uniform(0.45, 1.0) * np.exp(-0.5 * ((t - f) / rng.uniform(0.7, 1.1)) ** 2)
        target[i, :L] = (curve - curve.min()) / (curve.max() - curve.min())
    return target, length


def run(clips: int = CLIPS, repeats: int = REPEATS) -> dict:
    """Median seconds of `evaluate(pred, target, length, labels)` over `clips` clips."""
    from pipeline.metrics import evaluate

    target, length = envelopes(clips)
    pred = np.clip(np.roll(target, 1, axis=1) + 0.05, 0, 1)
    labels = [f"class{i % 12}" for i in range(clips)]
    evaluate(pred, target, length, labels=labels)           # warm-up (imports, first-call costs)
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        evaluate(pred, target, length, labels=labels)
        seconds.append(time.perf_counter() - t0)
    median = statistics.median(seconds)
    return {"clips": clips, "frames": FRAMES, "seconds": round(median, 4), "seconds_all": [round(s, 4) for s in seconds],
            "clips_per_s": round(clips / median, 1), "target_s": TARGET_S if clips == CLIPS else None,
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=CLIPS)
    p.add_argument("--repeats", type=int, default=REPEATS)
    args = p.parse_args(argv)
    print(json.dumps(run(args.clips, args.repeats), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
