"""Benchmark: `pretrain` clips/s per epoch (float32) and the share of each epoch spent on data.

    python benchmarks/pretrain.py [--quick] [--data DIR] [--clips N] [--epochs E] [--size S]
                                  [--threads N] [--device cpu|cuda] [--json FILE]

Makes a synthetic dataset (`pipeline.synthetic.make_synthetic`, SSv2-shaped 320x240 VP9+Opus) in a
temporary directory (or uses --data, a make-synthetic folder), runs `pipeline.pretrain.pretrain`
for a few epochs in this process and reads its metrics.jsonl. Reported, all from the same run:
  decode_seconds             building the uint8 frame cache (each clip decoded once, before epoch 1)
  epochs[]                   per epoch: clips/s of the training pass, data_share (time the step
                             waited for its batch: frame-cache reads + augmentation, done in a reader
                             thread, not hidden behind the previous step; share of the pass), seconds
  data_share_after_first     mean data_share of epochs 2.. (goal: < 0.10)
  decode_every_epoch_share   what the data share would be if every epoch decoded its clips again:
                             decode time per train clip / (that + train time per clip) — the cost the
                             frame cache removes
Precision float32 (--amp off) unless --precision bf16: speed decisions rest on float32 (runtime.py).
--quick: 40 clips (32 train / 8 val), 3 epochs at 32 px, fits a loaded 2-core CPU in ~3 minutes.
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

QUICK = {"clips": 40, "epochs": 3, "size": 32}         # pretrain's default size
FULL = {"clips": 380, "epochs": 4, "size": 32}
VAL_SHARE = 0.2                 # of --clips, the validation split
GOAL_DATA_SHARE = 0.10


def run(data: Path | None, clips: int, epochs: int, size: int, threads: int | None, device: str,
        precision: str) -> dict:
    from pipeline.pretrain import pretrain
    from pipeline.synthetic import LABELS_JSON, TRAIN_JSON, VAL_JSON, make_synthetic

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
        summary = pretrain(videos=data / "videos", annotations=data / TRAIN_JSON, val_annotations=data / VAL_JSON,
                           labels=data / LABELS_JSON,
                           out=tmp / "run", size=size, epochs=epochs, amp="off" if precision == "fp32" else "bf16",
                           device=device, progress=False)
        history = summary["history"]
        builds = summary["frame_caches"]
    decode = sum(b["seconds"] for b in builds.values())
    decoded = sum(b["decoded_now"] for b in builds.values())
    train_clips = history[0]["train_clips"]
    per_clip_train = sum(h["train_seconds"] for h in history) / sum(h["train_clips"] for h in history)
    per_clip_decode = decode / max(1, decoded)
    after = [h["data_share"] for h in history[1:]]
    data_share_after_first = round(sum(after) / len(after), 4) if after else None
    return {
        "machine": machine(), "precision": precision, "size": size, "epochs": epochs, "train_clips": train_clips,
        "val_clips": history[0]["val_clips"], "threads": torch.get_num_threads(),
        "make_synthetic_seconds": round(make_seconds, 1), "decode_seconds": round(decode, 2),
        "decode_seconds_per_clip": round(per_clip_decode, 4),
        "epochs_detail": [{k: h[k] for k in ("epoch", "clips_per_s", "data_share", "train_seconds", "seconds",
                                             "val_top1")} for h in history],
        "clips_per_s": round(sum(h["train_clips"] for h in history) / sum(h["train_seconds"] for h in history), 3),
        "data_share_after_first": data_share_after_first,
        "decode_every_epoch_share": round(per_clip_decode / (per_clip_decode + per_clip_train), 4),
        "goal": {"data_share_after_first": f"< {GOAL_DATA_SHARE}",
                 "met": data_share_after_first is not None and data_share_after_first < GOAL_DATA_SHARE},
        "config": summary["config"]["options"],
    }


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
