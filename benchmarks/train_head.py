"""train-head benchmark: what the cache buys, and whether its loader keeps up with the files.

    python benchmarks/train_head.py [--quick] [--device cpu|cuda] [--workdir DIR] [--size N ...] [--clips N] [--rounds N]

In ONE run, on the same synthetic clips (`pipeline.synthetic.make_synthetic`, 320x240 VP9+Opus):

cache_speedup = epoch time of the alternative the cache replaces / epoch time of train-head
  - alternative ("frozen backbone"): every epoch, decode each video (extract-features' own
    DataLoader + workers), run the frozen model3d_1 on it (extract's `batch_features`: bf16
    autocast where the CPU/GPU has it, channels_last), then the same head step as train-head
    (transform, LSTM+FC forward, masked BCE, backward, clipping, AdamW). Its features are kept and
    written into a cache (zarr, float16, 64 clips per shard: extract-features' defaults).
  - train-head: `pipeline.train.train_head` on that cache (default options: head 2x512 + FC,
    batch 16, --input features, --preload none, default workers; plus --preload gpu on CUDA).
    A cached epoch is epoch 2 of a 2-epoch train-head run (epoch 1 pays for worker start-up and
    first calls); validation is excluded on both sides. The two alternate in rounds (frozen epoch,
    cached run, frozen epoch, ...) and cache_speedup is the median of the per-round ratios, so a
    change in the shared machine's load hits both sides of a ratio alike.
  The backbone is a seeded random model3d_1 with BatchNorm calibrated on a few clips (FINDINGS.md:
  uncalibrated features are degenerate and would compress, so read, unrealistically fast).
  The headline is at --size 224 (the real configuration, features [48, 25088]); other sizes are
  reported too: at small sizes the backbone is cheap and the head (whose cost also grows with D)
  takes a larger share, so the speedup is smaller there.

Both are measured in one child process that runs with OMP_WAIT_POLICY=PASSIVE (unless set), the
policy the `foleycache train-head` CLI sets: on a shared CPU, spinning OpenMP threads slow the
LSTM's many small steps 2-3x. Frozen and cached sides get the same policy and thread count.

loader_efficiency = bytes/s of train-head's data loader (`CacheBatches.raw_batches` with preload
  none: shuffled batches from pools of shards, DataLoader workers, batches in reused shared-memory
  buffers; features as tensors, before the model) / bytes/s of a plain sequential read of the same
  shard files in one process (`FeatureCache.read_shard(0), read_shard(1), ...`, which zarr decodes
  with its own threads). Also reported: loader_efficiency_vs_clip_reads, against reading the same
  files clip by clip in order (`cache[0], cache[1], ...`, one thread: the slower plain read here).
  Both warm (page cache), median of interleaved passes, on a cache of the real features tiled to
  LOADER_CLIPS clips. Bytes = decompressed feature bytes.
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
if str(ROOT) not in sys.path:          # `python benchmarks/train_head.py` from anywhere
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

BACKBONE = "model3d_1"
SEED = 0
QUICK = {"clips": 24, "sizes": [224], "rounds": 2}   # 24 clips: epochs of 2 batches, not 1
FULL = {"clips": 32, "sizes": [224, 112], "rounds": 3}
CALIBRATION_CLIPS = 4           # clips that set the benchmark backbone's BatchNorm statistics
LOADER_CLIPS = 384              # clips in the loader-efficiency cache (real features, tiled): 24 batches,
                                # so filling the pipeline at the start of an epoch is not a tenth of it
LOADER_PASSES = 5               # passes per reader; the median is reported
SHARD_SIZE = 64                 # extract-features' default
SEED_TRAIN_CLIPS = 12991        # the seed's train set after removing faulty videos (issue 4's GPU target)
GPU_EPOCH_TARGET_S = 5.0        # one epoch over those clips at [48, 25088] on one H100, --preload gpu


def _sync(dev: torch.device):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def make_clips(out: Path, n: int):
    """Synthetic videos; returns (videos dir, [(0, Annotation)] of the decodable sound clips)."""
    from pipeline.data import load_annotations
    from pipeline.synthetic import TRAIN_JSON, make_synthetic

    summary = make_synthetic(out, n_train=n, n_val=0, seed=SEED, jobs=-1, progress=False)
    faulty = set(summary["faulty"])
    anns = [a for a in load_annotations(out / TRAIN_JSON) if a.id not in faulty]
    return out / "videos", [(0, a) for a in anns]


class FrozenBackboneTraining:
    """The alternative the cache replaces: every epoch, decode + frozen backbone + head step.

    Built once (backbone calibrated, head + optimizer as train-head makes them); `epoch()` runs one
    epoch and returns its seconds, and with keep=True the features/envelopes/lengths it computed.
    """

    def __init__(self, items, videos: Path, size: int, dev: torch.device, batch_size: int):
        from pipeline import backbones
        from pipeline import extract as ex
        from pipeline import train as tr
        from pipeline.head import Head, HeadConfig, InputTransform, splits_input

        self.items, self.dev, self.batch_size = items, dev, batch_size
        self.precision = ex.resolve_precision("auto", dev)
        model = backbones.create_backbone(BACKBONE, seed=SEED)
        self.normalize_on_gpu = ex.normalize_on_device(dev)
        self.dataset_args = dict(videos=videos, frames=48, fps=12, size=size, reduce="max")
        calib = ex.make_loader(ex.ClipDataset(items[:CALIBRATION_CLIPS], **self.dataset_args), 0, torch.device("cpu"))
        clips = [it["frames"] for it in calib if "failure" not in it]
        with ex.autocast(torch.device("cpu"), self.precision):
            backbones.calibrate_batchnorm(model, [torch.stack(clips)])
        self.model = model.to(dev).to(memory_format=torch.channels_last_3d).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.dim = backbones.feature_dim(BACKBONE, size)
        self.transform = InputTransform("features", self.dim).to(dev)     # same arithmetic as a fitted one
        self.head = Head(HeadConfig(input_dim=self.dim)).to(dev)
        self.amp = tr.resolve_amp("auto", dev, wide_input=splits_input(self.dim, self.head.config.hidden))
        self.opt = torch.optim.AdamW(self.head.parameters(), lr=1e-3, betas=tr.ADAM_BETAS, fused=True)  # as train-head
        self.scaler = torch.amp.GradScaler(dev.type, enabled=self.amp == "fp16")

    def _step(self, batch, kept: dict | None):
        from pipeline import extract as ex
        from pipeline import train as tr
        from pipeline.head import masked_bce

        dev = self.dev
        f = ex.batch_features(self.model, [b["frames"] for b in batch], dev, self.precision,
                              normalize=self.normalize_on_gpu, out_dtype="float32")     # [B, T, D]
        env = torch.from_numpy(np.stack([b["envelope"] for b in batch])).to(dev)
        length = torch.tensor([b["length"] for b in batch], device=dev)
        with tr.autocast(dev, self.amp):
            logits = self.head(self.transform(torch.from_numpy(f).to(dev)))
        loss = masked_bce(logits, env, length)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        torch.nn.utils.clip_grad_norm_(self.head.parameters(), tr.GRAD_CLIP)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        if kept is not None:
            kept["features"].append(f.astype(np.float16))
            kept["envelopes"].append(env.cpu().numpy())
            for key in ("length", "id", "label"):
                kept[key + "s"].extend(b[key] for b in batch)

    def epoch(self, keep: bool = False) -> dict:
        from pipeline import extract as ex

        loader = ex.make_loader(ex.ClipDataset(self.items, **self.dataset_args, normalize=not self.normalize_on_gpu),
                                ex.default_workers(self.dev), self.dev)
        kept = {"features": [], "envelopes": [], "lengths": [], "ids": [], "labels": []} if keep else None
        pending, clips = [], 0
        _sync(self.dev)
        t0 = time.perf_counter()
        for item in loader:
            if "failure" in item:
                continue
            pending.append(item)
            clips += 1
            if len(pending) == self.batch_size:
                self._step(pending, kept)
                pending = []
        if pending:
            self._step(pending, kept)
        _sync(self.dev)
        out = {"seconds": time.perf_counter() - t0, "clips": clips}
        if keep:
            out.update(features=np.concatenate(kept["features"]), envelopes=np.concatenate(kept["envelopes"]),
                       lengths=np.asarray(kept["lengths"]), ids=kept["ids"], labels=kept["labels"])
        return out


def cached_epoch(cache_dir: Path, out: Path, device: str, preload: str) -> dict:
    """train-head on the cache with its default options, 2 epochs: epoch 2's training seconds
    (epoch 1 pays for worker start-up and first-call costs)."""
    from pipeline.train import train_head

    s = train_head(cache_dir, cache_dir, out, epochs=2, device=device, preload=preload, overwrite=True,
                   progress=False)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {"epoch_s": lines[-1]["train_seconds"], "samples_per_s": lines[-1]["samples_per_s"],
            "workers": s["config"]["workers"], "amp": s["config"]["amp"], "preload": preload}


def loader_efficiency(alt: dict, workdir: Path, device: str) -> dict:
    """train-head's loader vs a sequential read of the same shards (see the module docstring)."""
    from pipeline.cache import FeatureCache, write_cache
    from pipeline.distributed import Distributed
    from pipeline.head import InputTransform
    from pipeline.train import CacheBatches, DEFAULTS, _default_workers, resolve_device

    n = len(alt["ids"])
    reps = -(-LOADER_CLIPS // n)
    take = lambda a: np.concatenate([a] * reps)[:LOADER_CLIPS]  # noqa: E731
    ids = [f"{i}-{r}" for r in range(reps) for i in alt["ids"]][:LOADER_CLIPS]
    cache = write_cache(workdir / "loader-cache", ids, (alt["labels"] * reps)[:LOADER_CLIPS], take(alt["features"]),
                        take(alt["envelopes"]), take(alt["lengths"]), fmt="zarr", dtype="float16",
                        shard_size=SHARD_SIZE, config={"benchmark": "loader"}, overwrite=True)
    nbytes = len(cache) * cache.frames * cache.dim * np.dtype(cache.dtype).itemsize

    def shard_files() -> float:
        """The plain sequential read: each shard file's features, first to last (read_shard)."""
        c = FeatureCache(cache.path)
        t0 = time.perf_counter()
        for k in range(c.n_shards):
            torch.from_numpy(c.read_shard(k)["features"])
        return time.perf_counter() - t0

    def clip_by_clip() -> float:
        """The same files in the same order, one chunk (clip) per call, in one thread."""
        c = FeatureCache(cache.path)
        t0 = time.perf_counter()
        for i in range(len(c)):
            torch.from_numpy(c[i]["features"])
        return time.perf_counter() - t0

    dev = resolve_device(device)
    workers = _default_workers(1)
    batches = CacheBatches(FeatureCache(cache.path), InputTransform("features", cache.dim),
                           DEFAULTS["batch_size"], shuffle=True, seed=SEED, preload="none", device=dev,
                           workers=workers, dist=Distributed(device=dev))

    def loader(epoch: int) -> float:
        batches.set_epoch(epoch)
        t0 = time.perf_counter()
        for b in batches.raw_batches():          # the DataLoader's batches: tensors, before the model
            b["features"].to(dev, non_blocking=True)
        _sync(dev)
        return time.perf_counter() - t0

    loader(0)                                    # starts the persistent workers, warms the page cache
    shard_files()
    seq, clips, load = [], [], []
    for p in range(LOADER_PASSES):              # interleaved: all see the same machine load
        seq.append(shard_files())
        clips.append(clip_by_clip())
        load.append(loader(p + 1))
    mbps = lambda times: nbytes / statistics.median(times) / 1e6  # noqa: E731
    return {"loader_efficiency": round(mbps(load) / mbps(seq), 3),
            "loader_efficiency_vs_clip_reads": round(mbps(load) / mbps(clips), 3),
            "loader_MBps": round(mbps(load), 1), "sequential_shard_files_MBps": round(mbps(seq), 1),
            "sequential_clip_reads_MBps": round(mbps(clips), 1), "clips": len(cache), "shards": cache.n_shards,
            "bytes": nbytes, "workers": workers, "batch_size": DEFAULTS["batch_size"]}


def preloaded_epoch(n: int, dim: int, device: str, workdir: Path, batch_size: int | None = None) -> dict:
    """The --preload gpu case at the seed's scale without writing a 31 GB cache: random float16
    features [n, 48, dim] on the device, run through train-head's own loop (`fit`, default head,
    AdamW, autocast, checkpoints) for 2 epochs; epoch 2's training seconds (epoch 1 warms up)."""
    from pipeline.distributed import Distributed
    from pipeline.head import Head, HeadConfig, InputTransform, splits_input
    from pipeline import train as tr

    dev = torch.device(device)
    batch_size = batch_size or tr.DEFAULTS["batch_size"]
    torch.manual_seed(SEED)
    features = torch.randn((n, 48, dim), dtype=torch.float16, device=dev)     # 31 GB at 12991 x 25088
    envelope = torch.rand((n, 48), device=dev)
    length = torch.full((n,), 48, dtype=torch.int64, device=dev)
    transform = InputTransform("features", dim).to(dev)        # unfitted: the same arithmetic
    dist = Distributed(device=dev)
    batches = lambda k, shuffle: tr.CacheBatches.from_tensors(  # noqa: E731
        features[:k], envelope[:k], length[:k], transform, batch_size, shuffle=shuffle, seed=SEED, device=dev,
        dist=dist)
    head = Head(HeadConfig(input_dim=dim)).to(dev)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, betas=tr.ADAM_BETAS, fused=True)
    amp = tr.resolve_amp("auto", dev, wide_input=splits_input(dim, head.config.hidden))
    out = Path(workdir) / "preloaded-epoch"
    tr.prepare_run_dir(out, resume=False, overwrite=True)
    tr.fit(head, opt, batches(n, True), batches(min(n, 256), False), run_dir=out, epochs=2, warmup_steps=10,
           dist=dist, describe={"benchmark": "preloaded_epoch"}, config={"command": "benchmark"}, amp=amp,
           progress=False)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    del features
    return {"clips": n, "features": [48, dim], "batch_size": batch_size, "amp": amp, "device": str(dev),
            "epoch_s": lines[-1]["train_seconds"], "samples_per_s": lines[-1]["samples_per_s"],
            "target_s": GPU_EPOCH_TARGET_S if (n, dim) == (SEED_TRAIN_CLIPS, 25088) else None}


