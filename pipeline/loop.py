"""The training loop shared by train-head, finetune and pretrain: schedule, steps, validation, checkpoints, resume.

Read top to bottom: the pure helpers (`get_lr`, `evaluate_model`, `gather_predictions`), then
`fit` and the named steps it is made of (`_restore`, `_seed_ranks`, `_train_epoch`, `_validate`,
`_save_epoch`).

Reusing the loop (finetune, or any model that maps a batch to per-frame logits)
-------------------------------------------------------------------------------
`fit(model, optimizer, train_batches, val_batches, run_dir=..., ...)` owns everything that is not
the model or the data: warmup + cosine schedule, AdamW stepping, gradient clipping, autocast
(+ GradScaler for fp16), DistributedDataParallel, validation with pipeline.metrics every epoch,
early stopping, a tqdm bar, `config.json`, `metrics.jsonl`, atomic `checkpoint-last.pt` /
`checkpoint-best.pt` (`pipeline.runs.RunCheckpoint`), and resume (model, optimizer, scaler, step,
RNG states per rank, history). The caller provides:

- `model`: an nn.Module already on `dist.device`; `model(batch["inputs"], batch["length"]) -> logits
  [B, T]` (the lengths let a bidirectional head stop at each clip's last real frame).
  fit wraps it in DDP under torchrun and saves `model.state_dict()` as the checkpoint's model. A
  model that contains the head as its `.head` submodule (finetune: backbone → transform → head)
  keeps `pipeline.runs.load_head` working on its checkpoints.
- `optimizer`: any torch optimizer; each param group's "lr" is its PEAK lr (e.g. a separate
  backbone lr). fit stores it as group["base_lr"] and sets group["lr"] = get_lr(step, ...) scaled
  to that peak every step.
- `train_batches`: `.set_epoch(epoch)`, `len()` = batches per epoch on this rank (the same on
  every rank, or DDP hangs), iteration yields dicts {"inputs": Tensor (or a tuple/dict of them),
  "target": [B, T] float in [0, 1], "length": [B] int}; CPU tensors (pinned is best) or already on
  the device. The order must be a function of (seed, epoch) so a resumed run sees the same data.
- `val_batches`: the same, plus "index": [B] int64 clip indices (global, 0..N-1); each rank may
  hold any share of the validation set, fit gathers the predictions and scores them all at once.
- `description`: a `pipeline.runs.RunDescription` (what is trained: head config, transform state,
  fingerprint, ...), put into every checkpoint; `config`: the resolved run config (config.json and
  the checkpoint's config).
- `resume`: the checkpoint to continue (`pipeline.runs.prepare_run_dir(run_dir, resume=True, ...)`
  returns it), else None. Build the model and optimizer as for a fresh run; fit restores their
  states. prepare_run_dir also enforces --resume / --overwrite.
The loss is `loss(logits, target, length)`, by default `masked_bce` (pipeline.head) on the real frames;
validation always scores `masked_bce`, so runs trained with other losses compare on one number.
`augment(batch) -> batch` (optional) changes each training batch on the device (e.g. time shifts).
`average` (optional, a `WeightEMA`): the weights validated and saved as the checkpoint's model are
its moving average of the trained ones; the checkpoint keeps the trained ones as `train_model`,
which a resume continues from.

A model with other outputs than per-frame logits (pretrain: class logits and an envelope) gives an
`objective` instead of `loss`: an object with `train_loss(outputs, batch) -> (loss, weight)` (the
epoch's train loss is the weight-averaged loss), `validate(model, batches, dist, amp) -> (value,
record)` (every rank's share of the validation clips scored together; the run keeps as best the
epoch of the lowest value, and the record's val_* entries go to metrics.jsonl) and
`clip(model, max_norm)` (gradient clipping). `EnvelopeObjective` is the default one.

This module trains; it must not choose options, read caches or decode videos (its callers do),
and it writes the run directory only through `pipeline.runs`.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.distributed import Distributed
from pipeline.head import masked_bce
from pipeline.runs import (CKPT_BEST, CKPT_LAST, RunCheckpoint, RunDescription, json_plain, write_config,
                           write_metrics)
from pipeline.runtime import autocast, rng_state, seed_everything, set_rng_state

MIN_LR_RATIO = 0.1              # cosine decays to lr / 10 (nanoGPT's choice)
GRAD_CLIP = 1.0                 # max global gradient norm
ADAM_BETAS = (0.9, 0.999)
POSTFIX_EVERY = 20              # steps between progress-bar loss updates (each one syncs a GPU)
RESUME_SEED_STRIDE = 7919       # a resume without the ranks' RNG states seeds seed + rank + this * epoch

# Per-epoch validation metrics copied into metrics.jsonl (as val_<name>), from pipeline.metrics.
EPOCH_METRICS = ("bce", "mae", "pearson", "peak_within_1", "peak_error_frames", "onset_f1", "seed_score")


# ----------------------------------------------------------------------------- pure helpers

def get_lr(step: int, warmup: int, total: int, lr: float, min_lr: float) -> float:
    """Learning rate at optimizer step `step` (0-based): linear warmup over `warmup` steps to `lr`,
    then cosine decay to `min_lr` at step `total`, `min_lr` after it."""
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    if step >= total:
        return min_lr
    ratio = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def to_device(x, device: torch.device):
    """Tensors (also inside dicts, tuples, lists) to `device`, without blocking."""
    if isinstance(x, Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(to_device(v, device) for v in x)
    return x


@torch.no_grad()
def evaluate_model(model: nn.Module, batches, device: torch.device, amp: str = "off",
                   progress: bool = False) -> dict:
    """Run `model` over `batches` (this rank's share of a clip set) in eval mode, under the autocast
    `amp` names (runtime.autocast); what validation scores every epoch, and what export predicts.

    Returns {"loss_sum": summed masked BCE, "frames": real frames, "index" [n] int64 clip indices,
    "pred" [n, T] float32 probabilities per clip, "target" [n, T], "length" [n]} as numpy arrays,
    in the batches' order (`gather_predictions` puts several ranks' in clip order).
    """
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    loss_sum, frames = 0.0, 0
    index, pred, target, length = [], [], [], []
    for batch in tqdm(batches, desc="predict", unit="batch", disable=not progress, leave=False):
        batch = to_device(batch, device)
        with autocast(device, amp):
            logits = model(batch["inputs"], batch["length"])
        loss_sum += float(masked_bce(logits, batch["target"], batch["length"], reduction="sum"))
        frames += int(batch["length"].sum())
        index.append(batch["index"].cpu())
        pred.append(torch.sigmoid(logits.float()).cpu())
        target.append(batch["target"].float().cpu())
        length.append(batch["length"].cpu())
    model.train(was_training)
    cat = lambda xs, shape: torch.cat(xs).numpy() if xs else np.zeros(shape, np.float32)  # noqa: E731
    return {"loss_sum": loss_sum, "frames": frames, "index": cat(index, (0,)).astype(np.int64),
            "pred": cat(pred, (0, 0)), "target": cat(target, (0, 0)), "length": cat(length, (0,)).astype(np.int64)}


def gather_predictions(local: dict, dist: Distributed) -> dict:
    """evaluate_model results of all ranks → one dict in clip order (every rank gets it)."""
    parts = dist.gather(local)
    out = {"loss_sum": sum(p["loss_sum"] for p in parts), "frames": sum(p["frames"] for p in parts)}
    parts = [p for p in parts if len(p["index"])] or parts[:1]     # a rank may hold no val batch
    order = np.argsort(np.concatenate([p["index"] for p in parts]), kind="stable")
    for key in ("index", "pred", "target", "length"):
        out[key] = np.concatenate([p[key] for p in parts])[order]
    return out


@dataclass
class EnvelopeObjective:
    """Per-frame envelope logits [B, T]: trained with `loss(logits, target, length)`, validated with
    masked BCE and pipeline.metrics (the val loss selects the best epoch)."""

    loss: Callable[[Tensor, Tensor, Tensor], Tensor] = masked_bce

    def train_loss(self, logits: Tensor, batch: dict) -> tuple[Tensor, Tensor]:
        return self.loss(logits, batch["target"], batch["length"]), batch["length"].sum()

    def validate(self, model: nn.Module, batches, dist: Distributed, amp: str) -> tuple[float, dict]:
        from pipeline.metrics import evaluate

        val = gather_predictions(evaluate_model(model, batches, dist.device, amp), dist)
        val_loss = val["loss_sum"] / max(1, val["frames"])
        record = {"val_loss": val_loss, "val_clips": len(val["index"])}
        if dist.is_main:
            metrics = evaluate(val["pred"], val["target"], val["length"])
            record.update({f"val_{k}": metrics[k] for k in EPOCH_METRICS})
        return val_loss, record

    def clip(self, model: nn.Module, max_norm: float):
        nn.utils.clip_grad_norm_(model.parameters(), max_norm)


# ----------------------------------------------------------------------------- the loop

@dataclass
class _Progress:
    """What a checkpoint carries about where training stands (restored on resume)."""

    epoch: int = 0                  # epochs done
    step: int = 0                   # optimizer steps done
    best_val: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list = field(default_factory=list)


@dataclass
class _Trainer:
    """One run's fixed pieces, handed to the steps of `fit`."""

    model: nn.Module                # what runs the batches (DDP-wrapped under torchrun)
    raw_model: nn.Module            # what is saved and clipped
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    dist: Distributed
    amp: str
    warmup_steps: int
    total_steps: int
    grad_clip: float
    min_lr_ratio: float
    objective: EnvelopeObjective        # or any object with its three methods (module docstring)
    augment: Callable[[dict], dict] | None
    average: "WeightEMA | None" = None

    def kept_model(self) -> nn.Module:
        """What is validated and saved: the trained model, or a copy holding the average of its weights."""
        return self.raw_model if self.average is None else self.average.model(self.raw_model)


