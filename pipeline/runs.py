"""The run directory: what train-head, finetune and pretrain leave in --out, and the one checkpoint format.

    RUN/config.json            the resolved run config (`write_config`; indent 2, keys in insertion order)
    RUN/metrics.jsonl          one JSON line per epoch (`write_metrics`: the whole history, atomically)
    RUN/checkpoint-last.pt     a `RunCheckpoint`, every epoch
    RUN/checkpoint-best.pt     the same bytes (a hard link) when the epoch improved the val loss

`RunCheckpoint` is the checkpoint, written (`.write`) and read (`.read`) here and nowhere else.
On disk it is ONE flat dict that `torch.load(path, weights_only=True)` reads (tensors, numbers,
strings, lists, dicts only):

    format, format_version          "foleycache-run-checkpoint", 1
    -- what was trained (`RunDescription`, fixed for the run)
    kind                            "train-head" | "finetune" | "pretrain"
    head_config                     HeadConfig.to_dict()
    transform                       InputTransform.state_dict()
    fingerprint                     the train cache's fingerprint (finetune: of its backbone + settings)
    cache_config                    the train cache's config (finetune: the --init-head cache's, or None)
    val_fingerprint                 train-head only: the val cache's fingerprint
    backbone, size, pool, frames, fps   finetune only: the backbone and how its clips were decoded
    (pretrain: `PretrainDescription` instead: backbone, classes, size, frames, fps, aux_envelope,
    preprocess, freeze_blocks, envelope_only)
    -- where training stands (`RunCheckpoint`, written by `pipeline.loop.fit` every epoch)
    model, optimizer, scaler        state_dicts (model: the Head's, or EndToEnd's with `head.*` keys)
    epoch, step                     epochs done, optimizer steps done
    val_loss, metrics               this epoch's val loss and metrics.jsonl record
    best_val_loss, best_epoch, bad_epochs, history    early stopping and the metrics.jsonl lines so far
    rng                             every rank's RNG states (`runtime.rng_state`)
    config                          the run's config.json, as a dict
    world_size                      processes the run trained with

Optional description fields a run's kind does not have are left out of the file (not written as None),
so train-head and finetune checkpoints hold the keys they always held.

    ckpt = RunCheckpoint.read(run / CKPT_LAST)          # FoleyError if unreadable or not a run checkpoint
    ckpt.description.fingerprint, ckpt.epoch, ckpt.model, ckpt.config["options"]
    ckpt.write(run / CKPT_LAST, also=run / CKPT_BEST)   # atomic; `also` shares the bytes
    read_checkpoint(path) -> dict                       # the raw dict, format checked (what export reads)
    head, transform, ckpt = load_head(run / CKPT_BEST)  # the trained head, ready to predict
    prepare_run_dir(out, resume, overwrite) -> Path | None   # --resume / --overwrite rules; the checkpoint to resume

This module owns the run directory's files and their names; it must not train, read caches or
decide options (pipeline.loop, pipeline.train, pipeline.finetune do).
"""
from __future__ import annotations

import json
import sys
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from pipeline.distributed import Distributed
from pipeline.errors import FoleyError
from pipeline.fsio import atomic_torch_save, atomic_write_text, read_json, read_jsonl
from pipeline.head import Head, InputTransform, rebuild_head

CONFIG_JSON = "config.json"
METRICS_JSONL = "metrics.jsonl"
CKPT_LAST = "checkpoint-last.pt"
CKPT_BEST = "checkpoint-best.pt"
RUN_FILES = (CONFIG_JSON, METRICS_JSONL, CKPT_LAST, CKPT_BEST)
CHECKPOINT_FORMAT = "foleycache-run-checkpoint"
CHECKPOINT_VERSION = 1
ERROR_DETAIL = 160              # characters of an unreadable checkpoint's exception kept in the one-line error


# ----------------------------------------------------------------------------- plain values

