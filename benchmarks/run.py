"""foleycache benchmark suite: every benchmark, side by side, in one run, one JSON object.

    python benchmarks/run.py [--quick] [--json FILE] [--device cpu|cuda] [--precision fp32|bf16|auto]
                             [--size N] [--emulate-avx2]

--quick fits a 2-core AVX2-only CPU in <= 15 minutes: 112x112x48 (D = 8192), 16 clips,
2 interleaved rounds, float32 everywhere (bf16 is emulated on AVX2, ~50x slower: a quick run never
rests on it). Without --quick (larger machines): 224x224x48 (the real configuration) and 112, more
clips and rounds, precision auto (bf16 where the CPU has it). --emulate-avx2 re-runs the command with
oneDNN, MKL and ATen limited to AVX2 (ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS,
ATEN_CPU_CAPABILITY): how an AVX2-only CPU's kernels behave, on this one.

Makes synthetic clips (`pipeline.synthetic.make_synthetic`, SSv2-shaped 320x240 VP9+Opus) in a
temporary directory, then measures:
  extract   (benchmarks/extract.py)    decode-only, backbone-only and extract-features clips/s on
                                       the same clips -> extract_efficiency
  storage   (benchmarks/storage.py)    the extracted cache's bytes per clip vs float32 ->
                                       storage_ratio (its --compression), and per codec; one .npy
                                       per video (file count, bytes, full-pass read speed) vs the shards
  train-head (benchmarks/train_head.py, another module) -> cache_speedup, loader_efficiency,
                                       loader_vs_npy_float32 (train-head's default path, --preload
                                       auto, against one float32 .npy per video, memory-mapped, warm),
                                       streaming_vs_npy_float32 (--preload none, default codec), each
                                       codec streamed, cold reads of both formats
  metrics   (benchmarks/metrics.py)    pipeline.metrics.evaluate on 2000 clips, seconds
and the machine (CPU model, instruction sets in use, cores, torch, GPU), the precision of every
phase, each phase's seconds and load average, and peak RSS. The ratios all come from interleaved
rounds within one phase, so load from other work on the shared CPU hits both sides of each.
Targets (2-core CPU): extract_efficiency >= 0.85, cache_speedup >= 20, loader_efficiency >= 0.8,
storage_ratio <= 0.35, loader_vs_npy_float32 >= 2 (a cache that fits in RAM: read ahead of the
.npy files, not behind them), streaming_vs_npy_float32 >= 0.8, evaluate <= 2 s.
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
from benchmarks import metrics as bench_metrics  # noqa: E402
from benchmarks import storage as bench_storage  # noqa: E402

TARGETS = {  # name -> (comparison, bound), CPU
    "extract_efficiency": (">=", 0.85),
    "cache_speedup": (">=", 20.0),
    "loader_efficiency": (">=", 0.8),
    "storage_ratio": ("<=", 0.35),
    "loader_vs_npy_float32": (">=", 2.0),
    "streaming_vs_npy_float32": (">=", 0.8),
    "metrics_evaluate_s": ("<=", 2.0),
}
HEADLINE = ("extract_efficiency", "cache_speedup", "loader_efficiency", "storage_ratio", "loader_vs_npy_float32",
            "streaming_vs_npy_float32", "metrics_evaluate_s")
# --quick: 17 sound clips -> 16 decodable (the generator damages 5%, at least one): 4 extract batches of 4,
# one train-head batch of 16. At 112 px float32 a clip costs ~1.7 s of backbone on this 2-core AVX-512 CPU
# and ~3.7 s on the 2-core AVX2 AMD (docs/performance.md); the run does ~8 backbone passes over the clips.
QUICK = {"clips": 17, "size": 112, "rounds": 2, "precision": "fp32", "also": []}
FULL = {"clips": 64, "size": 224, "rounds": 2, "precision": "auto", "also": [112]}
AVX2_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
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
    from pipeline.runtime import cpu_has_bf16
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": model, "cores": os.cpu_count(),
            "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "cpu_flags": cpu_flags(), "cpu_bf16": cpu_has_bf16(), "isa_limit": isa_limit(),
            "kernels": "AVX2 (emulated on a wider CPU)" if isa_limit() else native_kernels(),
            "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "memory_gib": round(mem / 2**30, 1) if mem else None,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "platform": platform.platform(), "gpu": gpu}


def cpu_flags() -> list[str]:
    """Which of ISA_FLAGS the CPU reports (/proc/cpuinfo)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return []
    return [f for f in ISA_FLAGS if f in flags]


