"""foleycache benchmark suite: every benchmark, side by side, in one run, one JSON object.

    python benchmarks/run.py [--quick] [--json FILE] [--device cpu|cuda] [--size N]

Makes synthetic clips (`pipeline.synthetic.make_synthetic`, SSv2-shaped 320x240 VP9+Opus) in a
temporary directory, then measures:
  extract   (benchmarks/extract.py)    decode-only, backbone-only and extract-features clips/s on
                                       the same clips -> extract_efficiency
  storage   (benchmarks/storage.py)    the extracted cache's bytes per clip vs float32 ->
                                       storage_ratio; compression gain; one .npy per video
                                       (file count, bytes, full-pass read speed) vs the shards
  train-head (benchmarks/train_head.py, another module) -> cache_speedup, loader_efficiency
and the machine (CPU model, cores, load average, torch, GPU), seconds per phase and peak RSS.
Targets (issue 8, 2-core CPU): extract_efficiency >= 0.85, cache_speedup >= 20,
loader_efficiency >= 0.8, storage_ratio <= 0.5.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:          # `python benchmarks/run.py` from anywhere
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import extract as bench_extract  # noqa: E402
from benchmarks import storage as bench_storage  # noqa: E402

TARGETS = {  # name -> (comparison, bound), issue 8, CPU
    "extract_efficiency": (">=", 0.85),
    "cache_speedup": (">=", 20.0),
    "loader_efficiency": (">=", 0.8),
    "storage_ratio": ("<=", 0.5),
}
QUICK_CLIPS = 40        # sound clips generated for --quick (faulty ones the generator adds are dropped); enough
                        # that extract-features' fixed start-up (weights hash, worker start, first batch) is small
FULL_CLIPS = 64
SEED = 0


def machine() -> dict:
    """CPU model, cores, memory, torch, GPU: where the numbers come from."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError):
        mem = None
    from pipeline.extract import cpu_has_bf16
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": model, "cores": os.cpu_count(),
            "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "cpu_bf16": cpu_has_bf16(), "memory_gib": round(mem / 2**30, 1) if mem else None,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "platform": platform.platform(), "gpu": gpu}


def peak_rss_mib() -> dict:
    """Peak resident memory: this process, and its largest finished child (decode workers)."""
    self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"self": round(self_kib / 1024, 1), "largest_child": round(child_kib / 1024, 1)}


def make_clips(out: Path, n: int) -> tuple[Path, Path, dict]:
    """Synthetic videos + an annotation list of the decodable sound12 clips only, so every phase
    of the extract benchmark sees exactly the same clips (faulty files would count differently)."""
    from pipeline.synthetic import make_synthetic, TRAIN_JSON

    t0 = time.perf_counter()
    summary = make_synthetic(out, n_train=n, n_val=0, seed=SEED, jobs=-1, progress=False)
    entries = json.loads((out / TRAIN_JSON).read_text())
    good = [e for e in entries if e["id"] not in summary["faulty"]]
    annotations = out / "benchmark-annotations.json"
    annotations.write_text(json.dumps(good))
    return out / "videos", annotations, {"generated": summary["clips"], "faulty_dropped": len(summary["faulty"]),
                                         "seconds": round(time.perf_counter() - t0, 2)}


def train_head_benchmark(quick: bool, device: str, workdir: Path) -> dict:
    """benchmarks/train_head.py (its own module): cache_speedup and loader_efficiency."""
    try:
        from benchmarks import train_head
    except ImportError as e:
        return {"error": f"benchmarks/train_head.py is not available ({e})"}
    t0 = time.perf_counter()
    try:
        result = dict(train_head.run(quick=quick, device=device, workdir=workdir))
    except Exception as e:          # report it next to the other numbers instead of losing them
        return {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=5)}
    result.setdefault("seconds", round(time.perf_counter() - t0, 2))
    return result


def check_targets(results: dict) -> dict:
    out = {}
    for name, (op, bound) in TARGETS.items():
        value = results.get(name)
        met = None if value is None else (value >= bound if op == ">=" else value <= bound)
        out[name] = {"value": value, "target": f"{op} {bound}", "met": met}
    return out


