"""Benchmark: one finetune training step (backbone + head, fwd + bwd + AdamW) at 224x224x48,
with and without activation checkpointing: clips/s and peak memory, measured in one run.

    python benchmarks/finetune_step.py [--device cpu|cuda] [--size 224] [--batch-size 2] [--steps 2] [--json FILE]

Each configuration runs in its own subprocess so that its peak memory is its own (on CPU: the
process's peak RSS, which only grows; on CUDA: torch.cuda.max_memory_allocated). Prints one JSON
object with both configurations and `checkpointing_memory_ratio` / `checkpointing_speed_ratio`.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one(device: str, size: int, batch: int, steps: int, checkpointing: bool, freeze: int) -> dict:
    """Runs in the child process: build EndToEnd, time `steps` optimizer steps after one warm-up."""
    import torch

    sys.path.insert(0, str(ROOT))
    from pipeline import backbones
    from pipeline.finetune import EndToEnd
    from pipeline.head import Head, HeadConfig, InputTransform, masked_bce
    from pipeline.runtime import autocast, cpu_has_bf16

    dev = torch.device(device)
    net = backbones.create_backbone("model3d_1").to(dev)
    backbones.freeze_blocks(net, freeze)
    net.checkpointing = checkpointing
    dim = backbones.feature_dim("model3d_1", size)
    model = EndToEnd(net, InputTransform("features", dim).to(dev), Head(HeadConfig(input_dim=dim)).to(dev)).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    precision = "bf16" if dev.type == "cuda" or cpu_has_bf16() else "fp32"    # finetune's --amp auto
    x = torch.randn(batch, 3, 48, size, size, device=dev)
    target = torch.rand(batch, 48, device=dev)
    length = torch.full((batch,), 48, device=dev)

    def step():
        with autocast(dev, precision):
            logits = model(x)
        loss = masked_bce(logits.float(), target, length)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()                                   # warm-up (allocations, oneDNN/cuDNN choices)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"checkpointing": checkpointing, "device": device, "size": size, "batch_size": batch, "steps": steps,
            "freeze_blocks": freeze, "precision": precision,
            "seconds_per_step": round(seconds / steps, 3), "clips_per_s": round(batch * steps / seconds, 3),
            "peak_memory_bytes": int(peak), "peak_memory_gib": round(peak / 2**30, 2),
            "memory_kind": "cuda max_memory_allocated" if dev.type == "cuda" else "process peak RSS"}


def run(device: str = "cpu", size: int = 224, batch: int = 2, steps: int = 2, freeze: int = 0) -> dict:
    results = {}
    for ckpt in (False, True):
        cmd = [sys.executable, __file__, "--child", "--device", device, "--size", str(size), "--batch-size",
               str(batch), "--steps", str(steps), "--freeze-blocks", str(freeze)] + (["--checkpointing"] if ckpt else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        results["with_checkpointing" if ckpt else "without_checkpointing"] = json.loads(proc.stdout.splitlines()[-1])
    off, on = results["without_checkpointing"], results["with_checkpointing"]
    results["checkpointing_memory_ratio"] = round(on["peak_memory_bytes"] / off["peak_memory_bytes"], 3)
    results["checkpointing_speed_ratio"] = round(on["clips_per_s"] / off["clips_per_s"], 3)
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--freeze-blocks", type=int, default=0)
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(one(a.device, a.size, a.batch_size, a.steps, a.checkpointing, a.freeze_blocks)))
        return
    out = run(a.device, a.size, a.batch_size, a.steps, a.freeze_blocks)
    text = json.dumps(out, indent=2)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
