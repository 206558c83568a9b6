"""The options of the training commands: defaults, ranges, choices, and what must match on --resume.

One dataclass per command (`TrainOptions` for train-head, `FinetuneOptions` for finetune). Each field
carries its rule (`option(...)`): the library checks with it (`check_given` before anything touches
--out, `validate` after resolving), `resolve` fills what was not given from the defaults or the
resumed run's own options and refuses a resume that changes a field marked `must_match`, and the CLI
shows the defaults from it (`default_text`), so a default is written once.

Torch-free on purpose: `pipeline.cli` imports this module at import time to build its --help, and
--help must stay fast. It must not import from the rest of the package except `pipeline.errors`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable

from pipeline.errors import FoleyError

INPUTS = ("features", "motion-energy")          # the head's input transforms (pipeline.head)
AMP_CHOICES = ("auto", "bf16", "fp16", "off")     # training's --amp (pipeline.runtime.resolve_amp)
PRECISIONS = ("auto", "bf16", "fp32")             # extraction's --precision (pipeline.runtime.resolve_precision)
PRELOADS = ("auto", "none", "ram", "gpu")       # train-head's --preload (pipeline.loader resolves auto)
WARMUP_FRACTION = 0.05          # default warmup: 5% of all optimizer steps (at least 1)


def option(default: Any, *, check: Callable[[Any], bool] | None = None, rule: str = "",
           choices: tuple[str, ...] | None = None, must_match: bool = True, shown: str | None = None):
    """A dataclass field with its rule: check(value) must hold (`rule` says so in the error),
    or the value is one of `choices`; must_match: a --resume may not change it; shown: --help's
    default text when str(default) is not it."""
    return field(default=default, metadata={"check": check, "rule": rule, "choices": choices,
                                            "must_match": must_match, "shown": shown})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


class _Options:
    """What TrainOptions and FinetuneOptions share: checking, resolving, showing (module docstring)."""

    COMMAND = ""

    @classmethod
    def default_text(cls, name: str) -> str:
        """The default as --help shows it."""
        f = next(f for f in fields(cls) if f.name == name)
        return f.metadata["shown"] if f.metadata["shown"] is not None else str(f.default)

    @classmethod
    def check_given(cls, given: dict):
        """Ranges and choices of the options that are set (None = not given): a one-line FoleyError."""
        for f in fields(cls):
            value, meta = given.get(f.name), f.metadata
            if value is None:
                continue
            if meta["check"] is not None and not meta["check"](value):
                raise FoleyError(f"{_flag(f.name)} must be {meta['rule']}, got {value!r}")
            if meta["choices"] is not None and value not in meta["choices"]:
                raise FoleyError(f"unknown {_flag(f.name)} {value!r}; choose one of: {', '.join(meta['choices'])}")

    def validate(self):
        self.check_given(asdict(self))

    @classmethod
    def resolve(cls, given: dict, resume_config: dict | None = None):
        """Given options over (the resumed run's options or the defaults); refuse a resume that
        changes an option marked must_match. resume_config: the run's config.json (None: a new run)."""
        base = {f.name: f.default for f in fields(cls)}
        if resume_config is not None:
            saved = resume_config.get("options")
            if resume_config.get("command") != cls.COMMAND or not isinstance(saved, dict):
                raise FoleyError(f"--resume: the run in --out is not a {cls.COMMAND} run (its config.json says "
                                 f"command {resume_config.get('command')!r})")
            base.update({k: v for k, v in saved.items() if k in base})
            changed = [f.name for f in fields(cls) if f.metadata["must_match"] and given.get(f.name) is not None
                       and _plain(given[f.name]) != _plain(saved.get(f.name))]
            if changed:
                listed = ", ".join(f"{_flag(k)} {saved.get(k)!r} -> {given[k]!r}" for k in changed)
                raise FoleyError(f"--resume with other training options than the run's ({listed}); "
                                 "resume with the same options, or start over with --overwrite")
        base.update({k: v for k, v in given.items() if v is not None and k in base})
        opts = cls(**base)
        opts.validate()
        return opts

    def to_dict(self) -> dict:
        """Plain values (tuples as lists), in field order: config.json's "options"."""
        return {k: _plain(v) for k, v in asdict(self).items()}


@dataclass
class TrainOptions(_Options):
    """train-head's options. warmup None = WARMUP_FRACTION of all optimizer steps."""

    COMMAND = "train-head"

    epochs: int = option(30, check=lambda v: v >= 1, rule=">= 1")
    batch_size: int = option(16, check=lambda v: v >= 1, rule=">= 1")
    lr: float = option(1e-3, check=lambda v: v > 0, rule="> 0")
    weight_decay: float = option(0.01, check=lambda v: v >= 0, rule=">= 0")
    warmup: int | None = option(None, check=lambda v: v >= 0, rule=">= 0", shown="5% of all steps")
    hidden: int = option(512, check=lambda v: v >= 1, rule=">= 1")
    layers: int = option(2, check=lambda v: v >= 1, rule=">= 1")
    fc: tuple = option((256, 64))
    dropout: float = option(0.0, check=lambda v: 0 <= v < 1, rule="in [0, 1)", shown="0")
    input: str = option("features", choices=INPUTS)
    seed: int = option(0)
    amp: str = option("auto", choices=AMP_CHOICES)
    early_stop: int = option(0, check=lambda v: v >= 0, rule=">= 0", must_match=False)
    center_clips: bool = option(False, shown="off")
    # where the cache is read from; changes no number (the same batches either way), so a resume may change it
    preload: str = option("auto", choices=PRELOADS, must_match=False)

    def warmup_steps(self, total_steps: int) -> int:
        """--warmup, else WARMUP_FRACTION of all optimizer steps (at least 1)."""
        return self.warmup if self.warmup is not None else default_warmup(total_steps)


def default_warmup(total_steps: int) -> int:
    """WARMUP_FRACTION of all optimizer steps, at least 1."""
    return max(1, round(WARMUP_FRACTION * total_steps))


FREEZABLE_BLOCKS = 5            # model3d_1's five blocks


@dataclass
class FinetuneOptions(_Options):
    """finetune's options. The first group has fixed defaults; backbone .. checkpoint default to the
    --init-head run's cache, else the backbone's own (`pipeline.finetune` fills them in). On
    --resume every option must match the run's."""

    COMMAND = "finetune"

    epochs: int = option(5, check=lambda v: v >= 1, rule=">= 1")
    batch_size: int = option(4, check=lambda v: v >= 1, rule=">= 1")
    lr: float = option(1e-4, check=lambda v: v > 0, rule="> 0", shown="1e-4")
    backbone_lr: float = option(1e-6, check=lambda v: v >= 0, rule=">= 0", shown="1e-6")
    weight_decay: float = option(0.01, check=lambda v: v >= 0, rule=">= 0")
    freeze_blocks: int = option(0, check=lambda v: 0 <= v <= FREEZABLE_BLOCKS,
                                rule=f"0..{FREEZABLE_BLOCKS} (model3d_1 has five blocks)")
    input: str = option("features", choices=INPUTS)
    hidden: int = option(512, check=lambda v: v >= 1, rule=">= 1")
    layers: int = option(2, check=lambda v: v >= 1, rule=">= 1")
    seed: int = option(0)
    backbone: str | None = option(None)
    size: int | None = option(None, check=lambda v: v >= 32, rule=">= 32")
    pool: str | None = option(None)
    frames: int | None = option(None)
    fps: float | None = option(None)
    checkpoint: str | None = option(None)

    def changed_from(self, saved: dict) -> list[str]:
        """The options whose value differs from a resumed run's (the ones it recorded)."""
        mine = self.to_dict()
        return [k for k in mine if k in saved and saved[k] != mine[k]]