def to_cpu(obj):
    """Tensors to CPU, tuples to lists (plain, weights_only-safe, device-independent)."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_cpu(v) for v in obj]
    return obj


def json_plain(obj):
    """A JSON round trip: only dict/list/str/int/float/bool/None remain (weights_only-safe)."""
    return json.loads(json.dumps(obj))


def versions() -> dict:
    """Versions of the tool and what computes its numbers, for config.json."""
    import pipeline

    return {"foleycache": str(pipeline.__version__), "torch": str(torch.__version__),
            "numpy": str(np.__version__), "python": sys.version.split()[0]}


def on_main(dist: Distributed, fn: Callable[[], Any]):
    """Run fn() on rank 0; its FoleyError (or result) reaches every rank."""
    result, error = None, None
    if dist.is_main:
        try:
            result = fn()
        except FoleyError as e:
            error = str(e)
    result, error = dist.broadcast((result, error))
    if error:
        raise FoleyError(error)
    return result


# ----------------------------------------------------------------------------- the checkpoint

@dataclass
class RunDescription:
    """What a run trains, fixed for the run and carried in every checkpoint (module docstring)."""

    kind: str                                   # "train-head" | "finetune"
    head_config: dict                           # HeadConfig.to_dict()
    transform: dict                             # InputTransform.state_dict()
    fingerprint: str
    cache_config: dict | None = None
    val_fingerprint: str | None = None          # train-head
    backbone: str | None = None                 # finetune: backbone name, frame size, pooling, clip frames, fps
    size: int | None = None
    pool: str | None = None
    frames: int | None = None
    fps: float | None = None

    # Left out of the file when None: a train-head checkpoint has no backbone, a finetune one no val cache.
    OMITTED_WHEN_NONE = ("val_fingerprint", "backbone", "size", "pool", "frames", "fps")

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: v for k, v in d.items() if not (k in self.OMITTED_WHEN_NONE and v is None)}


_DESCRIPTION_KEYS = tuple(f.name for f in fields(RunDescription))


_OPTIONAL_STATE = ("train_model",)       # RunCheckpoint fields older checkpoints lack


@dataclass
class PretrainDescription:
    """What a pretrain run trains (pipeline.pretrain): a backbone, its class and envelope heads, and
    how its clips were decoded."""

    kind: str                                   # "pretrain"
    backbone: str
    classes: list                               # the class names, in the class head's order ([] when none)
    size: int
    frames: int
    fps: float
    aux_envelope: float | None                  # W of the envelope loss (None: no envelope head)
    preprocess: dict
    freeze_blocks: int = 0
    envelope_only: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


_PRETRAIN_KEYS = tuple(f.name for f in fields(PretrainDescription))
_PRETRAIN_REQUIRED = tuple(f.name for f in fields(PretrainDescription) if f.default is MISSING)


@dataclass
class RunCheckpoint:
    """A run checkpoint: the description of what is trained plus where training stands (module docstring)."""

    description: RunDescription | PretrainDescription
    model: dict                                 # state_dict (averaged when train_model is set)
    optimizer: dict
    scaler: dict
    epoch: int                                  # epochs done
    step: int                                   # optimizer steps done
    val_loss: float
    metrics: dict                               # this epoch's metrics.jsonl record
    best_val_loss: float
    best_epoch: int
    bad_epochs: int
    history: list = field(default_factory=list)  # every epoch's record so far
    rng: list = field(default_factory=list)      # per rank: runtime.rng_state()
    config: dict = field(default_factory=dict)   # config.json
    world_size: int = 1
    # the trained weights when `model` holds their moving average (train-head --ema-decay), else None:
    # what a resume continues training; checkpoints written before averaging existed have no entry
    train_model: dict | None = None

    def to_dict(self) -> dict:
        """The flat dict that is saved (CPU tensors, lists for tuples)."""
        state = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "description"}
        return to_cpu(_with_header({**self.description.to_dict(), **state}))

    @classmethod
    def from_dict(cls, d: dict, path: str | Path = "checkpoint") -> "RunCheckpoint":
        state_keys = [f.name for f in fields(cls) if f.name != "description"]
        kind, keys = (PretrainDescription, _PRETRAIN_REQUIRED) if d.get("kind") == "pretrain" else \
            (RunDescription, ("kind", "head_config", "transform", "fingerprint"))
        missing = [k for k in (*keys, *state_keys) if k not in d and k not in _OPTIONAL_STATE]
        if missing:
            raise FoleyError(f"{path} is not a complete foleycache run checkpoint (no {', '.join(missing)})")
        names = _PRETRAIN_KEYS if kind is PretrainDescription else _DESCRIPTION_KEYS
        description = kind(**{k: d[k] for k in names if k in d})
        return cls(description=description, **{k: d[k] for k in state_keys if k in d})

    @classmethod
    def read(cls, path: str | Path, map_location: str | torch.device = "cpu", hint: str = "") -> "RunCheckpoint":
        """Read with weights_only=True onto `map_location` (FoleyError if missing, unreadable or not a
        run checkpoint; `hint`, what to do about an unreadable one, ends its message)."""
        return cls.from_dict(read_checkpoint(path, map_location, hint), path)

    def write(self, path: str | Path, also: str | Path | None = None):
        """Save atomically (a kill leaves the old file or the new one); `also`: a second name, same bytes."""
        atomic_torch_save(self.to_dict(), path, also=also)


def _with_header(fields: dict) -> dict:
    """What every checkpoint of this tool starts with: its format and version."""
    return {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **fields}


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", hint: str = "") -> dict:
    """A checkpoint file of this tool's format as the dict on disk (weights_only=True, onto
    `map_location`): `RunCheckpoint.read`'s reader, and that of runs whose checkpoints carry other
    fields (pretrain)."""
    path = Path(path)
    if not path.exists():
        raise FoleyError(f"no checkpoint at {path}")
    try:
        d = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        tail = f"; {hint}" if hint else ""
        first = (str(e).strip().splitlines() or [""])[0][:ERROR_DETAIL]     # torch's messages run to pages
        raise FoleyError(f"cannot read checkpoint {path}: {type(e).__name__}: {first}{tail}") from e
    if not isinstance(d, dict) or d.get("format") != CHECKPOINT_FORMAT:
        raise FoleyError(f"{path} is not a foleycache run checkpoint")
    return d


def load_head(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[Head, InputTransform,
                                                                                    RunCheckpoint]:
    """Rebuild the trained head and its input transform from a run checkpoint.

    path: RUN_DIR/checkpoint-best.pt (or -last.pt, or RUN_DIR for best), from train-head or finetune.
    Returns (head in eval mode, transform, checkpoint), both modules on `map_location`. The head
    weights are checkpoint.model (train-head: the Head's own state_dict; finetune: a model with a
    `.head` submodule, whose `head.*` keys are taken); description.fingerprint names the cache the
    head was trained on and checkpoint.config the run's resolved options."""
    path = Path(path)
    if path.is_dir():
        path = path / CKPT_BEST
    ckpt = RunCheckpoint.read(path, map_location=map_location)
    head, transform = rebuild_head(ckpt.description.head_config, ckpt.model, ckpt.description.transform, path)
    return head.to(map_location).eval(), transform.to(map_location), ckpt


