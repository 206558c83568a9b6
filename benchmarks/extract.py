"""Extraction benchmark: decode-only, backbone-only and the real extract-features, on the same clips.

    extract_efficiency = extract clips/s / min(decode-only clips/s, backbone-only clips/s)

All three phases run in one process, on the same decodable clips, with the same settings
(size, batch size, decode workers, device, precision, weights):
- decode-only: the DataLoader that extract-features uses (`pipeline.decoding.ClipSettings.dataset` +
  `make_loader`, same workers), iterated without the model; the decoded clips are kept in memory.
- backbone-only: the model prepared by extraction's own `prepare_model` on those pre-decoded clips,
  batch by batch, through extraction's `batch_features` (stack, device copy, normalisation,
  autocast, output cast), nothing else.
- extract: `pipeline.extract.extract_features` end to end (model load, decode workers, forward,
  compression, shard writes, cache.json), timed from the call to its return.
The phases alternate, decode-only and backbone-only before and after every extract round, and
each extract is compared with the references on both sides of it (the machine's load drifts;
other work may share the CPU); extract_efficiency is the median over rounds.

The weights are a seeded random model3d_1 whose BatchNorm statistics are calibrated on the first
clips (docs/learning.md: uncalibrated features are degenerate, which would also flatter compression),
saved to a .safetensors file and passed as --checkpoint, so calibration is not timed as extraction.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from pipeline import backbones
from pipeline import extract as ex
from pipeline.data import load_annotations
from pipeline.decoding import ClipSettings
from pipeline.media import normalize_frames
from pipeline.runtime import autocast

CALIBRATION_CLIPS = 4        # clips whose activations set the benchmark weights' BatchNorm statistics
BACKBONE = "model3d_1"
SEED = 0
SPEC = backbones.get_spec(BACKBONE)


def _sync(dev: torch.device):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def loader_settings(device: str, workers: int | None, precision: str) -> tuple[torch.device, int, str]:
    """The device, decode workers and precision extract-features would use for these arguments."""
    dev, precision, workers = ex.resolve_settings(device, precision, workers)
    return dev, workers, precision


def _dataset(items, videos: Path, size: int, dev: torch.device):
    """The dataset extract-features builds for its shards: workers hand over 0..255 frames and the
    batch is normalised next to the model (as `_write_shards` does)."""
    return ClipSettings(Path(videos), frames=48, fps=12.0, size=size, reduce="max").dataset(items, normalize=False)


def decode_only(items, videos: Path, size: int, workers: int, dev: torch.device) -> tuple[float, list]:
    """Iterate extract's DataLoader without the model. Returns (seconds, decoded frames list)."""
    loader = ex.make_loader(_dataset(items, videos, size, dev), workers, dev)
    t0 = time.perf_counter()
    frames = [item["frames"] for item in loader if "failure" not in item]
    return time.perf_counter() - t0, frames


def _forward(model, clips: list, dev: torch.device, precision: str):
    """One batch through extract's own forward code (device copy, normalisation, autocast, cast)."""
    return ex.batch_features(model, clips, dev, precision, normalize=True, out_dtype="float16",
                             mean=SPEC.mean, std=SPEC.std)


def load_model(weights: Path, dev: torch.device, precision: str):
    """The model as extract-features prepares it (`pipeline.extract.prepare_model`: device, eval,
    channels-last where it pays, cuDNN autotuning on a GPU)."""
    model = backbones.create_backbone(BACKBONE, seed=SEED)
    backbones.load_checkpoint(model, weights)
    return ex.prepare_model(model, SPEC, dev, precision)


def backbone_only(model, clips: list, batch_size: int, dev: torch.device, precision: str) -> float:
    """Seconds for the model alone over `clips` (already decoded, in memory), after one warm-up batch."""
    _forward(model, clips[:batch_size], dev, precision)
    _sync(dev)
    t0 = time.perf_counter()
    for i in range(0, len(clips), batch_size):
        _forward(model, clips[i:i + batch_size], dev, precision)
    _sync(dev)
    return time.perf_counter() - t0


def calibrated_weights(clips: list, out: Path, dev: torch.device, precision: str) -> Path:
    """Seeded random model3d_1 with BatchNorm calibrated on `clips` (normalised [3, T, S, S]) -> file."""
    model = backbones.create_backbone(BACKBONE, seed=SEED).to(dev)
    if ex.channels_last(SPEC, dev, precision):
        model = model.to(memory_format=torch.channels_last_3d)
    with autocast(dev, precision):          # the benchmark's weights only: fast is what matters here
        backbones.calibrate_batchnorm(model, (c[None].to(dev) for c in clips))
    path = out / "benchmark-backbone.safetensors"
    backbones.save_safetensors(model.float().cpu(), path)
    return path


