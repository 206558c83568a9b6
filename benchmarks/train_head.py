"""train-head benchmark: what the cache buys, and whether its loader keeps up with the files.

    python benchmarks/train_head.py [--quick] [--device cpu|cuda] [--precision fp32|bf16|auto]
        [--workdir DIR] [--size N ...] [--clips N] [--rounds N] [--videos DIR --annotations FILE]
        [--weights FILE]

In ONE run, on the same synthetic clips (`pipeline.synthetic.make_synthetic`, 320x240 VP9+Opus, or
the ones --videos/--annotations name: benchmarks/run.py passes its own, and its calibrated weights):

cache_speedup = seconds per clip of the alternative the cache replaces / seconds per clip of train-head
  - alternative ("frozen backbone"): every epoch, decode each video (extract-features' own
    DataLoader + workers), run the frozen model3d_1 on it (extract's `batch_features`), then the
    same head step as train-head (transform, LSTM+FC forward, masked BCE, backward, clipping,
    AdamW). Its features are kept and written into a cache (zarr, float16, 64 clips per shard:
    extract-features' defaults), tiled to at least CACHED_MIN_CLIPS clips.
  - train-head: `pipeline.train.train_head` on that cache (default options but --amp: head 2x512 +
    FC, batch 16, --input features, --preload none, default workers; plus --preload gpu on CUDA).
    A cached epoch is epoch 2 of a 2-epoch train-head run (epoch 1 pays for worker start-up and
    first calls); validation is excluded on both sides. The two alternate in rounds (frozen epoch,
    cached run, frozen epoch, ...) and cache_speedup is the median of the per-round ratios, so a
    change in the shared machine's load hits both sides of a ratio alike.
  --precision sets both sides alike: fp32 = no autocast in the backbone, head --amp off (the
  --quick default: bf16 is emulated on AVX2-only CPUs); bf16; auto = the product's own choices.
  The backbone is a seeded random model3d_1 with BatchNorm calibrated on a few clips (docs/learning.md:
  uncalibrated features are degenerate and would compress, so read, unrealistically fast).
  Full mode: --size 224 headline (the real configuration, features [48, 25088]) and 112. --quick:
  112 (D = 8192), one batch of 16 clips per frozen epoch, to fit a 2-core AVX2 CPU.

Both are measured in one child process that runs with OMP_WAIT_POLICY=PASSIVE (unless set), the
policy the `foleycache train-head` CLI sets: on a shared CPU, spinning OpenMP threads slow the
LSTM's many small steps 2-3x. Frozen and cached sides get the same policy and thread count.

The loader (`loader_efficiency`, see its docstring), on caches of the real features tiled to
LOADER_CLIPS clips (one per --compression codec), warm, median of interleaved passes, float32
batches delivered per second, against one float32 .npy per video, memory-mapped, copied into
batches in order (the usual layout; the honest reference):
  loader_vs_npy_float32     train-head's default path (--preload auto: RAM when the cache fits)
  streaming_vs_npy_float32  --preload none on the default codec (reader workers, a batch read per
                            shard straight into reused shared-memory buffers); and per codec
  loader_efficiency         that streaming loader / a plain sequential read of the same shard files
  plus --preload ram, disk / float32 per codec, and cold reads of the streaming loader per codec and
  of the .npy files (each dropped from the page cache first, where the OS allows).
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
# --quick fits a 2-core AVX2-only CPU in float32: 112 px (D = 8192), one batch of 16 clips per
# frozen-backbone epoch. Full: the real 224 px configuration as the headline, 112 beside it.
QUICK = {"clips": 16, "sizes": [112], "rounds": 2}
FULL = {"clips": 32, "sizes": [224, 112], "rounds": 3}
PRECISIONS = ("fp32", "bf16", "auto")   # --precision: both sides' backbone autocast and head amp
CACHED_MIN_CLIPS = 64           # the cached side's cache: the frozen epoch's features tiled to >= 4 batches,
                                # so a cached epoch is not 1-2 steps dominated by its first batch's fetch
CALIBRATION_CLIPS = 4           # clips that set the benchmark backbone's BatchNorm statistics
LOADER_CLIPS = 384              # clips in the loader-efficiency cache (real features, tiled): 24 batches,
                                # so filling the pipeline at the start of an epoch is not a tenth of it
LOADER_PASSES = 5               # passes per reader; the median is reported
COLD_PASSES = 3                 # cold passes per reader (files dropped from the page cache first); the median
CODECS = ("lz4", "zstd", "none")  # extract-features --compression choices, each read by the loader
SHARD_SIZE = 64                 # extract-features' default
SEED_TRAIN_CLIPS = 12991        # the seed's train set after removing faulty videos (the GPU target)
GPU_EPOCH_TARGET_S = 5.0        # one epoch over those clips at [48, 25088] on one H100, --preload gpu


def _sync(dev: torch.device):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def phase_precisions(precision: str, dev: torch.device) -> tuple[str, str]:
    """--precision -> (backbone precision for extract's autocast, head --amp for train-head).

    fp32: no autocast anywhere (what an AVX2-only CPU should run: bf16 is emulated there, ~50x
    slower). bf16: both in bf16. auto: what the product picks (bf16 where the CPU/GPU has it; the
    head's amp is train-head's own "auto" rule)."""
    from pipeline import runtime

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return "fp32", "off"
    if precision == "bf16":
        return "bf16", "bf16"
    return runtime.resolve_precision("auto", dev), "auto"


def make_clips(out: Path, n: int):
    """Synthetic videos; returns (videos dir, [(0, Annotation)] of the decodable sound clips)."""
    from pipeline.synthetic import TRAIN_JSON, make_synthetic

    summary = make_synthetic(out, n_train=n, n_val=0, seed=SEED, jobs=-1, progress=False)
    return out / "videos", _decodable(out / TRAIN_JSON, set(summary["faulty"]))


def existing_clips(videos: Path, annotations: Path):
    """Clips another benchmark made (benchmarks/run.py passes its own): (videos, [(0, Annotation)])."""
    return Path(videos), _decodable(Path(annotations), set())


def _decodable(annotations: Path, faulty: set):
    from pipeline.data import load_annotations

    return [(0, a) for a in load_annotations(annotations, classes="sound12") if a.id not in faulty]


class FrozenBackboneTraining:
    """The alternative the cache replaces: every epoch, decode + frozen backbone + head step.

    Built once (backbone calibrated, or loaded from `weights`: the extract benchmark's calibrated
    model3d_1; head + optimizer as train-head makes them); `epoch()` runs one epoch and returns its
    seconds, and with keep=True the features/envelopes/lengths it computed.
    """

    def __init__(self, items, videos: Path, size: int, dev: torch.device, batch_size: int, precision: str = "auto",
                 weights: Path | None = None):
        from pipeline import backbones
        from pipeline import extract as ex
        from pipeline import runtime
        from pipeline.decoding import ClipDataset
        from pipeline.head import Head, HeadConfig, InputTransform, splits_input
        from pipeline.loop import ADAM_BETAS

        self.items, self.dev, self.batch_size = items, dev, batch_size
        self.precision, amp = phase_precisions(precision, dev)
        model = backbones.create_backbone(BACKBONE, seed=SEED)
        self.dataset_args = dict(videos=videos, frames=48, fps=12, size=size, reduce="max")
        if weights is not None:
            backbones.load_checkpoint(model, weights)
        else:
            calib = ex.make_loader(ClipDataset(items[:CALIBRATION_CLIPS], **self.dataset_args), 0,
                                   torch.device("cpu"))
            clips = [it["frames"] for it in calib if "failure" not in it]
            with runtime.autocast(torch.device("cpu"), self.precision):
                backbones.calibrate_batchnorm(model, [torch.stack(clips)])
        model = model.to(dev)
        if dev.type == "cuda" or self.precision == "bf16":     # as extract-features lays out model3d_1
            model = model.to(memory_format=torch.channels_last_3d)
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.dim = backbones.feature_dim(BACKBONE, size)
        self.transform = InputTransform("features", self.dim).to(dev)     # same arithmetic as a fitted one
        self.head = Head(HeadConfig(input_dim=self.dim)).to(dev)
        self.amp = runtime.resolve_amp(amp, dev, wide_input=splits_input(self.dim, self.head.config.hidden))
        self.opt = torch.optim.AdamW(self.head.parameters(), lr=1e-3, betas=ADAM_BETAS, fused=True)  # as train-head
        self.scaler = torch.amp.GradScaler(dev.type, enabled=self.amp == "fp16")

    def _step(self, batch, kept: dict | None):
        from pipeline import extract as ex
        from pipeline.head import masked_bce
        from pipeline.loop import GRAD_CLIP
        from pipeline.runtime import autocast

        dev = self.dev
        f = ex.batch_features(self.model, [b["frames"] for b in batch], dev, self.precision,
                              normalize=True, out_dtype="float32")     # [B, T, D], normalised as extract does
        env = torch.from_numpy(np.stack([b["envelope"] for b in batch])).to(dev)
        length = torch.tensor([b["length"] for b in batch], device=dev)
        with autocast(dev, self.amp):
            logits = self.head(self.transform(torch.from_numpy(f).to(dev)))
        loss = masked_bce(logits, env, length)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        torch.nn.utils.clip_grad_norm_(self.head.parameters(), GRAD_CLIP)
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
        from pipeline import runtime
        from pipeline.decoding import ClipDataset

        loader = ex.make_loader(ClipDataset(self.items, **self.dataset_args, normalize=False),
                                runtime.decode_workers(self.dev), self.dev)
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


def cached_epoch(cache_dir: Path, out: Path, device: str, preload: str, amp: str = "auto") -> dict:
    """train-head on the cache with its default options (but `amp`), 2 epochs: epoch 2's training
    seconds and seconds per clip (epoch 1 pays for worker start-up and first-call costs)."""
    from pipeline.train import train_head

    s = train_head(cache_dir, cache_dir, out, epochs=2, device=device, preload=preload, amp=amp, overwrite=True,
                   progress=False)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    from pipeline.cache import FeatureCache

    clips = len(FeatureCache(cache_dir))
    return {"epoch_s": lines[-1]["train_seconds"], "s_per_clip": lines[-1]["train_seconds"] / clips, "clips": clips,
            "samples_per_s": lines[-1]["samples_per_s"], "workers": s["config"]["workers"],
            "amp": s["config"]["amp"], "preload": preload}


def _tiled(alt: dict, n: int) -> dict:
    """The frozen epoch's clips repeated to n clips (ids made unique): a bigger cache of real features."""
    reps = -(-n // len(alt["ids"]))
    take = lambda a: np.concatenate([a] * reps)[:n]  # noqa: E731
    return {"ids": [f"{i}-{r}" for r in range(reps) for i in alt["ids"]][:n], "labels": (alt["labels"] * reps)[:n],
            "features": take(alt["features"]), "envelopes": take(alt["envelopes"]), "lengths": take(alt["lengths"])}


def _delivered(batches, epoch: int, dev: torch.device) -> int:
    """One shuffled epoch of `batches` (a CacheBatches) as the trainer receives it, before the
    transform: float32 [B, T, D] on `dev`. Streaming: the reader workers' batches (float32 on a CPU
    device, cast on the GPU for CUDA); preloaded: each batch gathered from memory, then cast.
    Returns the clips delivered."""
    batches.set_epoch(epoch)
    got = 0
    if batches.loader is not None:
        for b in batches.raw_batches():
            got += len(b["features"].to(dev, non_blocking=True).float())
    else:
        for idx in batches.sampler:
            i = torch.from_numpy(idx).to(batches.features.device)
            got += len(batches.gather(i).to(dev, non_blocking=True).float())
    _sync(dev)
    return got


def _cold_reads_possible(path: Path) -> tuple[bool, str]:
    """Whether dropping files from the page cache makes their next read come from storage."""
    import os

    if not hasattr(os, "posix_fadvise"):
        return False, "this OS has no posix_fadvise: the page cache cannot be dropped per file"
    best, fstype = "", ""
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, kind = line.split()[:3]
            if str(Path(path).resolve()).startswith(mount) and len(mount) >= len(best):
                best, fstype = mount, kind
    except OSError:
        pass
    if fstype in ("tmpfs", "ramfs"):
        return False, f"the scratch directory is on {fstype}: its files live in RAM, there is no cold read"
    return True, (f"files dropped from the page cache with posix_fadvise(DONTNEED) before each cold pass "
                  f"({fstype or 'unknown'} filesystem; a virtual disk may still be cached by its host)")


def loader_efficiency(alt: dict, workdir: Path, device: str, clips: int = LOADER_CLIPS) -> dict:
    """train-head's cache reads against one float32 .npy per video (see the module docstring).

    The same LOADER_CLIPS real clips (tiled) stored once per codec (`CODECS`) and as one float32 .npy
    per video. Readers, warm, interleaved pass by pass (median of LOADER_PASSES), each delivering
    float32 [B, T, D] batches as the trainer takes them (`_delivered`):
      default             train-head's default path: --preload auto on the default codec's cache
                          (RAM when it fits AUTO_PRELOAD_SHARE of the free memory, else streaming)
      preload_ram         --preload ram (the same when auto chose RAM)
      stream_<codec>      --preload none: reader workers, a batch read per shard into reused buffers
      shard_files         a plain sequential read of the default codec's shard files (read_shard)
      npy_float32_memmap  one float32 .npy per video, memory-mapped, copied in order into [B, T, D]
    then one cold pass of each streaming reader and of the .npy reference, their files dropped from
    the page cache first (where the OS allows; `cold` says how or why not).
    Ratios are of clips delivered per second; storage ratios are bytes on disk / float32 (cache_info).
    """
    from benchmarks.storage import drop_from_page_cache
    from pipeline.cache import FeatureCache
    from pipeline.distributed import Distributed
    from pipeline.head import InputTransform
    from pipeline.loader import CacheBatches
    from pipeline.options import TrainOptions
    from pipeline.runtime import reader_workers, resolve_device
    from pipeline.shards import DEFAULT_COMPRESSION

    caches, npy_files = _loader_inputs(_tiled(alt, clips), workdir)
    default_codec = DEFAULT_COMPRESSION["zarr"]
    cache = caches[default_codec]
    n, frames, dim = len(cache), cache.frames, cache.dim
    bs = TrainOptions.batch_size
    buf = np.empty((bs, frames, dim), dtype=np.float32)

    def npy_memmap(epoch: int) -> int:
        """One float32 .npy per video, memory-mapped, in order, copied into [B, T, D] batches."""
        for lo in range(0, len(npy_files), bs):
            chunk = npy_files[lo:lo + bs]
            for j, path in enumerate(chunk):
                buf[j] = np.load(path, mmap_mode="r")
            torch.from_numpy(buf[:len(chunk)])
        return len(npy_files)

    def shard_files(epoch: int) -> int:
        """The plain sequential read of the cache: each shard file's features, first to last."""
        c = FeatureCache(cache.path)
        return sum(len(torch.from_numpy(c.read_shard(k)["features"])) for k in range(c.n_shards))

    dev = resolve_device(device)
    workers = reader_workers(1)
    dist = Distributed(device=dev)
    make = lambda c, preload: CacheBatches.from_cache(  # noqa: E731
        FeatureCache(c.path), InputTransform("features", dim), bs, shuffle=True, seed=SEED, preload=preload,
        device=dev, workers=workers, dist=dist)
    default = make(cache, "auto")
    batches = {"default": default, "preload_ram": default if default.preload == "ram" else make(cache, "ram")}
    batches.update({f"stream_{codec}": make(caches[codec], "none") for codec in CODECS})
    readers = {name: (lambda e, b=b: _delivered(b, e, dev)) for name, b in batches.items()}
    readers.update(shard_files=shard_files, npy_float32_memmap=npy_memmap)
    cps = _interleaved(readers)
    cold = _cold_passes(caches, npy_files, {c: readers[f"stream_{c}"] for c in CODECS}, npy_memmap, n,
                        drop_from_page_cache, workdir)
    out = _loader_summary(cps, caches, npy_files, default, default_codec, cold)
    out.update(workers=workers, batch_size=bs)
    del batches, default, readers
    import shutil
    for path in [npy_files[0].parent] + [c.path for c in caches.values()]:
        shutil.rmtree(path, ignore_errors=True)
    return out


def _interleaved(readers: dict) -> dict:
    """{name: median clips/s} of LOADER_PASSES passes per reader, interleaved pass by pass so all
    see the same machine load (after one warm-up pass each: workers started, page cache warm)."""
    for read in readers.values():
        read(0)
    times = {k: [] for k in readers}
    for p in range(LOADER_PASSES):
        for k, read in readers.items():
            t0 = time.perf_counter()
            got = read(p + 1)
            times[k].append(got / (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in times.items()}


def _loader_summary(cps: dict, caches: dict, npy_files: list, default, default_codec: str, cold: dict) -> dict:
    """loader_efficiency's result: the ratios against the .npy reference, disk per codec, clips/s."""
    from pipeline.cache import cache_info

    cache = caches[default_codec]
    n, frames, dim = len(cache), cache.frames, cache.dim
    ratio = lambda a, b: round(cps[a] / cps[b], 3)  # noqa: E731
    return {"loader_vs_npy_float32": ratio("default", "npy_float32_memmap"),
            "default_preload": default.preload, "default_preload_reason": default.preload_reason,
            "default_codec": default_codec,
            "streaming_vs_npy_float32": ratio(f"stream_{default_codec}", "npy_float32_memmap"),
            "stream_vs_npy_float32": {c: ratio(f"stream_{c}", "npy_float32_memmap") for c in CODECS},
            "preload_ram_vs_npy_float32": ratio("preload_ram", "npy_float32_memmap"),
            "loader_efficiency": ratio(f"stream_{default_codec}", "shard_files"),
            "storage_ratio": {c: cache_info(caches[c].path)["storage_ratio"] for c in CODECS},
            "cold": cold,
            "clips_per_s": {k: round(v, 1) for k, v in cps.items()},
            "npy_float32_memmap_MBps": round(cps["npy_float32_memmap"] * frames * dim * 4 / 1e6, 1),
            "clips": n, "features": [frames, dim], "shards": cache.n_shards,
            "disk_bytes_per_clip": {**{c: round(_disk_bytes(caches[c].path / "shards") / n, 1) for c in CODECS},
                                    "npy_float32": round(_disk_bytes(npy_files[0].parent) / n, 1)}}


def _loader_inputs(t: dict, workdir: Path) -> tuple[dict, list[Path]]:
    """The tiled clips `t` as one cache per codec ({codec: FeatureCache}) and as one float32 .npy
    per video (their paths, in cache order)."""
    from pipeline.cache import write_cache

    caches = {codec: write_cache(workdir / f"loader-cache-{codec}", t["ids"], t["labels"], t["features"],
                                 t["envelopes"], t["lengths"], fmt="zarr", dtype="float16", shard_size=SHARD_SIZE,
                                 config={"benchmark": "loader"}, overwrite=True, compression=codec)
              for codec in CODECS}
    npy_dir = workdir / "loader-npy-float32"
    npy_dir.mkdir(parents=True, exist_ok=True)
    npy_files = []
    for clip_id, f in zip(t["ids"], t["features"]):
        npy_files.append(npy_dir / f"{clip_id}.npy")
        np.save(npy_files[-1], f.astype(np.float32))
    return caches, npy_files


def _cold_passes(caches: dict, npy_files: list, streams: dict, npy_memmap, n: int, drop, workdir: Path) -> dict:
    """COLD_PASSES rounds of one pass of each streaming reader and of the .npy reference, each right
    after dropping its files from the page cache (median clips/s; rounds interleaved like the warm
    passes), and each codec against the cold .npy."""
    possible, how = _cold_reads_possible(workdir)
    if not possible:
        return {"possible": False, "how": how}
    files = {c: [f for f in (caches[c].path / "shards").rglob("*") if f.is_file()] for c in caches}
    readers = [(f"stream_{c}", streams[c], files[c]) for c in caches] + [("npy_float32_memmap", npy_memmap, npy_files)]
    times = {name: [] for name, _, _ in readers}
    for r in range(COLD_PASSES):
        for name, read, paths in readers:
            drop(paths)
            t0 = time.perf_counter()
            got = read(LOADER_PASSES + 1 + r)
            times[name].append(got / (time.perf_counter() - t0))
    cps = {k: round(statistics.median(v), 1) for k, v in times.items()}
    return {"possible": True, "how": how, "passes": COLD_PASSES, "clips_per_s": cps,
            "vs_npy_float32_cold": {c: round(cps[f"stream_{c}"] / cps["npy_float32_memmap"], 3) for c in caches}}


def _disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def preloaded_epoch(n: int, dim: int, device: str, workdir: Path, batch_size: int | None = None) -> dict:
    """The --preload gpu case at the seed's scale without writing a 31 GB cache: random float16
    features [n, 48, dim] on the device, run through train-head's own loop (`fit`, default head,
    AdamW, autocast, checkpoints) for 2 epochs; epoch 2's training seconds (epoch 1 warms up)."""
    from pipeline.distributed import Distributed
    from pipeline.head import Head, HeadConfig, InputTransform, splits_input
    from pipeline.loader import CacheBatches
    from pipeline.loop import ADAM_BETAS, fit
    from pipeline.options import TrainOptions
    from pipeline.runs import RunDescription, prepare_run_dir
    from pipeline.runtime import resolve_amp

    dev = torch.device(device)
    batch_size = batch_size or TrainOptions.batch_size
    torch.manual_seed(SEED)
    features = torch.randn((n, 48, dim), dtype=torch.float16, device=dev)     # 31 GB at 12991 x 25088
    envelope = torch.rand((n, 48), device=dev)
    length = torch.full((n,), 48, dtype=torch.int64, device=dev)
    transform = InputTransform("features", dim).to(dev)        # unfitted: the same arithmetic
    dist = Distributed(device=dev)
    batches = lambda k, shuffle: CacheBatches.from_tensors(  # noqa: E731
        features[:k], envelope[:k], length[:k], transform, batch_size, shuffle=shuffle, seed=SEED, device=dev,
        dist=dist)
    head = Head(HeadConfig(input_dim=dim)).to(dev)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, betas=ADAM_BETAS, fused=True)
    amp = resolve_amp("auto", dev, wide_input=splits_input(dim, head.config.hidden))
    out = Path(workdir) / "preloaded-epoch"
    prepare_run_dir(out, resume=False, overwrite=True)
    description = RunDescription(kind="benchmark", head_config=head.config.to_dict(),
                                 transform=transform.state_dict(), fingerprint="preloaded_epoch")
    fit(head, opt, batches(n, True), batches(min(n, 256), False), run_dir=out, epochs=2, warmup_steps=10,
        dist=dist, description=description, config={"command": "benchmark"}, amp=amp, progress=False)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    del features
    return {"clips": n, "features": [48, dim], "batch_size": batch_size, "amp": amp, "device": str(dev),
            "epoch_s": lines[-1]["train_seconds"], "samples_per_s": lines[-1]["samples_per_s"],
            "target_s": GPU_EPOCH_TARGET_S if (n, dim) == (SEED_TRAIN_CLIPS, 25088) else None}


def run(quick: bool, device: str, workdir: Path, sizes: list[int] | None = None, clips: int | None = None,
        rounds: int | None = None, precision: str = "auto", videos: Path | None = None,
        annotations: Path | None = None, weights: Path | None = None) -> dict:
    """Measure cache_speedup (at each size; the headline at the first) and loader_efficiency.

    Both sides run in one child process whose OpenMP threads sleep when idle (OMP_WAIT_POLICY=PASSIVE
    unless the environment sets it), as in the `foleycache train-head` CLI: that policy is fixed when
    torch loads, and this (caller's) process may have loaded torch already. videos + annotations:
    clips already made (benchmarks/run.py's); otherwise the child makes its own. weights: a
    calibrated model3d_1 (.safetensors) to use instead of calibrating one.
    """
    import subprocess

    cmd = [sys.executable, str(Path(__file__).resolve()), "--in-process", "--device", device, "--workdir", str(workdir),
           "--precision", precision]
    cmd += ["--quick"] if quick else []
    if videos is not None:
        cmd += ["--videos", str(videos), "--annotations", str(annotations)]
    if weights is not None:
        cmd += ["--weights", str(weights)]
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
            rounds: int | None = None, precision: str = "auto", videos: Path | None = None,
            annotations: Path | None = None, loader_clips: int = LOADER_CLIPS, weights: Path | None = None) -> dict:
    """run()'s measurements, in this process. loader_clips: the loader benchmark's cache (tests: fewer)."""
    from pipeline.cache import write_cache
    from pipeline.options import TrainOptions

    plan = QUICK if quick else FULL
    sizes, clips, n_rounds = sizes or plan["sizes"], clips or plan["clips"], rounds or plan["rounds"]
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)
    t_start = time.perf_counter()
    if videos is not None:
        videos, items = existing_clips(videos, annotations)
    else:
        videos, items = make_clips(workdir / "synthetic", clips)
    backbone_precision, head_amp = phase_precisions(precision, dev)
    result = {"device": device, "clips": len(items), "batch_size": TrainOptions.batch_size, "precision": precision,
              "torch_threads": torch.get_num_threads(), "load_average_start": [round(x, 2) for x in os.getloadavg()],
              "by_size": []}
    alt_at_first = None
    for size in sizes:
        alt = FrozenBackboneTraining(items, videos, size, dev, TrainOptions.batch_size, precision=precision,
                                     weights=weights)
        cache_dir = workdir / f"cache-{size}"
        variants = ["none"] + (["gpu"] if dev.type == "cuda" else [])
        rounds = []         # alternating: frozen-backbone epoch, then cached epoch(s), so load drift hits both
        for r in range(n_rounds):
            a = alt.epoch(keep=r == 0)
            if r == 0:
                alt_at_first, n_clips = alt_at_first or a, a["clips"]
                t = _tiled(a, max(n_clips, CACHED_MIN_CLIPS))
                write_cache(cache_dir, t["ids"], t["labels"], t["features"], t["envelopes"], t["lengths"],
                            fmt="zarr", dtype="float16", shard_size=SHARD_SIZE,
                            config={"backbone": BACKBONE, "benchmark": "train_head", "size": size}, overwrite=True)
                del t
            row = {"frozen_backbone_epoch_s": a["seconds"], "frozen_s_per_clip": a["seconds"] / a["clips"]}
            for preload in variants:
                row[preload] = cached_epoch(cache_dir, workdir / f"run-{size}-{preload}", device, preload, head_amp)
            rounds.append(row)
        med = lambda xs: statistics.median(xs)  # noqa: E731
        out = {"size": size, "features": [48, alt.dim], "backbone_precision": alt.precision, "head_amp": alt.amp,
               "rounds": n_rounds, "frozen_clips": n_clips,
               "frozen_backbone_epoch_s": round(med([r["frozen_backbone_epoch_s"] for r in rounds]), 3),
               "frozen_backbone_s_per_clip": round(med([r["frozen_s_per_clip"] for r in rounds]), 4)}
        for preload in variants:
            key = "" if preload == "none" else f"_preload_{preload}"
            out[f"cached_clips{key}"] = rounds[0][preload]["clips"]
            out[f"cached_epoch_s{key}"] = round(med([r[preload]["epoch_s"] for r in rounds]), 4)
            out[f"cached_s_per_clip{key}"] = round(med([r[preload]["s_per_clip"] for r in rounds]), 5)
            # The median of per-round ratios of seconds per clip: each compares two epochs run minutes
            # apart at most, on the same features (the cached side's tiled to CACHED_MIN_CLIPS).
            out[f"cache_speedup{key}"] = round(med([r["frozen_s_per_clip"] / r[preload]["s_per_clip"]
                                                    for r in rounds]), 2)
            out[f"cached_detail{key}"] = [r[preload] for r in rounds]
        out["frozen_backbone_epochs_s"] = [round(r["frozen_backbone_epoch_s"], 3) for r in rounds]
        result["by_size"].append(out)
    head = result["by_size"][0]
    result.update(size=head["size"], cache_speedup=head["cache_speedup"], cached_epoch_s=head["cached_epoch_s"],
                  frozen_backbone_epoch_s=head["frozen_backbone_epoch_s"], backbone_precision=backbone_precision,
                  head_amp=head["head_amp"], cached_amp=head["cached_detail"][0]["amp"])
    if dev.type == "cuda":          # and the GPU target: 12,991 clips of [48, 25088], <= 5 s per epoch
        result["cache_speedup_preload_gpu"] = head["cache_speedup_preload_gpu"]
        result["preloaded_epoch"] = preloaded_epoch(QUICK["clips"] * 100 if quick else SEED_TRAIN_CLIPS, 25088,
                                                    device, workdir)
        result["gpu_epoch_s"] = result["preloaded_epoch"]["epoch_s"]
    result["loader_size"] = sizes[0]
    result["loader"] = loader_efficiency(alt_at_first, workdir, device, loader_clips)
    for key in ("loader_efficiency", "loader_vs_npy_float32", "streaming_vs_npy_float32"):
        result[key] = result["loader"][key]
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
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="backbone autocast and head amp on both sides (default: fp32 with --quick, else auto)")
    p.add_argument("--videos", type=Path, help="use these clips (with --annotations) instead of making new ones")
    p.add_argument("--annotations", type=Path)
    p.add_argument("--weights", type=Path, help="calibrated model3d_1 weights to use instead of calibrating")
    p.add_argument("--in-process", action="store_true", help="measure here (run() starts this in a child)")
    args = p.parse_args(argv)
    if (args.videos is None) != (args.annotations is None):
        p.error("--videos and --annotations go together")
    import tempfile

    precision = args.precision or ("fp32" if args.quick else "auto")
    with tempfile.TemporaryDirectory(prefix="foleycache-train-head-bench-") as tmp:
        how = measure if args.in_process else run
        result = how(args.quick, args.device, args.workdir or Path(tmp), sizes=args.size, clips=args.clips,
                     rounds=args.rounds, precision=precision, videos=args.videos, annotations=args.annotations,
                     weights=args.weights)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
