"""Command line: parse and validate, then call one library function with keyword arguments.

Reachable as `foleycache COMMAND`, `python cli.py COMMAND` and `python -m pipeline COMMAND`.
Library modules are imported inside each command so `--help` stays fast (torch is slow to import).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from pipeline.errors import FoleyError
from pipeline.options import (COMPARE_DEFAULTS, DEMO_SIZE, DEMO_TRAIN, DEMO_UNSEEN, DEMO_VAL, FPS, FRAMES,
                              PRECISIONS, PRETRAIN_AMP_CHOICES, TEMPORALS, PretrainOptions)

EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
OUT_DIR = click.Path(file_okay=False, path_type=Path)
# manifest options shared by every command that reads videos through a manifest
CLASSES_OPTION = click.option("--classes", default=None, help="sound12, all, or a file of templates / labels "
                              "[default: sound12 for an SSv2 JSON, all for other manifests].")
WINDOW_STRIDE_OPTION = click.option("--window-stride", default=None, type=click.FloatRange(min=0, min_open=True),
                                    help="Tile each video into windows of frames/fps s, one every this many seconds.")


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def echo(message: str = "", quiet: bool = False):
    """User-facing output, printed once (rank 0) under torchrun."""
    if not quiet and is_rank_zero():
        click.echo(message)


class FoleyGroup(click.Group):
    """Turns a FoleyError into one line on stderr, exit status 2, and Ctrl-C into a note on resuming.

    Commands never let a FaultyVideo out (a faulty video is a failure record, not an error), so
    only FoleyError is caught: anything else is a bug and keeps its traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except FoleyError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: finished shards/checkpoints are kept; re-run the same command to resume", err=True)
            sys.exit(130)


@click.group(cls=FoleyGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="foleycache")
def cli():
    """foleycache: learn when an interaction sounds, and how loud, from video alone.

    Pipeline: make-synthetic (or your SSv2 data) -> extract-features (3D CNN once per video,
    cached) -> train-head (seconds, from the cache) -> export-predictions. `demo` runs it all.
    """


@cli.command("make-synthetic")
@click.option("--out", required=True, type=OUT_DIR, help="Dataset directory to create.")
@click.option("--train", "n_train", default=240, type=click.IntRange(0), help="Training clips (0: a validation-only set).")
@click.option("--val", "n_val", default=60, type=click.IntRange(0), help="Validation clips.")
@click.option("--seed", default=0, type=int, help="Random seed (output is deterministic for a seed).")
@click.option("--format", "fmt", default="webm", type=click.Choice(["webm", "mp4"]), help="webm = VP9+Opus, mp4 = H.264+AAC.")
@click.option("--look", default="home", show_default=True,
              help="Family of appearance settings (walls, objects, colours, light, camera): home | workshop | night | "
                   "classic, or several comma-separated (home,night: the clips shared out between them). Train on "
                   "some looks and validate on another to measure cross-look generalisation (workshop is the "
                   "held-out one).")