def native_kernels() -> str:
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return "AVX-512 + AMX bf16"
    return "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "unknown"


def isa_limit() -> dict:
    """The environment variables that hold the kernels to AVX2 (--emulate-avx2), where set."""
    return {k: os.environ[k] for k in AVX2_ENV if os.environ.get(k)}


def resolve_precision(precision: str, device: str) -> str:
    """--precision auto -> fp32 or bf16: bf16 only where the hardware has it natively (not under
    --emulate-avx2, whose CPU still reports AMX in /proc/cpuinfo)."""
    if precision != "auto":
        return precision
    from pipeline.runtime import resolve_precision as product_rule
    if device == "cpu" and isa_limit():
        return "fp32"
    return product_rule("auto", torch.device(device))


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


def train_head_benchmark(quick: bool, device: str, workdir: Path, *, size: int, rounds: int, precision: str,
                         videos: Path, annotations: Path, weights: Path | None = None) -> dict:
    """benchmarks/train_head.py (its own module) on these clips (and the extract benchmark's
    calibrated weights): cache_speedup, loader_efficiency and loader_vs_npy_float32. Full mode adds
    112 beside a 224 headline."""
    try:
        from benchmarks import train_head
    except ImportError as e:
        return {"error": f"benchmarks/train_head.py is not available ({e})"}
    t0 = time.perf_counter()
    sizes = [size] + ([112] if not quick and size != 112 else [])
    try:
        result = dict(train_head.run(quick=quick, device=device, workdir=workdir, sizes=sizes,
                                     rounds=None if quick else max(rounds, 3), precision=precision,
                                     videos=videos, annotations=annotations, weights=weights))
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
    """The results table (docs/performance.md): one line per measured figure, with the CPU and precision they come from."""
    ex, st, th = r["extract"], r["storage"], r.get("train_head", {})
    m = r["machine"]
    f = lambda v, d=2: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
    goal = lambda name: "{} {}".format(*TARGETS[name]).replace(">=", "≥").replace("<=", "≤")  # noqa: E731
    loader = th.get("loader", {})
    cps = loader.get("clips_per_s", {})
    lines = [
        f"CPU: {m['cpu']} ({m['cores_usable']} cores usable; kernels: {m['kernels']}); torch {m['torch']}; "
        f"precision: {r['precision']}; load average {r['load_average_start'][0]} -> {r['load_average_end'][0]}",
        "",
        "| figure | value | goal |",
        "|---|---|---|",
        f"| extract_efficiency ({ex['size']}x{ex['size']}x48, {ex['precision']}, {ex['clips']} clips; rounds "
        f"{', '.join(f'{e:.3f}' for e in ex['efficiency_per_round'])}) | {f(r['extract_efficiency'], 3)} | "
        f"{goal('extract_efficiency')} |",
        f"| cache_speedup (frozen-backbone s/clip ÷ cached train-head s/clip; {th.get('size')} px, backbone "
        f"{th.get('backbone_precision')}, head amp {th.get('head_amp')}) | {f(r['cache_speedup'], 1)} | "
        f"{goal('cache_speedup')} |",
        f"| loader_efficiency (streaming loader ÷ sequential read of the same shards) | "
        f"{f(r['loader_efficiency'], 3)} | {goal('loader_efficiency')} |",
        f"| loader_vs_npy_float32 (train-head's default path, --preload auto → {loader.get('default_preload')}, ÷ one "
        f"float32 .npy per video, memory-mapped, warm; clips/s) | {f(r['loader_vs_npy_float32'], 3)} | "
        f"{goal('loader_vs_npy_float32')} |",
        f"| streaming_vs_npy_float32 (--preload none, {loader.get('default_codec')} shards) | "
        f"{f(r.get('streaming_vs_npy_float32'), 3)} | {goal('streaming_vs_npy_float32')} |",
        f"| storage_ratio (bytes on disk ÷ float32) | {f(r['storage_ratio'], 3)} | {goal('storage_ratio')} |",
        f"| metrics evaluate, 2000 clips | {f(r['metrics_evaluate_s'], 3)} s | {goal('metrics_evaluate_s')} s |",
        f"| decode-only, {ex['workers']} worker(s) | {f(ex['decode_only']['clips_per_s'])} clips/s | |",
        f"| backbone-only, {ex['precision']}, batch {ex['batch_size']} | {f(ex['backbone_only']['clips_per_s'])} clips/s | |",
        f"| extract-features end to end | {f(ex['extract']['clips_per_s'])} clips/s | |",
        f"| cache bytes per clip ({st['format']} {st['dtype']}) | {st['bytes_per_clip'] / 1e6:.2f} MB "
        f"(float32 {st['float32_bytes_per_clip'] / 1e6:.2f} MB; compression ×{st['compression_gain']:.2f} over raw float16) | |",
    ]
    for key in ("frozen_backbone_s_per_clip", "cached_s_per_clip"):
        if th.get("by_size") and key in th["by_size"][0]:
            lines.append(f"| train-head benchmark {key} | {th['by_size'][0][key]} | |")
    for other in th.get("by_size", [])[1:]:
        lines.append(f"| cache_speedup at {other['size']} px | {f(other['cache_speedup'], 1)} | |")
    for codec, ratio in st.get("storage_ratio_by_codec", {}).items():
        lines.append(f"| --compression {codec}: disk ÷ float32 (extracted features) | {f(ratio, 3)} | |")
    if cps:
        lines.append("| loader clips/s: " + ", ".join(f"{k} {v:.0f}" for k, v in cps.items()) + " | | |")
        for codec, ratio in loader.get("stream_vs_npy_float32", {}).items():
            lines.append(f"| streaming {codec} ÷ .npy float32 (warm) | {f(ratio, 3)} | |")
        lines.append(f"| --preload ram ÷ .npy float32 | {f(loader.get('preload_ram_vs_npy_float32'), 3)} | |")
        cold = loader.get("cold", {})
        for codec, ratio in cold.get("vs_npy_float32_cold", {}).items():
            lines.append(f"| cold: streaming {codec} ÷ cold .npy float32 | {f(ratio, 3)} | |")
        if cold and not cold.get("possible"):
            lines.append(f"| cold reads | not measured: {cold.get('how')} | |")
    lines.append(f"| peak RSS (main / largest worker) | {r['peak_rss_mib']['self']:.0f} / "
                 f"{r['peak_rss_mib']['largest_child']:.0f} MiB | |")
    lines.append(f"| wall time of the whole run | {r['seconds']:.0f} s | |")
    return "\n".join(lines)