class WeightEMA:
    """An exponential moving average of a model's weights: after every optimizer step
    avg <- decay * avg + (1 - decay) * weights. It starts from the initial weights, without bias
    correction, so a short run's average keeps a share decay ** steps of them (a shrinkage toward
    the start that a late, overfit epoch cannot undo). Integer buffers are copied, not averaged."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = float(decay)
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module):
        for k, v in model.state_dict().items():
            avg = self.shadow[k]
            if avg.is_floating_point():
                avg.lerp_(v.detach(), 1.0 - self.decay)
            else:
                avg.copy_(v)

    def model(self, model: nn.Module) -> nn.Module:
        """A copy of `model` holding the averaged weights (the trained model is left as it is)."""
        kept = copy.deepcopy(model)
        kept.load_state_dict(self.shadow)
        return kept

    def load(self, state: dict):
        """Continue from a checkpoint's averaged weights."""
        for k, v in state.items():
            self.shadow[k].copy_(v)


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, train_batches, val_batches, *,
        run_dir: Path, epochs: int, warmup_steps: int, dist: Distributed, description: RunDescription,
        config: dict, amp: str = "off", grad_clip: float = GRAD_CLIP, min_lr_ratio: float = MIN_LR_RATIO,
        early_stop: int = 0, seed: int = 0, resume: RunCheckpoint | None = None, progress: bool = True,
        loss: Callable[[Tensor, Tensor, Tensor], Tensor] = masked_bce,
        augment: Callable[[dict], dict] | None = None, objective=None, sync_buffers: bool = False,
        average: WeightEMA | None = None) -> dict:
    """Train `model` for `epochs`, validating and checkpointing every epoch (see the module docstring).
    objective: what the model is trained and validated on (default: EnvelopeObjective(loss)).
    sync_buffers: DDP sends rank 0's buffers (BatchNorm statistics) every forward (a head has none).

    Returns {"run_dir", "epochs_run", "best_epoch", "best_val_loss", "best_metrics",
    "last_metrics", "stopped_early", "seconds"} (the same on every rank).
    """
    run_dir, device = Path(run_dir), dist.device
    config = json_plain(config)
    for group in optimizer.param_groups:
        group.setdefault("base_lr", group["lr"])
    t = _Trainer(model=model, raw_model=model, optimizer=optimizer,
                 scaler=torch.amp.GradScaler(device.type, enabled=amp == "fp16"), dist=dist, amp=amp,
                 warmup_steps=warmup_steps, total_steps=epochs * len(train_batches), grad_clip=grad_clip,
                 min_lr_ratio=min_lr_ratio, objective=objective or EnvelopeObjective(loss), augment=augment,
                 average=average)
    state = _restore(t, resume)
    if dist.enabled:
        t.model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None, forward_sync_buffers=sync_buffers)
    if dist.is_main:                        # the run's record: config, and metrics up to the checkpoint
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(run_dir, config)
        write_metrics(run_dir, state.history)
    _seed_ranks(dist, resume, seed, state.epoch)

    stopped_early = early_stop > 0 and state.bad_epochs >= early_stop
    t_start = time.perf_counter()
    for epoch in range(state.epoch, epochs):
        if stopped_early:
            break
        t0 = time.perf_counter()
        train_loss, samples, train_seconds = _train_epoch(t, train_batches, state, epoch, epochs, progress)
        kept = t.kept_model()               # validated and saved: with averaging, one copy of the average
        val_loss, record = _validate(t, kept, val_batches)
        improved = val_loss < state.best_val
        if improved:
            state.best_val, state.best_epoch, state.bad_epochs = val_loss, epoch + 1, 0
        else:
            state.bad_epochs += 1
        stopped_early = early_stop > 0 and state.bad_epochs >= early_stop
        record = {"epoch": epoch + 1, "train_loss": train_loss, **record}
        record.update(seconds=round(time.perf_counter() - t0, 3), train_seconds=round(train_seconds, 3),
                      samples_per_s=round(samples / train_seconds, 2) if train_seconds else None,
                      lr=optimizer.param_groups[0]["lr"], step=state.step, best=improved)
        record = dist.broadcast(record)
        state.history.append(record)
        state.epoch = epoch + 1
        _save_epoch(t, kept, state, run_dir, description, config, val_loss, record, improved)

    best = next((h for h in state.history if h["epoch"] == state.best_epoch), None)
    return {"run_dir": str(run_dir), "epochs_run": len(state.history), "best_epoch": state.best_epoch,
            "best_val_loss": state.best_val if best is not None else None, "best_metrics": best,
            "last_metrics": state.history[-1] if state.history else None, "stopped_early": stopped_early,
            "seconds": round(time.perf_counter() - t_start, 2)}


