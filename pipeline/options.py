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

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable

from pipeline.errors import FoleyError

INPUTS = ("features", "motion-energy")          # the head's input transforms (pipeline.head)
# The head's temporal layer (pipeline.head.Head): "lstm" is the seed's causal LSTM (what checkpoints
# without a "temporal" entry rebuild to); "bilstm" reads both sides of a frame; "conv-bilstm" puts a
# small Conv1d front over time before the bidirectional LSTM.
TEMPORALS = ("lstm", "bilstm", "conv-bilstm")
AMP_CHOICES = ("auto", "bf16", "fp16", "off")     # training's --amp (pipeline.runtime.resolve_amp)
PRECISIONS = ("auto", "bf16", "fp32")             # extraction's --precision (pipeline.runtime.resolve_precision)
PRELOADS = ("auto", "none", "ram", "gpu")       # train-head's --preload (pipeline.loader resolves auto)
# pretrain's --amp: no fp16, which needs loss scaling that pretrain's step does not do
PRETRAIN_AMP_CHOICES = tuple(a for a in AMP_CHOICES if a != "fp16")
WARMUP_FRACTION = 0.05          # default warmup: 5% of all optimizer steps (at least 1)

# The clip of the data contract, re-exported by pipeline.media with the medium's other constants:
# defined here, torch-free, so that --help can show it.
FRAMES = 48                     # T: frames per clip -> FRAMES / FPS = 4.0 s
FPS = 12                        # clip frame rate (frames per second)

# Defaults of the commands without an options dataclass, here so that --help shows them (their
# reasons: pipeline.pretrain, pipeline.compare, pipeline.demo). None = "the default here, or the
# run's own value on --resume".
COMPARE_DEFAULTS = {"seeds": (0, 1, 2), "aux_weight": 1.0}
DEMO_TRAIN = 300            # sound clips in the train split
DEMO_VAL = 80               # held-out validation clips of the training look
DEMO_UNSEEN = 60            # held-out clips of a look the heads never saw
DEMO_SIZE = 96              # frame side for the backbone


_NO_LEGACY = object()


def option(default: Any, *, check: Callable[[Any], bool] | None = None, rule: str = "",
           choices: tuple[str, ...] | None = None, must_match: bool = True, shown: str | None = None,
           legacy: Any = _NO_LEGACY):
    """A dataclass field with its rule: check(value) must hold (`rule` says so in the error),
    or the value is one of `choices`; must_match: a --resume may not change it; shown: --help's
    default text when str(default) is not it; legacy: the value a resumed run that predates the
    option had (its config.json lacks it), when that is not today's default."""
    return field(default=default, metadata={"check": check, "rule": rule, "choices": choices,
                                            "must_match": must_match, "shown": shown, "legacy": legacy})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


class _Warmup:
    """Options with a `warmup` field: None = WARMUP_FRACTION of all optimizer steps."""

    def warmup_steps(self, total_steps: int) -> int:
        """--warmup, else WARMUP_FRACTION of all optimizer steps (at least 1)."""
        return self.warmup if self.warmup is not None else default_warmup(total_steps)


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
            base.update({f.name: f.metadata["legacy"] for f in fields(cls)
                         if f.name not in saved and f.metadata["legacy"] is not _NO_LEGACY})
            base.update({k: v for k, v in saved.items() if k in base})
            changed = [f.name for f in fields(cls) if f.metadata["must_match"] and given.get(f.name) is not None
                       and _plain(given[f.name]) != _plain(base[f.name])]
            if changed:
                listed = ", ".join(f"{_flag(k)} {base[k]!r} -> {given[k]!r}" for k in changed)
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
class TrainOptions(_Warmup, _Options):
    """train-head's options. warmup None = WARMUP_FRACTION of all optimizer steps.

    The defaults are the recipe `compare-heads` measured best (pipeline.recipes.DEFAULT_RECIPE:
    a Conv1d front and a bidirectional LSTM on centred features, with the onset and slope terms and
    averaged weights); `legacy` values rebuild runs recorded before an option existed as they were
    trained (the seed's causal LSTM, no centring, no onset or slope term, the trained weights)."""

    COMMAND = "train-head"

    epochs: int = option(8, check=lambda v: v >= 1, rule=">= 1")
    batch_size: int = option(8, check=lambda v: v >= 1, rule=">= 1")
    lr: float = option(1e-3, check=lambda v: v > 0, rule="> 0")
    weight_decay: float = option(0.01, check=lambda v: v >= 0, rule=">= 0")
    warmup: int | None = option(None, check=lambda v: v >= 0, rule=">= 0", shown="5% of all steps")
    hidden: int = option(128, check=lambda v: v >= 1, rule=">= 1")
    layers: int = option(2, check=lambda v: v >= 1, rule=">= 1")
    fc: tuple = option((256, 64))
    dropout: float = option(0.0, check=lambda v: 0 <= v < 1, rule="in [0, 1)", shown="0")
    input: str = option("features", choices=INPUTS)
    seed: int = option(0)
    amp: str = option("auto", choices=AMP_CHOICES)
    early_stop: int = option(0, check=lambda v: v >= 0, rule=">= 0", must_match=False)
    center_clips: bool = option(True, shown="on (--input features)", legacy=False)
    temporal: str = option("conv-bilstm", choices=TEMPORALS, legacy="lstm")
    conv_channels: int = option(256, check=lambda v: v >= 1, rule=">= 1", legacy=256)
    onset_weight: float = option(0.3, check=lambda v: v >= 0, rule=">= 0", legacy=0.0)
    # Misses were mostly a second impact 2-3 frames after a first, blurred into one bump; the squared
    # error of the frame-to-frame changes prices that blur (pipeline.head.slope_mse, docs/learning.md).
    slope_weight: float = option(3.0, check=lambda v: v >= 0, rule=">= 0", legacy=0.0)
    time_shift: int = option(0, check=lambda v: v >= 0, rule=">= 0 frames", legacy=0)
    # The checkpoints hold an exponential moving average of the weights, updated after every step and
    # started from the initial weights (0 = the trained weights themselves). The head overfits 300
    # clips by epoch 4-6; the average damps the late epochs, and at the default budget (288 steps)
    # the initial weights keep a share 0.993 ** 288 ~ 1/8, a shrinkage that carries over to unseen
    # looks and recorded sounds (docs/learning.md). More steps leave less of the start; a run of
    # fewer steps averages faster (`ema_decay_for`), so that it never keeps more of its start.
    ema_decay: float = option(0.993, check=lambda v: 0 <= v < 1, rule="in [0, 1)", legacy=0.0)
    # where the cache is read from; changes no number (the same batches either way), so a resume may change it
    preload: str = option("auto", choices=PRELOADS, must_match=False)