@click.option("--sounds", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder of recorded impact samples (WAV/FLAC/OGG/AIFF; one sub-folder per material or velocity "
                   "layer) for the impact sounds, played at a loudness that follows impact speed. Default: procedural.")
@click.option("--jobs", default=-1, type=int, help="Parallel processes (joblib; -1 = all cores).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def make_synthetic_cmd(out, n_train, n_val, seed, fmt, look, sounds, jobs, quiet):
    """Write a Something-Something-shaped dataset with sound (videos, SSv2 JSONs, events.json)."""
    from pipeline.synthetic import make_synthetic
    summary = make_synthetic(out=out, n_train=n_train, n_val=n_val, seed=seed, fmt=fmt, jobs=jobs, progress=not quiet,
                             look=look, sounds=sounds)
    echo(json.dumps(summary, indent=2), quiet)


def setup_logging(quiet: bool = False):
    """Library warnings (e.g. the random-init backbone) go to stderr, once under torchrun."""
    import logging
    logger = logging.getLogger("foleycache")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet or not is_rank_zero() else logging.INFO)
    if not is_rank_zero():
        logger.setLevel(logging.ERROR)


def checkpoint_arg(value: str):
    """'none', a weights name ('imagenet': the backbone resolves it), or an existing file."""
    from pipeline.backbones import looks_like_weights_name
    path = Path(value)
    if value == "none" or looks_like_weights_name(value):
        return value
    if not path.is_file():
        raise click.BadParameter(f"{value} is not a file (give a checkpoint file, a weights name such as "
                                 "'imagenet', or 'none')")
    return path


@cli.command("extract-features")
@click.option("--videos", required=True, type=EXISTING_DIR, help="Folder of {id}.webm/.mp4/.mkv videos.")
@click.option("--annotations", required=True, type=click.Path(path_type=Path),
              help="SSv2 JSON, a CSV / TSV / JSON Lines manifest (video[,start][,label][,id]), a folder "
              "inside --videos, or 'none': every video in --videos, labelled by sub-folder.")
@click.option("--out", required=True, type=OUT_DIR, help="Cache directory (created; re-run to resume).")
@click.option("--labels", type=EXISTING_FILE, default=None, help="SSv2 labels JSON (checks templates, gives class indices).")
@CLASSES_OPTION
@WINDOW_STRIDE_OPTION
@click.option("--backbone", default="model3d_1", help="Registered backbone name (model3d_1, model3d_1_224, mobilenet_v2, "
              "mobilenet_v2_spacetime, mobilenet_v2_spacetime_mid: the demo's).")
@click.option("--checkpoint", default="none", help="Backbone weights (.pth.tar, state dict, .safetensors), a named "
              "published file ('imagenet' for mobilenet_v2: torchvision's, found on disk, sha256-checked) or 'none' "
              "(seeded random init with calibrated BatchNorm; loud warning).")
@click.option("--frames", default=FRAMES, type=click.IntRange(1), help="Frames per clip (T).")
@click.option("--fps", default=float(FPS), type=click.FloatRange(min=0, min_open=True), help="Clip frame rate.")
@click.option("--size", default=None, type=click.IntRange(32),
              help="Frame size after resize + centre crop.  [default: the backbone's: 224 model3d_1, 112 mobilenet_v2]")
@click.option("--pool", default=None, help="Pooling of the backbone's last map: none, global or KxK (e.g. 2x2).  "
              "[default: the backbone's: none for model3d_1, 2x2 for mobilenet_v2]")
@click.option("--format", "fmt", default="zarr", type=click.Choice(["zarr", "hdf5"]), help="Shard format.")
@click.option("--compression", default=None, type=click.Choice(["lz4", "zstd", "none", "gzip"]),
              help="Features' codec, lossless: lz4 (Blosc lz4hc + shuffle: ~1/3 of float32, fast reads), zstd "
                   "(as small, reads ~3x slower), none; HDF5: gzip or none.  [default: lz4; hdf5: gzip; a "
                   "resumed cache: its own]")
@click.option("--dtype", default="float16", type=click.Choice(["float16", "float32"]), help="Stored feature dtype.")
@click.option("--shard-size", default=64, type=click.IntRange(1), help="Candidates per shard.")
@click.option("--batch-size", default=4, type=click.IntRange(1), help="Clips per backbone forward.")
@click.option("--workers", default=None, type=click.IntRange(0), help="Decode worker processes [default: 1 on CPU, cores-1 on CUDA].")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--precision", default="auto", type=click.Choice(list(PRECISIONS)),
              help="auto: bf16 autocast on CUDA and on CPUs with native bf16 (AMX/AVX512-BF16), else fp32.")
@click.option("--envelope-reduce", default="max", type=click.Choice(["max", "mean", "sample"]),
              help="Per-frame reduction of the smoothed |audio| (sample = the seed's decimation).")
@click.option("--limit", default=None, type=click.IntRange(1), help="Only the first N candidates.")
@click.option("--seed", default=0, type=int, help="Init seed for --checkpoint none.")
@click.option("--calibration-clips", default=64, type=click.IntRange(1), help="Clips for BatchNorm calibration (--checkpoint none).")
@click.option("--overwrite", is_flag=True, help="Replace an existing cache built with other settings.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def extract_features_cmd(videos, annotations, out, labels, classes, window_stride, backbone, checkpoint, frames,
                         fps, size, pool, fmt, compression, dtype, shard_size, batch_size, workers, device, precision,
                         envelope_reduce, limit, seed,
                         calibration_clips, overwrite, quiet):
    """Run the backbone once per video; cache features + audio envelope in HDF5/Zarr shards."""
    from pipeline.extract import extract_features
    setup_logging(quiet)
    summary = extract_features(
        videos=videos, annotations=annotations, out=out, labels=labels, classes=classes,
        window_stride=window_stride, backbone=backbone,
        checkpoint=checkpoint_arg(checkpoint), frames=frames, fps=fps, size=size, pool=pool, fmt=fmt,
        compression=compression, dtype=dtype,
        shard_size=shard_size, batch_size=batch_size, workers=workers, device=device, precision=precision,
        limit=limit, overwrite=overwrite, envelope_reduce=envelope_reduce, seed=seed,
        calibration_clips=calibration_clips, progress=not quiet)
    if is_rank_zero():
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary.get("failed_by_reason", {}).items())) or "none"
        echo(f"cache {summary['cache']}: {summary['candidates']} candidates, {summary.get('cached')} cached, "
             f"{summary.get('failed')} faulty ({reasons}); {summary['wall_seconds']} s, "
             f"{summary['clips_per_s']} clips/s on {summary['device']} ({summary['precision']})", quiet)


