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

EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
OUT_DIR = click.Path(file_okay=False, path_type=Path)


def not_built(command: str):
    raise FoleyError(f"`{command}` is not built yet in this version of foleycache")


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def echo(message: str = "", quiet: bool = False):
    """User-facing output, printed once (rank 0) under torchrun."""
    if not quiet and is_rank_zero():
        click.echo(message)


class FoleyGroup(click.Group):
    """Turns FoleyError (and FaultyVideo from direct media calls) into one line, exit status 2."""

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
@click.option("--train", "n_train", default=240, type=click.IntRange(1), help="Training clips.")
@click.option("--val", "n_val", default=60, type=click.IntRange(1), help="Validation clips.")
@click.option("--seed", default=0, type=int, help="Random seed (output is deterministic for a seed).")
@click.option("--format", "fmt", default="webm", type=click.Choice(["webm", "mp4"]), help="webm = VP9+Opus, mp4 = H.264+AAC.")
@click.option("--jobs", default=-1, type=int, help="Parallel processes (joblib; -1 = all cores).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def make_synthetic_cmd(out, n_train, n_val, seed, fmt, jobs, quiet):
    """Write a Something-Something-shaped dataset with sound (videos, SSv2 JSONs, events.json)."""
    try:
        from pipeline.synthetic import make_synthetic
    except ImportError:
        not_built("make-synthetic")
    summary = make_synthetic(out=out, n_train=n_train, n_val=n_val, seed=seed, fmt=fmt, jobs=jobs, progress=not quiet)
    echo(json.dumps(summary, indent=2), quiet)


@cli.command("extract-features")
def extract_features_cmd():
    """Run the 3D CNN once per video; cache features + audio envelope in HDF5/Zarr shards."""
    not_built("extract-features")


@cli.command("cache-info")
def cache_info_cmd():
    """Summarise a feature cache; --verify re-hashes every shard."""
    not_built("cache-info")


@cli.command("train-head")
def train_head_cmd():
    """Train the LSTM+FC head from a feature cache."""
    not_built("train-head")


@cli.command("finetune")
def finetune_cmd():
    """Train backbone and head end to end from videos."""
    not_built("finetune")


@cli.command("export-predictions")
def export_predictions_cmd():
    """Write predictions, metrics, report, plots and renders for a trained run."""
    not_built("export-predictions")


@cli.command("demo")
def demo_cmd():
    """Run the whole pipeline on a synthetic dataset and print the report."""
    not_built("demo")


def main():
    cli(prog_name="foleycache")


if __name__ == "__main__":
    main()