def _restore(t: _Trainer, resume: RunCheckpoint | None) -> _Progress:
    """A fresh run's progress, or the checkpoint's, with model / optimizer / scaler states loaded."""
    if resume is None:
        return _Progress()
    if t.average is not None and resume.train_model is not None:
        t.average.load(resume.model)                # the checkpoint's model is the average
        t.raw_model.load_state_dict(resume.train_model)
    else:
        t.raw_model.load_state_dict(resume.model)
    t.optimizer.load_state_dict(resume.optimizer)
    t.scaler.load_state_dict(resume.scaler)
    return _Progress(epoch=int(resume.epoch), step=int(resume.step), best_val=float(resume.best_val_loss),
                     best_epoch=int(resume.best_epoch), bad_epochs=int(resume.bad_epochs),
                     history=list(resume.history))


def _seed_ranks(dist: Distributed, resume: RunCheckpoint | None, seed: int, start_epoch: int):
    """Each rank its own dropout stream: the checkpoint's RNG states when it has this world size's."""
    if resume is not None and len(resume.rng) == dist.world_size:
        set_rng_state(resume.rng[dist.rank], dist.device)
    elif resume is None:
        seed_everything(seed + dist.rank)
    else:
        seed_everything(seed + dist.rank + RESUME_SEED_STRIDE * start_epoch)


