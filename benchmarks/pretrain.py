"""Benchmark: what a `pretrain` step costs with 0, 3 and 4 frozen stages (float32), in one run.

    python benchmarks/pretrain.py [--quick] [--data DIR] [--clips N] [--epochs E] [--size S]
                                  [--threads N] [--device cpu|cuda] [--json FILE]

Makes a synthetic dataset (`pipeline.synthetic.make_synthetic`, SSv2-shaped 320x240 VP9+Opus) in a
temporary directory (or uses --data, a make-synthetic folder), then runs `pipeline.pretrain.pretrain`
from the ImageNet MobileNetV2 weights once per number of frozen stages, on the same clips (the frames
decoded once, shared), and reads each run's metrics.jsonl. Reported, all from the same process:
  decode_seconds             building the uint8 frame caches (each clip decoded once)
  runs[N]                    per frozen-stage count N: train clips/s (the training passes of every
                             epoch), the stem cache's build seconds (the frozen stages run once per
                             clip), seconds per epoch, last val top-1
  speedup_vs_all_stages      clips/s with N frozen / clips/s with none (the ratio this tool's default,
                             4 frozen stages, rests on)
Precision float32 (--amp off) unless --precision bf16: speed decisions rest on float32 (runtime.py).
--quick: 40 clips (32 train / 8 val), 2 epochs at 64 px.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:          # `python benchmarks/pretrain.py` from anywhere
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.run import machine  # noqa: E402

QUICK = {"clips": 40, "epochs": 2, "size": 64}         # pretrain's default size
FULL = {"clips": 380, "epochs": 3, "size": 64}
VAL_SHARE = 0.2                 # of --clips, the validation split
FROZEN = (0, 3, 4)              # stages kept fixed: none, all but the last two, all but the last


def _one(data: Path, out: Path, frozen: int, epochs: int, size: int, device: str, precision: str) -> dict:
    from pipeline.pretrain import pretrain
    from pipeline.runs import read_metrics
    from pipeline.synthetic import LABELS_JSON, TRAIN_JSON, VAL_JSON

    summary = pretrain(videos=data / "videos", annotations=data / TRAIN_JSON, val_annotations=data / VAL_JSON,
                       labels=data / LABELS_JSON, out=out / f"run-{frozen}", frame_cache=out / "frames",
                       backbone="mobilenet_v2", checkpoint="imagenet", freeze_blocks=frozen, size=size,
                       epochs=epochs, amp="off" if precision == "fp32" else "bf16", device=device, progress=False)
    history = read_metrics(out / f"run-{frozen}")
    train_clips = summary["config"]["train_clips"]
    stem = [b.get("stem") or {} for b in summary["frame_caches"].values()]
    return {"frozen_stages": frozen, "train_clips": train_clips,
            "clips_per_s": round(train_clips * len(history) / sum(h["train_seconds"] for h in history), 3),
            "epoch_seconds": [h["seconds"] for h in history],
            "stem_cache_seconds": round(sum(s.get("seconds", 0.0) for s in stem if not s.get("reused")), 2),
            "decode_seconds": round(sum(b["seconds"] for b in summary["frame_caches"].values()), 2),
            "val_top1": history[-1].get("val_top1")}


def run(data: Path | None, clips: int, epochs: int, size: int, threads: int | None, device: str,
        precision: str) -> dict:
    from pipeline.synthetic import make_synthetic

    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="bench-pretrain-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        if data is None:
            n_val = max(2, round(clips * VAL_SHARE))
            make_synthetic(tmp / "data", n_train=clips - n_val, n_val=n_val, seed=0, progress=False)
            data = tmp / "data"
        make_seconds = time.perf_counter() - t0
        runs = [_one(data, tmp, frozen, epochs, size, device, precision) for frozen in FROZEN]
    base = runs[0]["clips_per_s"]
    return {"machine": machine(), "precision": precision, "size": size, "epochs": epochs,
            "threads": torch.get_num_threads(), "make_synthetic_seconds": round(make_seconds, 1), "runs": runs,
            "speedup_vs_all_stages": {str(r["frozen_stages"]): round(r["clips_per_s"] / base, 2) for r in runs}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"{QUICK}")
    ap.add_argument("--data", type=Path, default=None, help="A make-synthetic folder to use instead of a new one.")
    ap.add_argument("--clips", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads [torch's default].")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    base = QUICK if a.quick else FULL
    out = run(a.data, a.clips or base["clips"], a.epochs or base["epochs"], a.size or base["size"], a.threads,
              a.device, a.precision)
    text = json.dumps(out, indent=2)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