def _emulate_avx2(argv: list[str]):
    """Re-run this command with the kernels held to AVX2 (the variables must be set before torch loads)."""
    env = dict(os.environ, **AVX2_ENV)
    args = [a for a in argv if a != "--emulate-avx2"]
    os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *args], env)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"{QUICK['size']} px, {QUICK['clips']} clips, {QUICK['precision']} (<= 15 min on a 2-core AVX2 CPU)")
    p.add_argument("--json", type=Path, help="write the JSON object here (it is always printed too)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--precision", choices=("fp32", "bf16", "auto"),
                   help=f"every phase's backbone autocast and head amp (default: {QUICK['precision']} with --quick, "
                        f"else {FULL['precision']}: bf16 where the hardware has it)")
    p.add_argument("--size", type=int, help=f"frame size of the extract and train-head benchmarks "
                                             f"(default {QUICK['size']} quick, {FULL['size']} full)")
    p.add_argument("--clips", type=int, help=f"sound clips to generate (default {QUICK['clips']} quick, {FULL['clips']} full)")
    p.add_argument("--batch-size", type=int, default=4, help="extract-features --batch-size (its default: 4)")
    p.add_argument("--rounds", type=int, help="extract rounds, each between decode-only/backbone-only measurements (median)")
    p.add_argument("--workers", type=int, help="decode workers (default: what extract-features uses)")
    p.add_argument("--also-size", type=int, action="append", default=None,
                   help="extra extract benchmark at this size (default: 112 without --quick)")
    p.add_argument("--workdir", type=Path, help="keep scratch data here instead of a temporary directory")
    p.add_argument("--skip-train-head", action="store_true", help="do not run benchmarks/train_head.py")
    p.add_argument("--emulate-avx2", action="store_true",
                   help="hold oneDNN/MKL/ATen to AVX2 (re-runs the command with their environment variables)")
    args = p.parse_args(argv)
    if args.emulate_avx2 and not isa_limit():
        _emulate_avx2(list(argv) if argv is not None else sys.argv[1:])
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    plan = QUICK if args.quick else FULL
    clips = args.clips or plan["clips"]
    size = args.size or plan["size"]
    rounds = args.rounds or plan["rounds"]
    precision = resolve_precision(args.precision or plan["precision"], args.device)
    also = args.also_size if args.also_size is not None else [s for s in plan["also"] if s != size]

    started = time.perf_counter()
    result = {"benchmark": "foleycache benchmarks/run.py", "quick": args.quick,
              "command": "python benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": machine(), "precision": precision, "size": size,
              "load_average_start": [round(x, 2) for x in os.getloadavg()], "phases": {}}
    tmp = None
    if args.workdir:
        work = args.workdir
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="foleycache-bench-")
        work = Path(tmp.name)

    def phase(name: str, t0: float, load0: tuple, precision_used: dict | None = None):
        result["phases"][name] = {"seconds": round(time.perf_counter() - t0, 1),
                                  "load_average": [round(load0[0], 2), round(os.getloadavg()[0], 2)],
                                  **({"precision": precision_used} if precision_used else {})}

    try:
        _log(f"making {clips} synthetic clips in {work}")
        t0, load0 = time.perf_counter(), os.getloadavg()
        videos, annotations, result["clips"] = make_clips(work / "synthetic", clips)
        phase("make_clips", t0, load0)
        _log(f"extract benchmark at {size}x{size}x48 on {args.device}, {precision}")
        t0, load0 = time.perf_counter(), os.getloadavg()
        ex = bench_extract.run(videos, annotations, work / "extract", size=size, batch_size=args.batch_size,
                               workers=args.workers, device=args.device, precision=precision, rounds=rounds)
        ex["seconds_total"] = round(time.perf_counter() - t0, 1)
        result["extract"] = ex
        result["extract_efficiency"] = ex["extract_efficiency"]
        phase("extract", t0, load0, {"backbone": ex["precision"]})
        _log("storage benchmark")
        t0, load0 = time.perf_counter(), os.getloadavg()
        st = bench_storage.run(Path(ex["cache_dir"]), work / "storage")
        st["seconds"] = round(time.perf_counter() - t0, 2)
        result["storage"] = st
        result["storage_ratio"] = st["storage_ratio"]
        phase("storage", t0, load0)
        result["other_sizes"] = []
        for other in also:
            _log(f"extract benchmark at {other}x{other}x48")
            t0, load0 = time.perf_counter(), os.getloadavg()
            result["other_sizes"].append(bench_extract.run(
                videos, annotations, work / f"extract-{other}", size=other, batch_size=args.batch_size,
                workers=args.workers, device=args.device, precision=precision, rounds=rounds))
            phase(f"extract_{other}", t0, load0, {"backbone": precision})
        if args.skip_train_head:
            result["train_head"] = {"error": "skipped (--skip-train-head)"}
        else:
            _log("train-head benchmark (benchmarks/train_head.py)")
            t0, load0 = time.perf_counter(), os.getloadavg()
            result["train_head"] = train_head_benchmark(args.quick, args.device, work / "train_head", size=size,
                                                        rounds=rounds, precision=precision, videos=videos,
                                                        annotations=annotations, weights=Path(ex["weights"]))
            th = result["train_head"]
            phase("train_head", t0, load0, {"backbone": th.get("backbone_precision"), "head_amp": th.get("head_amp"),
                                            "cached_amp": th.get("cached_amp")})
        th = result["train_head"]
        for key in ("cache_speedup", "loader_efficiency", "loader_vs_npy_float32", "streaming_vs_npy_float32"):
            result[key] = th.get(key)
        _log("metrics benchmark (benchmarks/metrics.py)")
        t0, load0 = time.perf_counter(), os.getloadavg()
        result["metrics"] = bench_metrics.run()
        result["metrics_evaluate_s"] = result["metrics"]["seconds"]
        phase("metrics", t0, load0)
    finally:
        if tmp is not None:
            tmp.cleanup()
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["peak_rss_mib"] = peak_rss_mib()
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    result["targets"] = check_targets(result)
    ordered = {k: result.get(k) for k in HEADLINE}
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