def _train_epoch(t: _Trainer, batches, state: _Progress, epoch: int, epochs: int,
                 progress: bool) -> tuple[float, int, float]:
    """One epoch of optimizer steps → (train loss over every rank's real frames, clips, seconds)."""
    from tqdm import tqdm

    device, t0 = t.dist.device, time.perf_counter()
    t.model.train()
    batches.set_epoch(epoch)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    frames = torch.zeros((), dtype=torch.float64, device=device)      # the losses' weights (real frames)
    samples = 0
    bar = tqdm(batches, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=False,
               disable=not (progress and t.dist.is_main))
    for i, batch in enumerate(bar):
        batch = to_device(batch, device)
        if t.augment is not None:
            batch = t.augment(batch)
        lr_factor = get_lr(state.step, t.warmup_steps, t.total_steps, 1.0, t.min_lr_ratio)
        for group in t.optimizer.param_groups:
            group["lr"] = group["base_lr"] * lr_factor
        with autocast(device, t.amp):
            outputs = t.model(batch["inputs"], batch["length"])
        loss, weight = t.objective.train_loss(outputs, batch)
        t.scaler.scale(loss).backward()
        if t.grad_clip > 0:
            t.scaler.unscale_(t.optimizer)
            t.objective.clip(t.raw_model, t.grad_clip)
        t.scaler.step(t.optimizer)
        t.scaler.update()
        t.optimizer.zero_grad(set_to_none=True)
        if t.average is not None:
            t.average.update(t.raw_model)
        loss_sum += loss.detach().double() * weight
        frames += weight
        samples += int(batch["length"].shape[0])
        state.step += 1
        if i % POSTFIX_EVERY == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    train_loss = t.dist.sum(float(loss_sum)) / max(1.0, t.dist.sum(float(frames)))
    return train_loss, int(t.dist.sum(samples)), time.perf_counter() - t0