FREEZABLE_BLOCKS = 5            # every backbone's five blocks (pipeline.architectures.NUM_BLOCKS)


@dataclass
class PretrainOptions(_Warmup, _Options):
    """pretrain's options (pipeline.pretrain). The defaults are the recipe a 2-core CPU can train in
    minutes (docs/pretraining.md): ImageNet MobileNetV2 at 64 px with its first 4 stages frozen,
    their output computed once (pipeline.stemcache), the last stage and the heads trained.
    checkpoint None = the backbone's named weights when it has some ("imagenet"), else a seeded
    random init. `legacy`: runs recorded before freezing existed trained every stage."""

    COMMAND = "pretrain"

    backbone: str = option("mobilenet_v2")
    checkpoint: str | None = option(None, shown="the backbone's named weights, else none")
    size: int = option(64, check=lambda v: v >= 32, rule=">= 32")
    frames: int = option(FRAMES, check=lambda v: v >= 1, rule=">= 1")
    fps: float = option(float(FPS), check=lambda v: v > 0, rule="> 0")
    freeze_blocks: int = option(4, check=lambda v: 0 <= v < FREEZABLE_BLOCKS, rule=f"0..{FREEZABLE_BLOCKS - 1}",
                                legacy=0)
    epochs: int = option(10, check=lambda v: v >= 1, rule=">= 1")
    batch_size: int = option(8, check=lambda v: v >= 1, rule=">= 1")
    lr: float = option(1e-3, check=lambda v: v > 0, rule="> 0")
    weight_decay: float = option(0.05, check=lambda v: v >= 0, rule=">= 0")
    warmup: int | None = option(None, check=lambda v: v >= 0, rule=">= 0", shown="5% of all steps")
    aux_envelope: float | None = option(None, check=lambda v: v >= 0 and math.isfinite(v), rule=">= 0",
                                        shown="off")
    envelope_only: bool = option(False, legacy=False)
    seed: int = option(0)
    amp: str = option("auto", choices=PRETRAIN_AMP_CHOICES)
    flip: bool = option(True)
    label_smoothing: float = option(0.1, check=lambda v: 0 <= v < 1, rule="in [0, 1)")
    dropout: float = option(0.2, check=lambda v: 0 <= v < 1, rule="in [0, 1)")

    def validate(self):
        super().validate()
        if self.envelope_only and not self.aux_envelope:
            raise FoleyError("--envelope-only trains on the envelope alone: give it a weight, --aux-envelope W > 0")


EMA_MEASURED_STEPS = 288       # the demo's optimizer steps (300 clips, batch 8, 8 epochs): where ema_decay was measured


def ema_decay_for(decay: float, total_steps: int) -> float:
    """The per-step decay a run of `total_steps` uses: `decay`, or for a run shorter than the one it
    was measured on, the faster decay that leaves the same share of the initial weights at its end
    (decay ** EMA_MEASURED_STEPS): 60 clips x 8 epochs would otherwise keep 2/3 of an untrained head."""
    return min(decay, decay ** (EMA_MEASURED_STEPS / max(1, total_steps)))


def default_warmup(total_steps: int) -> int:
    """WARMUP_FRACTION of all optimizer steps, at least 1."""
    return max(1, round(WARMUP_FRACTION * total_steps))


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
