"""A finished run as export-predictions reads it, and the features its head must be given.

load_run(RUN_DIR, "best")      → TrainedRun: the head and input transform rebuilt from the checkpoint,
                                 the cache fingerprint it was trained on, a finetune run's backbone
check_cache(run, cache)        → refuses a cache whose features are not the ones the head reads
                                 (`feature_identity`: windows and targets may differ, features not)
features_from_videos(run, ...) → extracts clips into OUT/cache with the run's own network

A train-head run reads features of its train cache's settings: the same fingerprint (backbone
weights, preprocessing, envelope, dtype, precision). A finetune run carries its own finetuned
backbone (checkpoint `model` = EndToEnd(backbone, transform, head).state_dict(): `backbone.*` keys);
its features are that backbone's outputs at the run's clip settings, stored float32.

This module owns reading the run directory for export and deciding which features fit it. It does
not predict or score (`pipeline.score`), and it does not write the run (`pipeline.train`, `pipeline.finetune`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.errors import FoleyError
from pipeline.fsio import atomic_write, read_json, sha256_file

CHECKPOINTS = ("best", "last")
BACKBONE_PREFIX = "backbone."       # finetune: EndToEnd's backbone keys in checkpoint["model"]
RUN_CACHE_DIR = "cache"             # OUT/cache: features extracted on the fly from --videos
FINETUNED_WEIGHTS = "backbone-finetuned.safetensors"
SETTING_KEYS = ("backbone", "frames", "fps", "size", "envelope_reduce")   # what a finetune cache must match
# What in a cache's config decides its features' numbers. Not the manifest, windows or targets: a
# window's features are computed exactly as a clip's, and reading no audio changes no frame.
FEATURE_KEYS = ("backbone", "weights_sha256", "frames", "fps", "preprocess", "dtype", "precision", "pool")


@dataclass
class FinetunedBackbone:
    """The backbone a finetune run trained, with the clip settings it trained at."""
    name: str
    state_dict: dict
    frames: int | None
    fps: float | None
    size: int | None
    pool: str | None


@dataclass
class TrainedRun:
    """What export reads from a run directory. `config` is the run's config.json; `options` the
    training options the checkpoint recorded (the same dict unless config.json was edited)."""
    dir: str
    config: dict
    options: dict
    checkpoint_path: str
    checkpoint_name: str
    checkpoint_sha256: str
    head: torch.nn.Module
    transform: torch.nn.Module
    fingerprint: str                # the cache fingerprint the head was trained on
    cache_config: dict              # that cache's config ({} when the run records none)
    epoch: int | None
    input: str
    kind: str                       # "train-head" | "finetune"
    backbone: FinetunedBackbone | None

    @property
    def train_cache(self) -> Path | None:
        """The run's train cache directory (train-head records {"path": ...} under `train_cache`)."""
        return train_cache_of(self.config, self.options)


def train_cache_of(*configs: dict) -> Path | None:
    """The first `train_cache` path recorded in `configs` (a {"path": ...} record or a plain path)."""
    for source in configs:
        entry = source.get("train_cache")
        if isinstance(entry, dict) and entry.get("path"):
            return Path(entry["path"])
        if isinstance(entry, str) and entry:
            return Path(entry)
    return None


def load_run(run: Path, checkpoint: str = "best", device: torch.device | None = None) -> TrainedRun:
    """Open a run directory: config.json and checkpoint-{best,last}.pt (a `runs.RunCheckpoint`),
    the head and transform rebuilt with `runs.load_head` on `device`."""
    from pipeline.runs import CONFIG_JSON, load_head

    run = Path(run)
    if not run.is_dir():
        raise FoleyError(f"--run {run} is not a directory")
    if checkpoint not in CHECKPOINTS:
        raise FoleyError(f"--checkpoint must be one of {CHECKPOINTS}, got {checkpoint!r}")
    config = read_json(run / CONFIG_JSON, "run config")
    path = run / f"checkpoint-{checkpoint}.pt"
    if not path.is_file():
        raise FoleyError(f"{run} has no checkpoint-{checkpoint}.pt (is training finished? "
                         f"try --checkpoint {'last' if checkpoint == 'best' else 'best'})")
    head, transform, ckpt = load_head(path, map_location=device or "cpu")
    d = ckpt.description
    if not d.fingerprint:
        raise FoleyError(f"{path} records no cache fingerprint: cannot check which features it expects")
    cache_config = d.cache_config or config.get("cache_config") or {}
    return TrainedRun(
        dir=str(run), config=config, options=ckpt.config or config, checkpoint_path=str(path),
        checkpoint_name=checkpoint, checkpoint_sha256=sha256_file(path), head=head, transform=transform,
        fingerprint=d.fingerprint, cache_config=cache_config, epoch=ckpt.epoch,
        input=d.head_config.get("input", "features"), kind=d.kind or config.get("command", "train-head"),
        backbone=_finetuned_backbone(ckpt, cache_config))