@cli.command("cache-info")
@click.argument("cache_dir", type=EXISTING_DIR)
@click.option("--verify", is_flag=True, help="Re-hash every shard against cache.json; exit 1 if any is damaged.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar while verifying.")
def cache_info_cmd(cache_dir, verify, as_json, quiet):
    """Summarise a feature cache; --verify re-hashes every shard."""
    from pipeline.cache import cache_info, format_cache_info

    info = cache_info(cache_dir, verify=verify, progress=verify and not quiet)
    echo(json.dumps(info, indent=2) if as_json else format_cache_info(info))
    if verify and info["problems"]:
        click.echo(f"error: {len(info['problems'])} damaged shard(s) in {cache_dir}", err=True)
        sys.exit(1)


def train_default(name: str) -> str:
    """train-head's --help default for option `name`, as pipeline.options.TrainOptions holds it."""
    from pipeline.options import TrainOptions     # torch-free: --help stays fast

    return f"[default: {TrainOptions.default_text(name)}]"


@cli.command("train-head")
@click.option("--train-cache", required=True, type=click.Path(path_type=Path), help="Feature cache to train on.")
@click.option("--val-cache", required=True, type=click.Path(path_type=Path), help="Feature cache to validate on (same fingerprint).")
@click.option("--out", required=True, type=OUT_DIR, help="Run directory (config.json, metrics.jsonl, checkpoints).")
@click.option("--epochs", type=int, help=f"Epochs.  {train_default('epochs')}")
@click.option("--batch-size", type=int, help=f"Clips per batch (per process under torchrun).  {train_default('batch_size')}")
@click.option("--lr", type=float, help=f"Peak learning rate (AdamW; warmup, then cosine to lr/10).  {train_default('lr')}")
@click.option("--weight-decay", type=float, help=f"AdamW weight decay (weights only, not biases).  {train_default('weight_decay')}")
@click.option("--warmup", type=int, help=f"Warmup in optimizer steps.  {train_default('warmup')}")
@click.option("--hidden", type=int, help=f"LSTM hidden size (per direction when bidirectional).  {train_default('hidden')}")
@click.option("--layers", type=int, help=f"LSTM layers.  {train_default('layers')}")
@click.option("--dropout", type=float, help=f"Dropout between LSTM layers and in the FC layers.  {train_default('dropout')}")
@click.option("--input", "input_", type=str, help="features (standardised, the seed's head) | motion-energy "
              "(17-d change signal, docs/learning.md; generalises from small data).  " + train_default("input"))
@click.option("--seed", type=int, help=f"Random seed (init, data order, dropout).  {train_default('seed')}")
@click.option("--device", default="auto", help="auto | cpu | cuda.")
@click.option("--preload", type=str, help="auto (in GPU memory / RAM when a cache fits half of what is free, else "
              "read from the shards every epoch; the choice is logged and in config.json) | none | ram | gpu (whole "
              "cache in memory; refused with its size if it does not fit).  " + train_default("preload"))
@click.option("--workers", type=int, help="Reader processes per training process (0 = read in it).  "
              "[default: its share of the cores, 1 to 4]")
@click.option("--amp", type=str, help="auto | bf16 | fp16 | off (autocast; auto = bf16 on CUDA; on a CPU with native "
              "bf16, bf16 for a wide input's projection only, else off).  " + train_default("amp"))
@click.option("--early-stop", type=int, help=f"Stop after N epochs without a better val loss (0 = never).  {train_default('early_stop')}")
@click.option("--center-clips/--no-center-clips", default=None,
              help="--input features: subtract each clip's mean feature over time before standardising (drops "
                   "what stays the same in a clip, keeps what changes; what makes the head carry over to clips "
                   "that look different).  " + train_default("center_clips"))
@click.option("--temporal", type=click.Choice(TEMPORALS), help="The head's temporal layer: lstm (the seed's causal "
              "LSTM: frame t sees frames <= t) | bilstm (bidirectional) | conv-bilstm (Conv1d k5, k3 over time, then "
              "bidirectional).  " + train_default("temporal"))
@click.option("--conv-channels", type=int, help=f"conv-bilstm: channels of the Conv1d front.  {train_default('conv_channels')}")
@click.option("--onset-weight", type=float, help="Weight of the onset term beside the envelope BCE (BCE of 'an onset "
              "within ±1 frame', positives weighted by negatives/positives; 0 = the seed's loss).  "
              + train_default("onset_weight"))
@click.option("--slope-weight", type=float, help="Weight of the slope term beside the envelope BCE (mean squared "
              "error of the frame-to-frame changes of the envelope: prices the dip between two impacts a few frames "
              "apart; 0 = off).  " + train_default("slope_weight"))
@click.option("--time-shift", type=int, help="Augmentation: each training clip starts up to N frames later, features "
              "and target together (0 = off).  " + train_default("time_shift"))
@click.option("--ema-decay", type=float, help="Checkpoints hold a moving average of the weights, updated every step "
              "with this decay from the initial weights (0 = the trained weights).  " + train_default("ema_decay"))