def run(quick: bool, device: str, workdir: Path, sizes: list[int] | None = None, clips: int | None = None,
        rounds: int | None = None) -> dict:
    """Measure cache_speedup (at each size; the headline at the first) and loader_efficiency.

    Both sides run in one child process whose OpenMP threads sleep when idle (OMP_WAIT_POLICY=PASSIVE
    unless the environment sets it), as in the `foleycache train-head` CLI: that policy is fixed when
    torch loads, and this (caller's) process may have loaded torch already.
    """
    import subprocess

    cmd = [sys.executable, str(Path(__file__).resolve()), "--in-process", "--device", device, "--workdir", str(workdir)]
    cmd += ["--quick"] if quick else []
    for flag, values in (("--size", sizes or []), ("--clips", [clips] if clips else []),
                         ("--rounds", [rounds] if rounds else [])):
        for v in values:
            cmd += [flag, str(v)]
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        raise RuntimeError(f"benchmark child failed (exit {r.returncode}): {r.stderr[-3000:]}")
    result = json.loads(r.stdout)
    result["omp_wait_policy"] = env["OMP_WAIT_POLICY"]
    return result


def measure(quick: bool, device: str, workdir: Path, sizes: list[int] | None = None, clips: int | None = None,
            rounds: int | None = None) -> dict:
    """run()'s measurements, in this process."""
    from pipeline.cache import write_cache
    from pipeline.train import DEFAULTS

    plan = QUICK if quick else FULL
    sizes, clips, n_rounds = sizes or plan["sizes"], clips or plan["clips"], rounds or plan["rounds"]
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)
    t_start = time.perf_counter()
    videos, items = make_clips(workdir / "synthetic", clips)
    result = {"device": device, "clips": len(items), "batch_size": DEFAULTS["batch_size"],
              "torch_threads": torch.get_num_threads(), "load_average_start": [round(x, 2) for x in os.getloadavg()],
              "by_size": []}
    alt_at_first = None
    for size in sizes:
        alt = FrozenBackboneTraining(items, videos, size, dev, DEFAULTS["batch_size"])
        cache_dir = workdir / f"cache-{size}"
        variants = ["none"] + (["gpu"] if dev.type == "cuda" else [])
        rounds = []         # alternating: frozen-backbone epoch, then cached epoch(s), so load drift hits both
        for r in range(n_rounds):
            a = alt.epoch(keep=r == 0)
            if r == 0:
                alt_at_first, n_clips = alt_at_first or a, a["clips"]
                write_cache(cache_dir, a["ids"], a["labels"], a["features"], a["envelopes"], a["lengths"],
                            fmt="zarr", dtype="float16", shard_size=SHARD_SIZE,
                            config={"backbone": BACKBONE, "benchmark": "train_head", "size": size}, overwrite=True)
            row = {"frozen_backbone_epoch_s": a["seconds"]}
            for preload in variants:
                row[preload] = cached_epoch(cache_dir, workdir / f"run-{size}-{preload}", device, preload)
            rounds.append(row)
        med = lambda xs: statistics.median(xs)  # noqa: E731
        out = {"size": size, "features": [48, alt.dim], "backbone_precision": alt.precision, "rounds": n_rounds,
               "frozen_backbone_epoch_s": round(med([r["frozen_backbone_epoch_s"] for r in rounds]), 3)}
        out["frozen_backbone_s_per_clip"] = round(out["frozen_backbone_epoch_s"] / n_clips, 4)
        for preload in variants:
            key = "" if preload == "none" else f"_preload_{preload}"
            cached = [r[preload]["epoch_s"] for r in rounds]
            out[f"cached_epoch_s{key}"] = round(med(cached), 4)
            out[f"cached_s_per_clip{key}"] = round(med(cached) / n_clips, 5)
            # The median of per-round ratios: each ratio compares two epochs run minutes apart at most.
            out[f"cache_speedup{key}"] = round(med([r["frozen_backbone_epoch_s"] / r[preload]["epoch_s"]
                                                    for r in rounds]), 2)
            out[f"cached_detail{key}"] = [r[preload] for r in rounds]
        out["frozen_backbone_epochs_s"] = [round(r["frozen_backbone_epoch_s"], 3) for r in rounds]
        result["by_size"].append(out)
    head = result["by_size"][0]
    result.update(size=head["size"], cache_speedup=head["cache_speedup"], cached_epoch_s=head["cached_epoch_s"],
                  frozen_backbone_epoch_s=head["frozen_backbone_epoch_s"])
    if dev.type == "cuda":          # and the GPU target: 12,991 clips of [48, 25088], <= 5 s per epoch
        result["cache_speedup_preload_gpu"] = head["cache_speedup_preload_gpu"]
        result["preloaded_epoch"] = preloaded_epoch(QUICK["clips"] * 100 if quick else SEED_TRAIN_CLIPS, 25088,
                                                    device, workdir)
        result["gpu_epoch_s"] = result["preloaded_epoch"]["epoch_s"]
    result["loader"] = loader_efficiency(alt_at_first, workdir, device)
    result["loader_efficiency"] = result["loader"]["loader_efficiency"]
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"{QUICK['clips']} clips at {QUICK['sizes']}")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--workdir", type=Path, help="scratch directory (default: a temporary one)")
    p.add_argument("--size", type=int, action="append", help="frame size(s); the first is the headline")
    p.add_argument("--clips", type=int, help="synthetic clips to generate")
    p.add_argument("--rounds", type=int, help="alternating frozen-backbone / cached measurements")
    p.add_argument("--in-process", action="store_true", help="measure here (run() starts this in a child)")
    args = p.parse_args(argv)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="foleycache-train-head-bench-") as tmp:
        how = measure if args.in_process else run
        result = how(args.quick, args.device, args.workdir or Path(tmp), sizes=args.size, clips=args.clips,
                     rounds=args.rounds)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