def _finetuned_backbone(ckpt, cache_config: dict) -> FinetunedBackbone | None:
    """The finetuned backbone a finetune checkpoint (`runs.RunCheckpoint`) carries: its model's
    `backbone.*` weights, named by description.backbone; None for a train-head run."""
    state = {k[len(BACKBONE_PREFIX):]: v for k, v in (ckpt.model or {}).items() if k.startswith(BACKBONE_PREFIX)}
    if not state:
        return None
    d = ckpt.description
    return FinetunedBackbone(name=d.backbone or cache_config.get("backbone", "model3d_1"), state_dict=state,
                             frames=d.frames, fps=d.fps, size=d.size, pool=d.pool)


# ----------------------------------------------------------------------------- extraction settings

def _extract_settings(cfg: dict) -> dict:
    """extract_features keyword arguments that reproduce a cache's numbers (its fingerprint inputs)."""
    try:
        return {"backbone": cfg["backbone"], "frames": int(cfg["frames"]), "fps": float(cfg["fps"]),
                "size": int(cfg["preprocess"]["size"]), "envelope_reduce": cfg["envelope"]["reduce"],
                "dtype": cfg["dtype"], "precision": cfg["precision"], "pool": cfg.get("pool", "none")}
    except (KeyError, TypeError, ValueError) as e:
        raise FoleyError(f"the run does not record how its features were extracted (missing {e}); "
                         "extract the clips yourself and pass --cache") from None


def run_extract_settings(run: TrainedRun) -> dict:
    """extract_features keyword arguments (backbone, frames, fps, size, envelope_reduce, dtype,
    precision, pool) giving the features the run's head reads.

    train-head: exactly its train cache's settings (so the fingerprint matches). finetune: the
    clip settings it trained with, features stored float32 (the head saw unrounded backbone
    outputs), precision auto.
    """
    if run.backbone is None:
        return _extract_settings(run.cache_config)
    b, reduce = run.backbone, (run.cache_config.get("envelope") or {}).get("reduce", "max")
    missing = [k for k in ("frames", "fps", "size") if getattr(b, k) is None]
    if missing:
        raise FoleyError(f"the finetune checkpoint {run.checkpoint_path} lacks its clip setting {missing[0]!r}")
    return {"backbone": b.name, "frames": int(b.frames), "fps": float(b.fps), "size": int(b.size),
            "envelope_reduce": reduce, "dtype": "float32", "precision": "auto", "pool": b.pool}


def _finetuned_weights_sha256(run: TrainedRun) -> str:
    """weights_sha256 (as extract fingerprints it) of the finetuned backbone."""
    from pipeline import backbones
    from pipeline.backbones import weights_sha256
    model = backbones.create_backbone(run.backbone.name)
    model.load_state_dict(run.backbone.state_dict)
    return weights_sha256(model)


def feature_identity(config: dict) -> dict | None:
    """The FEATURE_KEYS of a cache config (int / float normalised); None when it lacks one (a cache
    written by hand records no extraction). Equal identities mean the same features for the same
    clip, whatever the fingerprints: an old fingerprint also hashes the window stride."""
    try:
        identity = {k: config[k] for k in FEATURE_KEYS if k != "pool"}
        identity.update(frames=int(identity["frames"]), fps=float(identity["fps"]), pool=config.get("pool", "none"))
    except (KeyError, TypeError, ValueError):
        return None
    return identity


def _refuse_features(run: TrainedRun, cache, diff: list[str]):
    what = ", ".join(diff) if diff else "another backbone, weights, size, normalisation, dtype or envelope"
    raise FoleyError(
        f"cache {cache.path} has fingerprint {cache.fingerprint[:16]}…, but the run {run.dir} was trained on "
        f"features with fingerprint {run.fingerprint[:16]}… ({what}): extract this split with the train "
        "cache's settings (--checkpoint TRAIN_CACHE/backbone.safetensors for a random-init backbone)")