def summary_table(r: dict) -> str:
    """The README's table: one line per measured figure."""
    ex, st, th = r["extract"], r["storage"], r.get("train_head", {})
    f = lambda v, d=2: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
    lines = [
        "| figure | value | target |",
        "|---|---|---|",
        f"| extract_efficiency (extract ÷ min(decode, backbone); median of rounds "
        f"{', '.join(f'{e:.3f}' for e in ex['efficiency_per_round'])}) | {f(r['extract_efficiency'], 3)} | ≥ 0.85 |",
        f"| cache_speedup (frozen-backbone epoch ÷ cached epoch) | {f(r['cache_speedup'], 1)} | ≥ 20 |",
        f"| loader_efficiency (loader ÷ sequential read) | {f(r['loader_efficiency'], 3)} | ≥ 0.8 |",
        f"| storage_ratio (bytes on disk ÷ float32) | {f(r['storage_ratio'], 3)} | ≤ 0.5 |",
        f"| decode-only, {ex['workers']} worker(s) | {f(ex['decode_only']['clips_per_s'])} clips/s | |",
        f"| backbone-only, {ex['precision']}, batch {ex['batch_size']} | {f(ex['backbone_only']['clips_per_s'])} clips/s | |",
        f"| extract-features end to end | {f(ex['extract']['clips_per_s'])} clips/s | |",
        f"| cache bytes per clip ({st['format']} {st['dtype']}) | {st['bytes_per_clip'] / 1e6:.2f} MB "
        f"(float32 {st['float32_bytes_per_clip'] / 1e6:.2f} MB; compression ×{st['compression_gain']:.2f} over raw float16) | |",
    ]
    npy = {v["variant"]: v for v in st["variants"]}
    cache_v = st["variants"][0]
    npy32 = st["variants"][4]
    lines.append(f"| full-pass read, warm: cache / one .npy (float32) per video | {cache_v['read_warm_clips_per_s']:.0f} / "
                 f"{npy32['read_warm_clips_per_s']:.0f} clips/s | |")
    if cache_v["read_cold_clips_per_s"]:
        lines.append(f"| full-pass read, cold: cache / .npy float32 | {cache_v['read_cold_clips_per_s']:.0f} / "
                     f"{npy32['read_cold_clips_per_s']:.0f} clips/s | |")
    lines.append(f"| files: cache / .npy per video | {cache_v['files']} ({st['npy_comparison']['shards_cache']} shard(s)) / "
                 f"{npy32['files']} | |")
    del npy
    for key in ("cached_epoch_s", "frozen_backbone_epoch_s"):
        if key in th:
            lines.append(f"| train-head {key} | {th[key]} | |")
    lines.append(f"| peak RSS (main / largest worker) | {r['peak_rss_mib']['self']:.0f} / "
                 f"{r['peak_rss_mib']['largest_child']:.0f} MiB | |")
    lines.append(f"| wall time of the whole run | {r['seconds']:.0f} s | |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"{QUICK_CLIPS} clips, one size (~5 min on 2 cores)")
    p.add_argument("--json", type=Path, help="write the JSON object here (it is always printed too)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--size", type=int, default=224,
                   help="frame size of the extract benchmark (224 = the real configuration)")
    p.add_argument("--clips", type=int, help=f"sound clips to generate (default {QUICK_CLIPS} quick, {FULL_CLIPS} full)")
    p.add_argument("--batch-size", type=int, default=4, help="extract-features --batch-size (its default: 4)")
    p.add_argument("--rounds", type=int, default=2,
                   help="extract rounds, each between decode-only/backbone-only measurements (median)")
    p.add_argument("--workers", type=int, help="decode workers (default: what extract-features uses)")
    p.add_argument("--also-size", type=int, action="append", default=None,
                   help="extra extract benchmark at this size (default: 112 without --quick)")
    p.add_argument("--workdir", type=Path, help="keep scratch data here instead of a temporary directory")
    p.add_argument("--skip-train-head", action="store_true", help="do not run benchmarks/train_head.py")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    clips = args.clips or (QUICK_CLIPS if args.quick else FULL_CLIPS)
    also = args.also_size if args.also_size is not None else ([] if args.quick else [112 if args.size != 112 else 224])

    started = time.perf_counter()
    result = {"benchmark": "foleycache benchmarks/run.py", "quick": args.quick,
              "command": "python benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": machine(), "load_average_start": [round(x, 2) for x in os.getloadavg()]}
    tmp = None
    if args.workdir:
        work = args.workdir
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="foleycache-bench-")
        work = Path(tmp.name)
    try:
        _log(f"making {clips} synthetic clips in {work}")
        videos, annotations, result["clips"] = make_clips(work / "synthetic", clips)
        _log(f"extract benchmark at {args.size}x{args.size}x48 on {args.device}")
        t0 = time.perf_counter()
        ex = bench_extract.run(videos, annotations, work / "extract", size=args.size, batch_size=args.batch_size,
                               workers=args.workers, device=args.device, rounds=args.rounds)
        ex["seconds_total"] = round(time.perf_counter() - t0, 1)
        result["extract"] = ex
        result["extract_efficiency"] = ex["extract_efficiency"]
        _log("storage benchmark")
        t0 = time.perf_counter()
        st = bench_storage.run(Path(ex["cache_dir"]), work / "storage")
        st["seconds"] = round(time.perf_counter() - t0, 2)
        result["storage"] = st
        result["storage_ratio"] = st["storage_ratio"]
        result["other_sizes"] = []
        for size in also:
            _log(f"extract benchmark at {size}x{size}x48")
            other = bench_extract.run(videos, annotations, work / f"extract-{size}", size=size,
                                      batch_size=args.batch_size, workers=args.workers, device=args.device,
                                      rounds=args.rounds)
            result["other_sizes"].append(other)
        if args.skip_train_head:
            result["train_head"] = {"error": "skipped (--skip-train-head)"}
        else:
            _log("train-head benchmark (benchmarks/train_head.py)")
            result["train_head"] = train_head_benchmark(args.quick, args.device, work / "train_head")
        th = result["train_head"]
        result["cache_speedup"] = th.get("cache_speedup")
        result["loader_efficiency"] = th.get("loader_efficiency")
    finally:
        if tmp is not None:
            tmp.cleanup()
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["peak_rss_mib"] = peak_rss_mib()
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    result["targets"] = check_targets(result)
    ordered = {k: result[k] for k in ("extract_efficiency", "cache_speedup", "loader_efficiency", "storage_ratio")}
    ordered.update(result)
    text = json.dumps(ordered, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    print("\n" + summary_table(ordered), file=sys.stderr)
    busy = max(ordered["load_average_start"][0], ordered["load_average_end"][0])
    if busy > (ordered["machine"]["cores_usable"] or 1) + 0.5:
        _log(f"note: load average {busy} on {ordered['machine']['cores_usable']} cores: other work shared "
             "the CPU, timings are noisy")
    return 0


def _log(msg: str):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