@click.option("--resume", is_flag=True, help="Continue the run in --out from checkpoint-last.pt (its options are kept).")
@click.option("--overwrite", is_flag=True, help="Replace the run in --out.")
@click.option("--quiet", is_flag=True, help="No progress bar, no summary.")
def train_head_cmd(train_cache, val_cache, out, epochs, batch_size, lr, weight_decay, warmup, hidden, layers,
                   dropout, input_, seed, device, preload, workers, amp, early_stop, center_clips, temporal,
                   conv_channels, onset_weight, slope_weight, time_shift, ema_decay, resume, overwrite, quiet):
    """Train the LSTM+FC head from a feature cache (runs under torchrun with DDP too)."""
    # Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. On a shared CPU the
    # spinning threads steal the cores the LSTM's many small steps wait for, slowing an epoch
    # severalfold (benchmarks/train_head.py measures under the same policy).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from pipeline.train import train_head

    s = train_head(train_cache=train_cache, val_cache=val_cache, out=out, epochs=epochs, batch_size=batch_size,
                   lr=lr, weight_decay=weight_decay, warmup=warmup, hidden=hidden, layers=layers, dropout=dropout,
                   input=input_, seed=seed, amp=amp, early_stop=early_stop, center_clips=center_clips,
                   temporal=temporal, conv_channels=conv_channels, onset_weight=onset_weight,
                   slope_weight=slope_weight, time_shift=time_shift, ema_decay=ema_decay, device=device,
                   preload=preload, workers=workers, resume=resume, overwrite=overwrite, progress=not quiet)
    best, last = s["best_metrics"], s["last_metrics"]
    if best is None:
        echo(f"nothing trained; run in {out}", quiet)
        return
    stop = " (stopped early)" if s["stopped_early"] else ""
    held = sum(s["config"]["preload_bytes"].values())
    used = sorted(set(s["config"]["preload_used"].values()) - {"none"})
    held = f", caches held in {'/'.join(u.upper() for u in used)}: {held / 1e9:.2f} GB" if used else ""
    echo(f"trained {last['epoch']} epochs{stop}, {last['samples_per_s']} clips/s in the last one{held}", quiet)
    echo(f"best epoch {best['epoch']}: val loss {best['val_loss']:.4f}, MAE {best['val_mae']:.4f}, "
         f"Pearson r {best['val_pearson']:.3f}, peak within ±1 frame {best['val_peak_within_1']:.3f}", quiet)
    echo(f"run: {out}/ (config.json, metrics.jsonl, checkpoint-best.pt, checkpoint-last.pt)", quiet)


def finetune_default(name: str) -> str:
    """finetune's --help default for option `name`, as pipeline.options.FinetuneOptions holds it."""
    from pipeline.options import FinetuneOptions  # torch-free: --help stays fast

    return f"[{FinetuneOptions.default_text(name)}]"


def finetune_choices(name: str) -> click.Choice:
    """finetune's choices for --input / --amp, from pipeline.options."""
    from pipeline.options import AMP_CHOICES, INPUTS

    return click.Choice(list({"input": INPUTS, "amp": AMP_CHOICES}[name]))


def _named_cache(ctx, param, values) -> dict:
    """--eval NAME=CACHE_DIR (repeatable) → {name: Path}."""
    out = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"{v!r}: expected NAME=CACHE_DIR")
        if name in out:
            raise click.BadParameter(f"evaluation set {name!r} given twice")
        out[name] = Path(path)
    return out


@cli.command("compare-heads")
@click.option("--train-cache", required=True, type=click.Path(path_type=Path), help="Feature cache every recipe trains on.")
@click.option("--val-cache", required=True, type=click.Path(path_type=Path),
              help="Cache train-head validates on each epoch (logged only: the LAST checkpoint is scored).")
@click.option("--eval", "evals", multiple=True, required=True, callback=_named_cache,
              help="NAME=CACHE_DIR, an evaluation set (repeatable): e.g. same-look=cache/val unseen=cache/unseen.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder (a re-run continues it).")
@click.option("--recipes", default=None, help="Comma-separated recipe names (default: all). "
              "The seed's head (seed-lstm) is always included: it is the reference.")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True, help="Seeds per recipe.")