def _normalised(clip: torch.Tensor) -> torch.Tensor:
    return normalize_frames(clip, channel_dim=0, mean=SPEC.mean, std=SPEC.std)


def run(videos: Path, annotations: Path, workdir: Path, *, size: int = 224, batch_size: int = 4,
        workers: int | None = None, device: str = "cpu", precision: str = "auto", fmt: str = "zarr",
        rounds: int = 2, progress: bool = False) -> dict:
    """Measure the three phases on every clip of `annotations` (sound12 classes).

    Order: D B E D B E ... D B (D decode-only, B backbone-only, E extract), `rounds` extracts. Each
    extract is compared with the references measured just before and after it (their mean), so
    a change of machine load between phases moves both sides; the headline is the median over
    rounds. Returns a dict: clips, seconds and clips/s per phase (every measurement and the
    median), per-round efficiencies, extract_efficiency, the cache directory and the settings.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    dev, workers, precision = loader_settings(device, workers, precision)
    items = [(0, a) for a in load_annotations(annotations, classes="sound12")]

    seconds, clips = decode_only(items, videos, size, workers, dev)
    decode_s = [seconds]
    n = len(clips)
    if n < CALIBRATION_CLIPS or n < batch_size:
        raise RuntimeError(f"extract benchmark: only {n} decodable clips; need >= {max(CALIBRATION_CLIPS, batch_size)}")
    weights = calibrated_weights([_normalised(c) for c in clips[:CALIBRATION_CLIPS]], workdir, dev, precision)
    model = load_model(weights, dev, precision)
    backbone_s = [backbone_only(model, clips, batch_size, dev, precision)]

    cache_dir = workdir / f"cache-{size}"
    extract_s, summary = [], {}
    for r in range(rounds):
        t0 = time.perf_counter()
        summary = ex.extract_features(videos=videos, annotations=annotations, out=cache_dir, checkpoint=weights,
                                      size=size, fmt=fmt, dtype="float16", batch_size=batch_size, workers=workers,
                                      device=str(dev), precision=precision, overwrite=True, progress=progress)
        extract_s.append(time.perf_counter() - t0)
        if summary.get("cached") != n:
            raise RuntimeError(f"extract benchmark: extract cached {summary.get('cached')} clips, decode-only saw {n}")
        decode_s.append(decode_only(items, videos, size, workers, dev)[0])
        backbone_s.append(backbone_only(model, clips, batch_size, dev, precision))
    del clips, model

    per_round = []
    for r, e in enumerate(extract_s):     # references on both sides of extract r
        decode_ref = n / statistics.mean(decode_s[r:r + 2])
        backbone_ref = n / statistics.mean(backbone_s[r:r + 2])
        per_round.append(round((n / e) / min(decode_ref, backbone_ref), 4))
    decode_cps = n / statistics.median(decode_s)
    backbone_cps = n / statistics.median(backbone_s)
    extract_cps = n / statistics.median(extract_s)
    return {
        "size": size, "frames": 48, "clips": n, "batch_size": batch_size, "workers": workers,
        "device": str(dev), "precision": precision, "format": fmt, "dtype": "float16",
        "torch_threads": torch.get_num_threads(), "rounds": rounds,
        "decode_only": {"seconds": [round(s, 3) for s in decode_s], "clips_per_s": round(decode_cps, 3)},
        "backbone_only": {"seconds": [round(s, 3) for s in backbone_s], "clips_per_s": round(backbone_cps, 3)},
        "extract": {"seconds": [round(s, 3) for s in extract_s], "clips_per_s": round(extract_cps, 3),
                    "summary_wall_seconds": summary.get("wall_seconds")},
        "bound": "backbone" if backbone_cps <= decode_cps else "decode",
        "efficiency_per_round": per_round,
        "extract_efficiency": round(statistics.median(per_round), 4),
        "cache_dir": str(cache_dir), "weights": str(weights),
    }


if __name__ == "__main__":      # python benchmarks/extract.py VIDEOS ANNOTATIONS WORKDIR [SIZE]
    import sys
    print(json.dumps(run(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]),
                         size=int(sys.argv[4]) if len(sys.argv) > 4 else 224), indent=1))