# ----------------------------------------------------------------------------- the directory

def _is_run_file(name: str, run_files: tuple[str, ...]) -> bool:
    return name in run_files or any(name.startswith(f + ".tmp-") for f in run_files)


def prepare_run_dir(out: Path, resume: bool, overwrite: bool,
                    extra_files: tuple[str, ...] = ()) -> Path | None:
    """Check (and with overwrite, empty) a run directory; return the path of the checkpoint to
    resume (RUN/checkpoint-last.pt: read it with `read_resume_checkpoint`) or None.

    A non-empty `out` needs --resume (continue checkpoint-last.pt) or --overwrite (delete the run's
    files: RUN_FILES + `extra_files`, e.g. finetune's exported backbone; a directory holding
    anything else is never wiped). Call on rank 0 only.
    """
    out = Path(out)
    if resume and overwrite:
        raise FoleyError("--resume and --overwrite contradict each other: choose one")
    if out.exists() and not out.is_dir():
        raise FoleyError(f"--out {out} exists and is not a directory")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    run_files = RUN_FILES + tuple(extra_files)
    if resume:
        if CONFIG_JSON not in entries:
            raise FoleyError(f"--resume: no run to resume in {out} (no {CONFIG_JSON}); drop --resume to start one")
        for name in entries:            # half-written temporaries of a killed run
            if ".tmp-" in name and _is_run_file(name, run_files):
                (out / name).unlink()
        return out / CKPT_LAST if CKPT_LAST in entries else None
    if entries:
        if not overwrite:
            raise FoleyError(f"--out {out} already holds a run (or other files); pass --resume to continue it "
                             f"or --overwrite to replace it")
        foreign = [n for n in entries if not _is_run_file(n, run_files) or (out / n).is_dir()]
        if foreign:
            raise FoleyError(f"--overwrite: {out} holds files that are not part of a run ({', '.join(foreign[:3])}); "
                             "refusing to delete them: choose another --out")
        for name in entries:
            (out / name).unlink()
    return None


def read_resume_checkpoint(out: Path) -> RunCheckpoint:
    """RUN/checkpoint-last.pt, the checkpoint --resume continues."""
    return RunCheckpoint.read(Path(out) / CKPT_LAST, hint="start over with --overwrite")


def read_run_config(out: Path) -> dict | None:
    """The config.json of the run in `out` for --resume (None if there is none: prepare_run_dir then says so)."""
    path = Path(out) / CONFIG_JSON
    if not path.exists():
        return None
    return read_json(path, "--resume: run config", hint="start over with --overwrite")


def write_config(run_dir: Path, config: dict):
    """RUN/config.json, atomically (indent 2, the config's own key order)."""
    atomic_write_text(Path(run_dir) / CONFIG_JSON, json.dumps(config, indent=2) + "\n")


def read_metrics(run_dir: Path) -> list[dict]:
    """RUN/metrics.jsonl's records, one per epoch done ([] before the first)."""
    return read_jsonl(Path(run_dir) / METRICS_JSONL)


def write_metrics(run_dir: Path, history: list[dict]):
    """RUN/metrics.jsonl: one line per epoch, the whole history rewritten atomically (so a kill
    never leaves half a line, and a resumed run's file is exactly its checkpoint's history)."""
    atomic_write_text(Path(run_dir) / METRICS_JSONL, "".join(json.dumps(h) + "\n" for h in history))