@click.option("--device", default="cpu", help="cpu | cuda.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def compare_heads_cmd(train_cache, val_cache, evals, out, recipes, seeds, device, quiet):
    """Train head recipes over seeds; table of mean ± standard error per evaluation set (compare-heads.md)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from pipeline.recipes import compare_heads

    names = [r.strip() for r in recipes.split(",") if r.strip()] if recipes else None
    compare_heads(train_cache=train_cache, val_cache=val_cache, evals=evals, out=out, recipes=names, seeds=seeds,
                  device=device, progress=not quiet)
    echo(f"table: {out / 'compare-heads.md'} (rows: {out / 'rows.jsonl'})", quiet)


@cli.command("finetune")
@click.option("--videos", required=True, type=EXISTING_DIR, help="Folder of the train AND validation videos.")
@click.option("--annotations", required=True, type=click.Path(path_type=Path),
              help="Train manifest: SSv2 JSON, CSV / TSV / JSON Lines, or a folder inside --videos.")
@click.option("--val-annotations", required=True, type=click.Path(path_type=Path),
              help="Validation manifest (same kinds).")
@click.option("--out", required=True, type=OUT_DIR, help="Run directory.")
@click.option("--labels", type=EXISTING_FILE, default=None, help="SSv2 labels JSON.")
@CLASSES_OPTION
@WINDOW_STRIDE_OPTION
@click.option("--backbone", default=None, help="Registered backbone [default: the --init-head cache's, else model3d_1].")
@click.option("--checkpoint", default=None, help="Backbone weights, or 'none' [default: the weights the --init-head "
              "cache was extracted with, else none].")
@click.option("--init-head", type=EXISTING_FILE, default=None, help="Start from a train-head run's checkpoint.")
@click.option("--freeze-blocks", default=None, type=click.IntRange(0, 5), help=f"Keep the first N of the 5 blocks fixed {finetune_default('freeze_blocks')}.")
@click.option("--size", default=None, type=click.IntRange(32), help="Frame size [default: the --init-head cache's, "
              "else the backbone's: 224 model3d_1, 112 mobilenet_v2].")
@click.option("--pool", default=None, help="Pooling of the backbone's last map: none, global or KxK [default: the "
              "--init-head cache's, else the backbone's].")
@click.option("--epochs", default=None, type=click.IntRange(1), help=f"Epochs {finetune_default('epochs')}.")
@click.option("--batch-size", default=None, type=click.IntRange(1), help=f"Clips per step {finetune_default('batch_size')}.")
@click.option("--lr", default=None, type=click.FloatRange(min=0, min_open=True), help=f"Head learning rate {finetune_default('lr')}.")
@click.option("--backbone-lr", default=None, type=click.FloatRange(min=0), help=f"Backbone learning rate {finetune_default('backbone_lr')}: AdamW moves every weight ~lr per step, so 1e-5 already pulls a trained backbone away from its head.")
@click.option("--weight-decay", default=None, type=click.FloatRange(min=0), help=f"AdamW weight decay {finetune_default('weight_decay')}.")
@click.option("--input", "input_", default=None, type=finetune_choices("input"),
              help=f"Head input without --init-head {finetune_default('input')}.")
@click.option("--seed", default=None, type=int, help=f"Seed {finetune_default('seed')}.")
@click.option("--amp", default="auto", type=finetune_choices("amp"),
              help="Autocast: auto = bf16 on CUDA and on CPUs with native bf16.")
@click.option("--activation-checkpointing", is_flag=True, help="Recompute backbone blocks in backward (less memory).")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--workers", default=None, type=click.IntRange(0), help="Decode worker processes.")
@click.option("--limit", default=None, type=click.IntRange(1), help="Only the first N clips of each list.")
@click.option("--resume", is_flag=True, help="Continue RUN_DIR/checkpoint-last.pt.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run in RUN_DIR.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def finetune_cmd(videos, annotations, val_annotations, out, labels, classes, window_stride, backbone, checkpoint,
                 init_head,
                 freeze_blocks, size, pool, epochs, batch_size, lr, backbone_lr, weight_decay, input_, seed, amp,
                 activation_checkpointing, device, workers, limit, resume, overwrite, quiet):
    """Train backbone and head end to end from videos."""
    from pipeline.finetune import finetune
    setup_logging(quiet)
    summary = finetune(
        videos=videos, annotations=annotations, val_annotations=val_annotations, out=out, labels=labels,
        classes=classes, window_stride=window_stride, backbone=backbone,
        checkpoint=checkpoint_arg(checkpoint) if checkpoint else None,
        init_head=init_head, freeze_blocks=freeze_blocks, size=size, pool=pool, epochs=epochs, batch_size=batch_size,
        lr=lr,
        backbone_lr=backbone_lr, weight_decay=weight_decay, input=input_, seed=seed, amp=amp,
        activation_checkpointing=activation_checkpointing, device=device, workers=workers, limit=limit,
        resume=resume, overwrite=overwrite, progress=not quiet)
    best = summary.get("best_metrics") or {}
    echo(f"finetune run {out}: best epoch {summary['best_epoch']} val_loss {summary['best_val_loss']:.4f} "
         f"(pearson {best.get('val_pearson', float('nan')):.3f}); backbone saved as {out}/backbone.pth.tar "
         "and backbone.safetensors", quiet)


def _pd(name: str) -> str:
    """A pretrain default as --help shows it (one definition: pipeline.options.PretrainOptions)."""
    return PretrainOptions.default_text(name)


def pretrain_options(f):
    """The options `pretrain` and `pretrain-compare` share (data and recipe)."""
    options = [
        click.option("--videos", required=True, type=EXISTING_DIR, help="Folder of the train AND validation videos."),
        click.option("--annotations", required=True, type=click.Path(path_type=Path),
                     help="Train manifest: SSv2 JSON, CSV / TSV / JSON Lines, or a folder inside --videos."),
        click.option("--val-annotations", required=True, type=click.Path(path_type=Path),
                     help="Validation manifest (same kinds): held out from training."),
        click.option("--labels", type=EXISTING_FILE, default=None, help="SSv2 labels JSON (orders the classes)."),
        click.option("--classes", default=None, help="sound12, all, or a file of templates / labels "
                     "[default: sound12 for an SSv2 JSON, all for other manifests]."),
        click.option("--backbone", default=None, help=f"Registered backbone to train [{_pd('backbone')}]."),
        click.option("--checkpoint", default=None, help=f"Weights to start from, or 'none' (seeded random init) [{_pd('checkpoint')}]."),
        click.option("--size", default=None, type=click.IntRange(32), help=f"Frame side in pixels [{_pd('size')}]."),
        click.option("--frames", default=None, type=click.IntRange(1), help=f"Frames per clip [{_pd('frames')}]."),
        click.option("--fps", default=None, type=click.FloatRange(min=0, min_open=True), help=f"Clip frame rate [{_pd('fps')}]."),
        click.option("--freeze-blocks", default=None, type=click.IntRange(0, 4),
                     help=f"Keep the first N of the 5 stages fixed; their output is computed once per clip and only the "
                          f"later stages train (augmentation then: flips) [{_pd('freeze_blocks')}]."),
        click.option("--epochs", default=None, type=click.IntRange(1), help=f"Epochs [{_pd('epochs')}]."),
        click.option("--batch-size", default=None, type=click.IntRange(1), help=f"Clips per step and process [{_pd('batch_size')}]."),
        click.option("--lr", default=None, type=click.FloatRange(min=0, min_open=True), help=f"Peak AdamW learning rate [{_pd('lr')}]."),
        click.option("--weight-decay", default=None, type=click.FloatRange(min=0), help=f"AdamW weight decay [{_pd('weight_decay')}]."),
        click.option("--warmup", default=None, type=click.IntRange(0), help="Warmup steps [5% of all steps]."),
        click.option("--flip/--no-flip", default=None, help="Random left-right flips [on; off for labels that say left/right]."),
        click.option("--label-smoothing", default=None, type=click.FloatRange(0, 1, max_open=True),
                     help=f"Label smoothing of the class loss [{_pd('label_smoothing')}]."),
        click.option("--dropout", default=None, type=click.FloatRange(0, 1, max_open=True),
                     help=f"Dropout before the class head [{_pd('dropout')}]."),
        click.option("--amp", default=None, type=click.Choice(list(PRETRAIN_AMP_CHOICES)),
                     help="Autocast [auto: bf16 on CUDA and on CPUs with native bf16, else off]."),
        click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"])),
        click.option("--threads", default=None, type=click.IntRange(1),
                     help="Torch threads per process [torch's default; on a busy CPU 1 can be faster]."),
        click.option("--limit", default=None, type=click.IntRange(1), help="Only the first N clips of each list."),
        click.option("--quiet", is_flag=True, help="No progress bar."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@cli.command("pretrain")
@pretrain_options
@click.option("--out", required=True, type=OUT_DIR, help="Run directory.")
@click.option("--aux-envelope", "aux_envelope", default=None, type=click.FloatRange(min=0),
              help="Weight W of the per-frame envelope loss: loss = CE + W x masked BCE [off].")
@click.option("--envelope-only", is_flag=True, default=None,
              help="Train on the envelope alone (W x masked BCE, no labels: the sound as the only teacher).")
@click.option("--seed", default=None, type=int, help=f"Seed [{_pd('seed')}].")
@click.option("--frame-cache", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the decoded frames, shared by runs on the same clips [inside --out].")
@click.option("--workers", default=None, type=click.IntRange(0), help="Decode worker processes.")
@click.option("--resume", is_flag=True, help="Continue RUN_DIR/checkpoint-last.pt.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run in RUN_DIR.")
def pretrain_cmd(videos, annotations, val_annotations, labels, classes, device, threads, limit, quiet, out,
                 frame_cache, workers, resume, overwrite, checkpoint, **options):
    """Train a backbone from videos to classify their labels (and / or predict their envelope) and export it."""
    from pipeline.pretrain import pretrain
    setup_logging(quiet)
    summary = pretrain(
        videos=videos, annotations=annotations, val_annotations=val_annotations, out=out, labels=labels,
        classes=classes, checkpoint=checkpoint_arg(checkpoint) if checkpoint else None, frame_cache=frame_cache,
        device=device, workers=workers, threads=threads, limit=limit, resume=resume, overwrite=overwrite,
        progress=not quiet, **options)
    last = summary["last_metrics"] or {}
    top1 = (f"last epoch val top-1 {last['val_top1']:.3f} top-5 {last['val_top5']:.3f} (chance {last['chance']:.3f})"
            if last.get("val_top1") is not None else f"last epoch val envelope BCE {last.get('val_aux_bce', float('nan')):.4f}")
    echo(f"pretrain run {out}: {summary['epochs_run']} epochs in {summary['seconds']:.0f} s; {top1}; backbone "
         f"{summary['backbone']['backbone']} saved as {summary['backbone']['pth']} and "
         f"{summary['backbone']['safetensors']}", quiet)
    echo(f"cache features with it:\n  {summary['extract_command']}", quiet)


@cli.command("pretrain-compare")
@pretrain_options
@click.option("--out", required=True, type=OUT_DIR, help="Comparison directory (re-run the same command to continue).")
@click.option("--eval", "evals", multiple=True, nargs=3, type=(str, EXISTING_DIR, click.Path(path_type=Path)),
              metavar="NAME VIDEOS MANIFEST", help="Another evaluation set (an unseen look, recorded sounds); repeatable.")
@click.option("--seeds", default=",".join(map(str, COMPARE_DEFAULTS["seeds"])), help="Comma-separated seeds, one pretrain + head per arm each.")
@click.option("--aux-envelope", "aux_envelope", default=None, type=click.FloatRange(min=0, min_open=True),
              help=f"W of the envelope arms (loss = CE + W x BCE, or W x BCE alone) [{COMPARE_DEFAULTS['aux_weight']}].")
def pretrain_compare_cmd(videos, annotations, val_annotations, labels, classes, device, threads, limit, quiet, out,
                         evals, seeds, aux_envelope, checkpoint, **recipe):
    """Four arms over seeds (ImageNet as it is; labels; labels + envelope; envelope alone): probe and head scores."""
    from pipeline.compare import compare
    setup_logging(quiet)
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"{seeds!r} is not a comma-separated list of integers", param_hint="--seeds") from None
    report = compare(videos=videos, annotations=annotations, val_annotations=val_annotations, out=out, labels=labels,
                     classes=classes, evals={name: (folder, manifest) for name, folder, manifest in evals},
                     seeds=seed_list, aux_weight=aux_envelope, device=device, threads=threads, limit=limit,
                     checkpoint=checkpoint_arg(checkpoint) if checkpoint else None, progress=not quiet, **recipe)
    echo((Path(out) / "compare.md").read_text(encoding="utf-8"), quiet)
    echo(f"report: {out}/compare.md and compare.json ({report['seconds']:.0f} s)", quiet)


def plots_arg(value: str):
    if value == "all":
        return value
    try:
        n = int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither a number nor 'all'") from None
    if n < 0:
        raise click.BadParameter("must be >= 0 (or 'all')")
    return n


@cli.command("export-predictions")
@click.option("--run", "run", required=True, type=EXISTING_DIR, help="Run directory of train-head or finetune.")
@click.option("--out", required=True, type=OUT_DIR, help="Directory for predictions, metrics, report, plots, renders.")
@click.option("--cache", type=EXISTING_DIR, default=None, help="Feature cache of the clips to predict (its "
              "fingerprint must match the run's).")
@click.option("--videos", type=EXISTING_DIR, default=None, help="Videos folder: with --annotations, features are "
              "extracted into OUT/cache with the run's backbone; with --cache, the source of the renders.")
@click.option("--annotations", type=click.Path(path_type=Path), default=None,
              help="Manifest of the clips to predict: SSv2 JSON, CSV / TSV / JSON Lines, a folder inside "
              "--videos, or 'none' (every video in --videos).")
@click.option("--labels", type=EXISTING_FILE, default=None, help="SSv2 labels JSON (with --annotations).")
@click.option("--classes", default=None, help="sound12, all, or a file of templates / labels "
              "[default: sound12 for an SSv2 JSON, all for other manifests] (with --annotations).")
@click.option("--window-stride", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Tile each video into windows of frames/fps s, one every this many seconds.")
@click.option("--checkpoint", default="best", type=click.Choice(["best", "last"]), help="Which checkpoint of the run.")
@click.option("--plots", default="24", help="Clips to plot (a seeded random sample) or 'all'.")
@click.option("--render", default=0, type=click.IntRange(0), help="GIF renders for the first N plotted clips "
              "(needs --videos).")
@click.option("--preview", default=0, type=click.IntRange(0), help="MP4 previews of the first N videos: frames, "
              "predicted curve, an impact sound at each predicted onset.")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--quiet", is_flag=True, help="No progress bar, no summary.")
def export_predictions_cmd(run, out, cache, videos, annotations, labels, classes, window_stride, checkpoint, plots,
                           render, preview, device, quiet):
    """Write predictions, metrics, report, plots and renders for a trained run."""
    from pipeline.export import export_predictions
    setup_logging(quiet)
    if (cache is None) == (annotations is None):
        raise FoleyError("give either --cache CACHE_DIR or --videos DIR --annotations FILE")
    s = export_predictions(run=run, out=out, cache=cache, videos=videos, annotations=annotations, labels=labels,
                           classes=classes, window_stride=window_stride, checkpoint=checkpoint,
                           plots=plots_arg(plots), render=render, preview=preview, device=device, progress=not quiet)
    echo_predictions(s, quiet)


def echo_predictions(s: dict, quiet: bool):
    """The summary export-predictions and predict print."""
    echo(f"{s['clips']} clips of {s['videos']} videos predicted; {s['plots']} plots, {s['renders']} renders, "
         f"{s['previews']} previews in {s['wall_seconds']} s", quiet)
    echo(s["verdict"], quiet)
    echo(f"onsets: {s['onsets']} in {s['onsets_csv']} (and .json); one curve per video in {s['timelines']}", quiet)
    echo(f"report: {s['report']} and {s['html']} (open in a browser; works offline)"
         + (f"; metrics: {s['metrics']}" if s["metrics"] else ""), quiet)


@cli.command("predict")
@click.option("--run", "run", required=True, type=EXISTING_DIR, help="Run directory of train-head or finetune.")
@click.option("--videos", required=True, type=EXISTING_DIR, help="Folder of the videos. Their audio is never "
              "read: videos without sound, or without an audio stream, are predicted like any other.")
@click.option("--out", required=True, type=OUT_DIR, help="Directory for timelines, onsets, previews, predictions, "
              "report (and OUT/cache, reused when the same command runs again).")
@click.option("--annotations", default="none", type=click.Path(path_type=Path),
              help="Which videos: 'none' (every video in --videos), a folder inside it, or a manifest "
              "(SSv2 JSON, CSV / TSV / JSON Lines).")
@click.option("--classes", default=None, help="sound12, all, or a file of templates / labels "
              "[default: sound12 for an SSv2 JSON, all for other manifests].")
@click.option("--window-stride", default=2.0, type=click.FloatRange(min=0), help="Seconds between the starts of the clip-long windows each "
              "video is cut into (joined into one curve per video); 0: one clip per video, from its start.")
@click.option("--checkpoint", default="best", type=click.Choice(["best", "last"]), help="Which checkpoint of the run.")
@click.option("--plots", default="0", help="Clips (windows) to plot, prediction alone, or 'all'.")
@click.option("--preview", default=1, type=click.IntRange(0), help="MP4 previews of the first N videos: frames, "
              "predicted curve, an impact sound at each predicted onset, as loud as it is strong.")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--quiet", is_flag=True, help="No progress bar, no summary.")
def predict_cmd(run, videos, out, annotations, classes, window_stride, checkpoint, plots, preview, device, quiet):
    """Predict where the sounds go in any video, from its frames alone; no metric (nothing to score against)."""
    from pipeline.export import export_predictions
    setup_logging(quiet)
    s = export_predictions(run=run, out=out, videos=videos, annotations=annotations, classes=classes,
                           window_stride=window_stride or None, checkpoint=checkpoint, plots=plots_arg(plots),
                           preview=preview, targets=False, device=device, progress=not quiet)
    echo_predictions(s, quiet)


@cli.command("demo")
@click.option("--out", default=Path("foleycache-demo"), type=OUT_DIR, help="Directory for the dataset, caches, "
              "runs and reports (new, empty, or an earlier demo's).")
@click.option("--train", "n_train", default=DEMO_TRAIN, type=click.IntRange(2), help="Synthetic train clips.")
@click.option("--val", "n_val", default=DEMO_VAL, type=click.IntRange(2), help="Synthetic held-out validation clips.")
@click.option("--unseen", "n_unseen", default=DEMO_UNSEEN, type=click.IntRange(2),
              help="Held-out clips of a look the heads never saw.")
@click.option("--size", default=DEMO_SIZE, type=click.IntRange(64), help="Frame size for the backbone.")
@click.option("--precision", default="auto", type=click.Choice(list(PRECISIONS)),
              help="auto: bf16 where the CPU/GPU computes it natively (AMX, AVX512-BF16, CUDA), else fp32; "
                   "fp32: no bf16 anywhere.")
@click.option("--with-motion-energy", is_flag=True, help="Also train and compare the motion-energy head (~1 min more).")
@click.option("--quiet", is_flag=True, help="No progress bars (the report is still printed).")
def demo_cmd(out, n_train, n_val, n_unseen, size, precision, with_motion_energy, quiet):
    """Run the whole pipeline on pretrained features of a synthetic dataset (CPU, a few minutes); print the report."""
    from pipeline.demo import HEADS, MOTION_ENERGY_HEAD, run_demo
    setup_logging(quiet)
    heads = {**HEADS, **MOTION_ENERGY_HEAD} if with_motion_energy else HEADS
    s = run_demo(out=out, n_train=n_train, n_val=n_val, n_unseen=n_unseen, size=size, precision=precision,
                 heads=heads, progress=not quiet)
    echo(s["report"])
    echo(f"demo finished in {s['seconds_total']} s (per stage: "
         + ", ".join(f"{k} {v} s" for k, v in s["seconds"].items()) + ")")


def main():
    """Entry point: click's usage errors become one line too ("error: ...", exit 2), like FoleyError."""
    try:
        code = cli.main(prog_name="foleycache", standalone_mode=False)
    except click.UsageError as e:
        hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx is not None else ""
        click.echo(f"error: {e.format_message()}{hint}", err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