def _validate(t: _Trainer, kept: nn.Module, batches) -> tuple[float, dict]:
    """Every rank its share, scored together → (the value the best epoch is chosen on, val record)."""
    return t.objective.validate(kept, batches, t.dist, t.amp)


def _save_epoch(t: _Trainer, kept: nn.Module, state: _Progress, run_dir: Path, description: RunDescription,
                config: dict, val_loss: float, record: dict, improved: bool):
    """`kept` (the trained model, or its weight average) in the epoch's checkpoint (atomic; best
    renamed in before last, so a kill between re-runs this epoch; best is a hard link to the same
    bytes: a 25088-d head with AdamW state is ~660 MB), then metrics.jsonl."""
    rngs = t.dist.gather(rng_state(t.dist.device))
    if t.dist.is_main:
        ckpt = RunCheckpoint(
            description=description, model=kept.state_dict(), optimizer=t.optimizer.state_dict(),
            scaler=t.scaler.state_dict(), epoch=state.epoch, step=state.step, val_loss=val_loss, metrics=record,
            best_val_loss=state.best_val, best_epoch=state.best_epoch, bad_epochs=state.bad_epochs,
            history=state.history, rng=rngs, config=config, world_size=t.dist.world_size,
            train_model=None if t.average is None else t.raw_model.state_dict())
        ckpt.write(run_dir / CKPT_LAST, also=run_dir / CKPT_BEST if improved else None)
        write_metrics(run_dir, state.history)
    t.dist.barrier()