def _check_train_head_cache(run: TrainedRun, cache) -> None:
    """Same fingerprint, or the same feature identity and (where the cache holds targets) the same envelope."""
    from pipeline.extract import holds_targets

    if cache.fingerprint == run.fingerprint:
        return
    want, have = feature_identity(run.cache_config), feature_identity(cache.config)
    if want is None or have is None:
        _refuse_features(run, cache, [])
    diff = [k for k in FEATURE_KEYS if want[k] != have[k]]
    # a target made another way would score the head against something it never learned
    if holds_targets(cache.config) and run.cache_config.get("envelope") != cache.config.get("envelope"):
        diff.append("envelope")
    if diff:
        _refuse_features(run, cache, diff)


def check_cache(run: TrainedRun, cache) -> None:
    """Refuse a cache (`pipeline.cache.FeatureCache`) whose features are not the ones the run reads.

    train-head run: the cache fingerprint equals the run's, or its `feature_identity` does (same
    backbone weights, preprocessing, frames, fps, dtype, precision, pool: windows of any stride and
    a cache without targets are fine) with the same envelope where it holds targets. finetune run:
    the cache must come from the finetuned backbone's weights with the run's other extraction
    settings (stored dtype and precision may differ).
    """
    if run.backbone is None:
        _check_train_head_cache(run, cache)
        return
    want = dict(run_extract_settings(run), weights_sha256=_finetuned_weights_sha256(run))
    have = dict(_extract_settings(cache.config), weights_sha256=cache.config.get("weights_sha256"))
    diff = sorted(k for k in SETTING_KEYS + ("weights_sha256",) if want[k] != have[k])
    if diff:
        raise FoleyError(f"cache {cache.path} was not extracted with this finetune run's backbone and settings "
                         f"(differs in {', '.join(diff)}): use --videos/--annotations, which extracts them")


# ----------------------------------------------------------------------------- features from videos

def _backbone_weights(run: TrainedRun, out: Path) -> Path:
    """The weights file that makes the run's features: the finetuned backbone (written to
    OUT/backbone-finetuned.safetensors), the train cache's calibrated random init, named published
    weights found again on this machine, or the checkpoint file the train cache was extracted with."""
    if run.backbone is not None:
        from safetensors.torch import save_file
        weights = out / FINETUNED_WEIGHTS
        weights.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in run.backbone.state_dict.items()}
        atomic_write(weights, lambda tmp: save_file(state, str(tmp)))
        return weights

    from pipeline.backbones import CALIBRATED_WEIGHTS
    provenance = run.cache_config.get("backbone_provenance") or {}
    if provenance.get("checkpoint") == "none":
        train = run.train_cache
        weights = train / CALIBRATED_WEIGHTS if train else None
        if weights is None or not weights.is_file():
            raise FoleyError(f"the run was trained on a random-init backbone whose calibrated weights "
                             f"({weights}) are gone: --videos cannot rebuild its features (pass --cache)")
        return weights
    if provenance.get("weights_name"):
        # named published weights ("imagenet"): found again wherever this machine keeps them, sha256-checked
        from pipeline.backbones import find_named_weights
        return find_named_weights(run.cache_config.get("backbone"), provenance["weights_name"])
    weights = Path(str(provenance.get("checkpoint", "")))
    if not provenance.get("checkpoint") or not weights.is_file():
        raise FoleyError(f"the backbone checkpoint the run's features came from ({weights}) is not "
                         "available: --videos cannot rebuild its features (pass --cache)")
    return weights


def features_from_videos(run: TrainedRun, out: Path, *, videos: Path, annotations: Path | str,
                         labels: Path | None, classes: str | None, window_stride: float | None, device: str,
                         progress: bool, targets: bool = True) -> Path:
    """Extract the clips of `annotations` into OUT/cache with the run's network; returns the cache dir.
    targets: False reads no audio (`extract_features(targets=False)`): a cache for prediction only."""
    from pipeline.extract import extract_features

    settings = run_extract_settings(run)
    weights = _backbone_weights(run, out)
    cache_dir = out / RUN_CACHE_DIR
    extract_features(videos=videos, annotations=annotations, out=cache_dir, labels=labels, classes=classes,
                     window_stride=window_stride, checkpoint=weights, device=device, progress=progress,
                     targets=targets, **settings)
    return cache_dir
