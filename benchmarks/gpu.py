"""GPU benchmark in ONE command: correctness, backbone speed vs the compute floor, extraction, train-head.

    python benchmarks/gpu.py [--clips 512] [--batch-sizes 8,16,32] [--peak-tflops X] [--no-compile]
                             [--train-clips 1024] [--json FILE]

On a GPU machine, from the repository root. Where its python3 has torch, h5py, scipy,
safetensors, click, tqdm, joblib but no network and not PyAV or zarr, bring those as wheels
(`.whl/`, git-ignored; downloaded beforehand with
`pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
-d .whl av==18.1.0 zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0`)
and run:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 && \
        python3 benchmarks/gpu.py

It writes the JSON to --json and, when the environment has OUT (an output folder), to
$OUT/gpu.json; a short table is printed last. Sections (each one's failure is
recorded and the others still run):
  flops      FLOPs per clip from torch.utils.flop_counter.FlopCounterMode (convolutions only:
             BatchNorm/ReLU are not counted), the dense bf16 peak assumed for this GPU and a
             measured bf16 matmul rate -> compute floor clips/s
  data       synthetic clips (pipeline.synthetic, 320x240 VP9+Opus), decode-only clips/s with
             extract-features' workers
  correctness GPU bf16 (the extraction path: channels_last_3d, autocast, GPU-side normalisation)
             and GPU fp32 (TF32 off) features vs CPU float32, relative L2 per clip
  backbone   model only, clips already on the GPU, CUDA events, batch sizes 8/16/32 (+ torch.compile
             at the best one): clips/s, achieved TFLOP/s, fraction of the floor
  extract    pipeline.extract.extract_features end to end (decode workers, pinned memory,
             non-blocking copies, writer thread, zarr shards) -> clips/s, time for 12,991 clips
  train_head pipeline.train.train_head --preload gpu on a cache of --train-clips clips (real
             features tiled); epoch time extrapolated to 12,991 clips unless --train-clips 12991
Targets: extraction >= 150 clips/s at 224x224x48 (12,991 clips < 90 s); train-head
epoch over 12,991 cached clips <= 5 s with --preload gpu; backbone within 2x of the compute floor.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

SIZE, FRAMES = 224, 48
SPLIT_CLIPS = 12_991          # the seed's train split after removing faulty videos
# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, TFLOP/s. Matched in order.
PEAK_BF16_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4),
                    ("GH200", 989.4), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10", 125.0)]
CALIBRATION_CLIPS = 8
CHECK_CLIPS = 2               # clips compared against the CPU float32 result
WARMUP, ITERS = 3, 10         # backbone timing: warm-up batches (cuDNN autotune), timed batches
TRAIN_EPOCHS = 3              # train-head epochs; the median of epochs 2.. is reported
# bf16 vs float32 features, relative L2. bf16 keeps 8 mantissa bits and the error compounds over 11
# conv+BN layers: CPU bf16 autocast gives 4.5-5% on a calibrated model3d_1 (2-core CPU, sizes 32 and
# 112), so GPU bf16 is held to the same order; float32 without TF32 must agree to rounding.
REL_L2_LIMIT = 0.08
REL_L2_LIMIT_FP32 = 1e-3


def normalize_on_device(dev: torch.device) -> bool:
    """Normalise frames on the GPU (one fused pass there) instead of in every decode worker."""
    return dev.type == "cuda"


def rel_l2(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def assumed_peak(name: str, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, "--peak-tflops"
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops, f"datasheet dense bf16 for '{key}'"
    return None, "unknown GPU: pass --peak-tflops"


class Timer:
    """Seconds of device work: CUDA events on a GPU, a synchronised perf_counter on the CPU."""

    def __init__(self, dev: torch.device):
        self.dev = dev

    def __enter__(self):
        if self.dev.type == "cuda":
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.dev.type == "cuda":
            self.end.record()
            torch.cuda.synchronize(self.dev)
            self.seconds = self.start.elapsed_time(self.end) / 1e3
        else:
            self.seconds = time.perf_counter() - self.t0
        return False


def measured_matmul_tflops(dev: torch.device) -> float:
    """bf16 n^3 matmul on random data, median of 10 after 3 warm-ups (the practical ceiling)."""
    n = 8192 if dev.type == "cuda" else 512
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    times = []
    for i in range(13):
        with Timer(dev) as t:
            a @ b
        if i >= 3:
            times.append(t.seconds)
    return 2 * n ** 3 / statistics.median(times) / 1e12


def clip_flops(size: int = SIZE) -> int:
    from torch.utils.flop_counter import FlopCounterMode
    from pipeline import backbones

    model = backbones.create_backbone("model3d_1").to("meta")
    with FlopCounterMode(display=False) as counter:
        model(torch.empty(1, 3, FRAMES, size, size, device="meta"))
    return int(counter.get_total_flops())


def gpu_model(weights: Path, dev, compile: bool = False):
    """The model exactly as extract-features prepares it on CUDA."""
    from pipeline import backbones
    model = backbones.create_backbone("model3d_1")
    backbones.load_checkpoint(model, weights)
    model = model.to(dev).eval().to(memory_format=torch.channels_last_3d)
    return torch.compile(model) if compile else model


def time_backbone(model, clips: list, batch: int, dev, precision: str) -> dict:
    """Model only on clips resident on the GPU (0..255 frames; normalised on the GPU as in extract)."""
    from pipeline import runtime
    from pipeline.media import normalize_frames

    reps = -(-batch // len(clips))
    x = torch.stack((clips * reps)[:batch]).to(dev)                # [B, 3, T, S, S] float32, 0..255

    def step():
        with torch.no_grad(), runtime.autocast(dev, precision):
            return model(normalize_frames(x, channel_dim=1)).to(torch.float16)

    for _ in range(WARMUP):
        step()
    times = []
    for _ in range(ITERS):
        with Timer(dev) as t:
            step()
        times.append(t.seconds)
    med = statistics.median(times)
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    return {"batch": batch, "ms_per_batch": round(med * 1e3, 2), "clips_per_s": round(batch / med, 1),
            "ms_per_batch_all": [round(t * 1e3, 2) for t in times],
            "peak_memory_gib": round(peak, 2) if peak is not None else None}


class Sections:
    """Run named sections; a failure is recorded (with its traceback) and the next one still runs."""

    def __init__(self, result: dict):
        self.result = result

    def run(self, name: str, fn, *args):
        t0 = time.perf_counter()
        _log(f"{name} ...")
        try:
            out = fn(*args)
        except Exception as e:          # keep the other sections' numbers
            out = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=8)}
            _log(f"{name} FAILED: {out['error']}")
        if isinstance(out, dict):
            out.setdefault("seconds", round(time.perf_counter() - t0, 2))
        self.result[name] = out
        return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=512, help="synthetic sound clips for decode/extract")
    p.add_argument("--batch-sizes", default="8,16,32")
    p.add_argument("--extract-batch", type=int, help="extract-features --batch-size (default: the fastest backbone batch)")
    p.add_argument("--peak-tflops", type=float, help="dense bf16 peak of this GPU (default: datasheet by name)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile backbone measurement")
    p.add_argument("--train-clips", type=int, default=1024,
                   help=f"clips in the train-head cache ({SPLIT_CLIPS} = the real split, needs ~15 GB disk)")
    p.add_argument("--json", type=Path)
    p.add_argument("--workdir", type=Path)
    p.add_argument("--size", type=int, default=SIZE, help="frame size (224 = the real configuration)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cpu: a smoke test of this script's code paths (tiny --size), numbers meaningless")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("benchmarks/gpu.py needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    for mod in ("av", "zarr"):
        try:
            __import__(mod)
        except ImportError:
            print(f"benchmarks/gpu.py: python package {mod!r} is missing; install the carried wheels first "
                  "(see this file's docstring)", file=sys.stderr)
            return 2

    from pipeline import backbones
    from pipeline import extract as ex
    from pipeline import runtime
    from pipeline.media import normalize_frames

    dev = torch.device(args.device)
    size = args.size
    torch.backends.cudnn.benchmark = True
    precision = runtime.resolve_precision("auto", dev)
    machine = {"torch": torch.__version__, "cpu_cores": os.cpu_count(), "gpu": None}
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        machine.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                       sm_count=props.multi_processor_count, capability=f"{props.major}.{props.minor}",
                       cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    result = {"benchmark": "foleycache benchmarks/gpu.py", "argv": list(argv) if argv is not None else sys.argv[1:],
              "machine": machine, "device": str(dev), "size": size, "frames": FRAMES, "precision": precision}
    sections = Sections(result)
    tmp = None
    if args.workdir:
        work = args.workdir
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="foleycache-gpu-bench-")
        work = Path(tmp.name)
    state: dict = {}
    on_device = normalize_on_device(dev)

    def raw(frames: torch.Tensor) -> torch.Tensor:
        """Decoded frames as 0..255 (the loader normalised them already where the GPU does not)."""
        if on_device:
            return frames.clone()
        from pipeline.media import MEAN, STD
        shape = (3, 1, 1, 1)
        return frames * (torch.tensor(STD).view(shape) * 255) + torch.tensor(MEAN).view(shape) * 255

    def flops():
        peak, source = assumed_peak(machine["gpu"] or "cpu", args.peak_tflops)
        matmul = measured_matmul_tflops(dev)
        f = clip_flops(size)
        out = {"flops_per_clip": f, "gflop_per_clip": round(f / 1e9, 1), "counted": "Conv3d only (FlopCounterMode)",
               "peak_bf16_tflops_assumed": peak, "peak_source": source,
               "matmul_bf16_tflops_measured": round(matmul, 1),
               "floor_clips_per_s_peak": round(peak * 1e12 / f, 1) if peak else None,
               "floor_clips_per_s_matmul": round(matmul * 1e12 / f, 1)}
        state["flops"], state["floor"] = f, out["floor_clips_per_s_peak"] or out["floor_clips_per_s_matmul"]
        return out

    def data():
        from benchmarks.run import make_clips
        from pipeline.data import load_annotations
        from pipeline.decoding import ClipDataset
        videos, annotations, made = make_clips(work / "synthetic", args.clips)
        items = [(0, a) for a in load_annotations(annotations)]
        workers = runtime.decode_workers(dev)
        loader = ex.make_loader(ClipDataset(items, videos=videos, frames=FRAMES, fps=12, size=size, reduce="max",
                                               normalize=not normalize_on_device(dev)), workers, dev)
        kept, n = [], 0
        t0 = time.perf_counter()
        for item in loader:
            if "failure" in item:
                continue
            n += 1
            if len(kept) < max(CALIBRATION_CLIPS, CHECK_CLIPS):
                kept.append(raw(item["frames"]))
        decode_s = time.perf_counter() - t0
        state.update(videos=videos, annotations=annotations, clips=kept, n=n)
        # calibrated weights (BatchNorm statistics on real clips), fp32 on the GPU, TF32 off
        model = backbones.create_backbone("model3d_1").to(dev)
        tf32 = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        backbones.calibrate_batchnorm(model, [normalize_frames(torch.stack(kept[:CALIBRATION_CLIPS]).to(dev), 1)])
        torch.backends.cudnn.allow_tf32 = tf32
        state["weights"] = work / "gpu-bench-backbone.safetensors"
        backbones.save_safetensors(model.cpu(), state["weights"])
        return {"clips": n, "generation": made, "workers": workers, "decode_only_s": round(decode_s, 3),
                "decode_only_clips_per_s": round(n / decode_s, 1)}

    def correctness():
        clips = state["clips"][:CHECK_CLIPS]
        cpu = backbones.create_backbone("model3d_1")
        backbones.load_checkpoint(cpu, state["weights"])
        with torch.no_grad():
            ref = [cpu(normalize_frames(c[None], 1))[0].numpy() for c in clips]          # [T, D] float32
        model = gpu_model(state["weights"], dev)
        bf16 = [ex.batch_features(model, [c], dev, precision, normalize=True, out_dtype="float32")[0] for c in clips]
        stored = [ex.batch_features(model, [c], dev, precision, normalize=True, out_dtype="float16")[0] for c in clips]
        tf32 = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        fp32 = [ex.batch_features(model, [c], dev, "fp32", normalize=True, out_dtype="float32")[0] for c in clips]
        torch.backends.cudnn.allow_tf32 = tf32
        plain = backbones.create_backbone("model3d_1")                                   # contiguous layout
        backbones.load_checkpoint(plain, state["weights"])
        plain = plain.to(dev)
        with torch.no_grad(), runtime.autocast(dev, precision):
            contiguous = [plain(normalize_frames(c[None].to(dev), 1))[0].float().cpu().numpy() for c in clips]
        weight = next(model.parameters())
        out = {"clips": len(clips),
               "rel_l2_gpu_bf16_vs_cpu_fp32": [round(rel_l2(a, b), 5) for a, b in zip(bf16, ref)],
               "rel_l2_gpu_bf16_float16_stored_vs_cpu_fp32": [round(rel_l2(a, b), 5) for a, b in zip(stored, ref)],
               "rel_l2_gpu_fp32_notf32_vs_cpu_fp32": [round(rel_l2(a, b), 7) for a, b in zip(fp32, ref)],
               "rel_l2_channels_last_vs_contiguous_bf16": [round(rel_l2(a, b), 5) for a, b in zip(bf16, contiguous)],
               "weights_channels_last_3d": weight.dim() != 5 or weight.is_contiguous(memory_format=torch.channels_last_3d),
               "limit_bf16": REL_L2_LIMIT, "limit_fp32": REL_L2_LIMIT_FP32}
        out["ok"] = (max(out["rel_l2_gpu_bf16_vs_cpu_fp32"]) < REL_L2_LIMIT
                     and max(out["rel_l2_gpu_fp32_notf32_vs_cpu_fp32"]) < REL_L2_LIMIT_FP32)
        return out

    def backbone():
        rows = []
        model = gpu_model(state["weights"], dev)
        for b in [int(x) for x in args.batch_sizes.split(",")]:
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            rows.append(time_backbone(model, state["clips"], b, dev, precision))
            _log(f"  batch {b}: {rows[-1]['clips_per_s']} clips/s")
        best = max(rows, key=lambda r: r["clips_per_s"])
        out = {"eager": rows, "best_batch": best["batch"], "best_clips_per_s": best["clips_per_s"]}
        if not args.no_compile:
            t0 = time.perf_counter()
            compiled = gpu_model(state["weights"], dev, compile=True)
            row = time_backbone(compiled, state["clips"], best["batch"], dev, precision)
            row["compile_and_warmup_s"] = round(time.perf_counter() - t0, 1)
            out["compiled"] = row
            _log(f"  compiled, batch {best['batch']}: {row['clips_per_s']} clips/s")
            if row["clips_per_s"] > out["best_clips_per_s"]:
                out["best_clips_per_s"] = row["clips_per_s"]
        state["backbone_cps"], state["best_batch"] = out["best_clips_per_s"], best["batch"]
        if state.get("flops"):
            f, floor = state["flops"], state["floor"]
            out["achieved_tflops"] = round(out["best_clips_per_s"] * f / 1e12, 1)
            out["floor_clips_per_s"] = floor
            out["fraction_of_floor"] = round(out["best_clips_per_s"] / floor, 3)
            out["within_2x_of_floor"] = out["best_clips_per_s"] * 2 >= floor
        return out

    def extract():
        batch = args.extract_batch or state.get("best_batch", 16)
        out_dir = work / "extract-cache"
        t0 = time.perf_counter()
        s = ex.extract_features(videos=state["videos"], annotations=state["annotations"], out=out_dir,
                                checkpoint=state["weights"], size=size, batch_size=batch, device=str(dev),
                                overwrite=True, progress=False)
        seconds = time.perf_counter() - t0
        cps = s["cached"] / seconds
        state["cache"] = out_dir
        refs = [x for x in (result.get("data", {}).get("decode_only_clips_per_s"), state.get("backbone_cps")) if x]
        ref = min(refs) if refs else None
        return {"clips": s["cached"], "batch_size": batch, "workers": s["workers"], "seconds": round(seconds, 2),
                "clips_per_s": round(cps, 1), "split_seconds_12991": round(SPLIT_CLIPS / cps, 1),
                "target_clips_per_s": 150, "met": cps >= 150,
                "efficiency_vs_min_decode_backbone": round(cps / ref, 3) if ref else None}

    def train_head():
        from pipeline.cache import FeatureCache, write_cache
        from pipeline.train import train_head as train

        src = FeatureCache(state["cache"])
        data = src.read_many(range(len(src)))
        n, m = len(src), args.train_clips
        reps = -(-m // n)
        tile = lambda a: np.concatenate([a] * reps)[:m]  # noqa: E731
        ids = [f"{i}-{r}" for r in range(reps) for i in data["id"]][:m]
        cache_dir = work / "train-cache"
        t0 = time.perf_counter()
        write_cache(cache_dir, ids, (data["label"] * reps)[:m], tile(data["features"]), tile(data["envelope"]),
                    tile(data["length"]), fmt="zarr", dtype="float16", shard_size=64,
                    config={"benchmark": "gpu train-head"}, overwrite=True)
        write_s = time.perf_counter() - t0
        run_dir = work / "train-run"
        preload = "gpu" if dev.type == "cuda" else "ram"
        train(cache_dir, cache_dir, run_dir, epochs=TRAIN_EPOCHS, device=str(dev), preload=preload, overwrite=True,
              progress=False)
        lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        epoch_s = statistics.median(m_["train_seconds"] for m_ in lines[1:])
        full = epoch_s * SPLIT_CLIPS / m
        return {"clips": m, "preload": preload, "write_cache_s": round(write_s, 1), "epoch_s": round(epoch_s, 3),
                "epoch_s_all": [m_["train_seconds"] for m_ in lines],
                "epoch_s_12991": round(full, 2), "extrapolated": m != SPLIT_CLIPS,
                "target_s": 5.0, "met": full <= 5.0}

    started = time.perf_counter()
    try:
        sections.run("flops", flops)
        sections.run("data", data)
        if "weights" in state:
            sections.run("correctness", correctness)
            sections.run("backbone", backbone)
            sections.run("extract", extract)
        if "cache" in state:
            sections.run("train_head", train_head)
    finally:
        if tmp is not None:
            tmp.cleanup()
    result["seconds"] = round(time.perf_counter() - started, 1)

    text = json.dumps(result, indent=1, default=str)
    targets = [p for p in ([args.json] if args.json else []) + ([Path(os.environ["OUT"]) / "gpu.json"]
                                                                if os.environ.get("OUT") else [])]
    for path in targets:
        path.write_text(text + "\n")
    print(text)
    print(summary(result))
    return 0


def summary(r: dict) -> str:
    g = lambda sec, key: r.get(sec, {}).get(key, "n/a") if isinstance(r.get(sec), dict) else "n/a"  # noqa: E731
    return "\n".join([
        f"GPU {r['machine']['gpu']}, torch {r['machine']['torch']}, {r['machine']['cpu_cores']} CPU cores",
        f"FLOPs/clip {g('flops', 'gflop_per_clip')} GFLOP; peak {g('flops', 'peak_bf16_tflops_assumed')} TFLOP/s "
        f"({g('flops', 'peak_source')}); floor {g('flops', 'floor_clips_per_s_peak')} clips/s "
        f"(measured matmul {g('flops', 'matmul_bf16_tflops_measured')} TFLOP/s -> {g('flops', 'floor_clips_per_s_matmul')})",
        f"correctness: bf16 vs CPU fp32 rel L2 {g('correctness', 'rel_l2_gpu_bf16_vs_cpu_fp32')}, "
        f"fp32 {g('correctness', 'rel_l2_gpu_fp32_notf32_vs_cpu_fp32')}, ok {g('correctness', 'ok')}",
        f"decode-only {g('data', 'decode_only_clips_per_s')} clips/s ({g('data', 'workers')} workers)",
        f"backbone-only best {g('backbone', 'best_clips_per_s')} clips/s (batch {g('backbone', 'best_batch')}), "
        f"{g('backbone', 'achieved_tflops')} TFLOP/s, {g('backbone', 'fraction_of_floor')} of floor",
        f"extract {g('extract', 'clips_per_s')} clips/s -> 12,991 clips in {g('extract', 'split_seconds_12991')} s "
        f"(target >= 150 clips/s: {g('extract', 'met')})",
        f"train-head --preload gpu epoch {g('train_head', 'epoch_s')} s on {g('train_head', 'clips')} clips -> "
        f"{g('train_head', 'epoch_s_12991')} s for 12,991 (extrapolated: {g('train_head', 'extrapolated')}; "
        f"target <= 5 s: {g('train_head', 'met')})",
    ])


def _log(msg: str):
    print(f"[gpu-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
