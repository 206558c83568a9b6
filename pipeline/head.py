"""The head: an LSTM + FC network mapping per-frame inputs to a loudness curve, and its input transforms.

    features [B, T, D] (cache) ─► InputTransform ─► x [B, T, d] ─► Head ─► logits [B, T] ─► sigmoid

`Head` is an LSTM + FC network: temporal layer → FC → 256 → 64 → 1 with ReLU. Its temporal layer
(`HeadConfig.temporal`) is one of
- "lstm": the seed's network, LSTM(d → hidden, layers, batch_first), forward in time only: the
  output at frame t sees frames <= t. What every checkpoint without a "temporal" entry rebuilds to.
- "bilstm": a bidirectional LSTM (hidden per direction): frame t also sees what follows it, which
  is where an impact shows (the object stops, bounces, breaks after the sound starts).
- "conv-bilstm": two Conv1d layers over time (kernels `conv_kernels`, `conv_channels` wide, ReLU)
  before the bidirectional LSTM: short motion patterns first, their context second.
It returns logits; train with `masked_bce` (BCE-with-logits over the real frames only), optionally
plus `onset_bce`, and apply a sigmoid at inference. Padding after a clip's `length` never changes
the outputs on its real frames: the causal LSTM never reads ahead; the bidirectional one runs on
packed sequences (it never reads the padding); the convolutions see zeros in place of the padding.

`InputTransform` turns cached features into what the head reads, with statistics fitted on the
TRAIN cache only and stored in the checkpoint (export on another cache reuses the same numbers):
- "features" (default, the seed's head): per-dimension standardisation of the raw features.
- "motion-energy" (docs/learning.md, "What does make it learn", 3): z-score the features per dimension, difference frame to
  frame (frame 0 gets 0), RMS over the channels in each of 4x4 spatial cells plus one global RMS
  (17 values), log1p, standardise. Low-dimensional, so it generalises from small data.
It is an nn.Module with buffers only (no parameters), so it moves with `.to(device)`, runs on the
GPU, and can sit inside a bigger model (finetune: backbone → transform → head). Its state_dict
carries its kind and shape as extra state, so `InputTransform.from_state_dict` rebuilds it.

`rebuild_head` turns a checkpoint's parts back into (head, transform); reading a run's checkpoint
file is `pipeline.runs` (`load_head`). This module owns the network, its loss and its inputs; it
must not read or write files other than a FeatureCache it fits on, nor know about runs or options.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from pipeline.errors import FoleyError
from pipeline.options import INPUTS, TEMPORALS

DEFAULT_CHANNELS = 512          # model3d_1's last conv block; D = channels * h * w, channel-major
MOTION_CELLS = 4                # motion-energy pools the h x w grid into 4 x 4 cells (fewer if h < 4)
STD_FLOOR = 1e-6                # a dimension whose spread is below this (dead ReLU unit) is divided by 1
HEAD_PREFIX = "head."           # a model that contains the head as `.head` (finetune) saves its keys so
# On CPU, an input this many times wider than the hidden state runs layer 0 as one input GEMM +
# the recurrence (Head._lstm_split); narrower inputs (motion-energy's 17) use the fused LSTM.
SPLIT_INPUT_RATIO = 4
FIT_CHUNK = 16                  # clips per step when fitting statistics (bounds float32 copies: 16x48x25088x4 = 77 MB)


# ----------------------------------------------------------------------------- the network

@dataclass
class HeadConfig:
    """Sizes of the head. input_dim = d, what the LSTM reads (the transform's output size)."""

    input_dim: int
    hidden: int = 512
    layers: int = 2
    fc: tuple[int, ...] = (256, 64)
    dropout: float = 0.0            # between LSTM layers and after each hidden FC layer
    input: str = "features"         # the InputTransform kind the head was trained on
    temporal: str = "lstm"          # TEMPORALS; the default is the seed's (checkpoints without the key)
    conv_channels: int = 256        # conv-bilstm: width of the Conv1d front
    conv_kernels: tuple[int, ...] = (5, 3)      # conv-bilstm: kernel sizes in frames, odd (centred)

    def __post_init__(self):
        self.fc = tuple(int(n) for n in self.fc)
        self.conv_kernels = tuple(int(k) for k in self.conv_kernels)
        if self.input not in INPUTS:
            raise FoleyError(f"unknown --input {self.input!r}; choose one of: {', '.join(INPUTS)}")
        if self.temporal not in TEMPORALS:
            raise FoleyError(f"unknown --temporal {self.temporal!r}; choose one of: {', '.join(TEMPORALS)}")
        if self.input_dim < 1 or self.hidden < 1 or self.layers < 1 or any(n < 1 for n in self.fc):
            raise FoleyError(f"head sizes must be >= 1 (input_dim {self.input_dim}, hidden {self.hidden}, "
                             f"layers {self.layers}, fc {self.fc})")
        if self.conv_channels < 1 or any(k < 1 or k % 2 == 0 for k in self.conv_kernels):
            raise FoleyError(f"--conv-channels must be >= 1 and every conv kernel odd, got {self.conv_channels}, "
                             f"{self.conv_kernels}")
        if not 0.0 <= self.dropout < 1.0:
            raise FoleyError(f"--dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        """Plain JSON / weights_only-safe dict (fc as a list)."""
        d = asdict(self)
        d["fc"], d["conv_kernels"] = list(self.fc), list(self.conv_kernels)
        return d

    @property
    def bidirectional(self) -> bool:
        return self.temporal != "lstm"


class Head(nn.Module):
    """LSTM + FC: x [B, T, d] float → logits [B, T] (sigmoid gives the loudness in [0, 1])."""

    def __init__(self, config: HeadConfig):
        super().__init__()
        self.config = config
        width = config.input_dim
        if config.temporal == "conv-bilstm":
            self.conv = nn.ModuleList()
            for k in config.conv_kernels:
                self.conv.append(nn.Conv1d(width, config.conv_channels, k, padding=k // 2))
                width = config.conv_channels
        self.lstm = nn.LSTM(width, config.hidden, config.layers, batch_first=True,
                            dropout=config.dropout if config.layers > 1 else 0.0,
                            bidirectional=config.bidirectional)
        layers: list[nn.Module] = []
        width = config.hidden * (2 if config.bidirectional else 1)
        for n in config.fc:
            layers += [nn.Linear(width, n), nn.ReLU()]
            if config.dropout:
                layers.append(nn.Dropout(config.dropout))
            width = n
        layers.append(nn.Linear(width, 1))
        self.fc = nn.Sequential(*layers)

    def forward(self, x: Tensor, length: Tensor | None = None) -> Tensor:
        """x [B, T, d], length [B] real frames (None: all T are real) → logits [B, T]."""
        if self.config.bidirectional:
            h = self._bidirectional(x, length)
        elif x.device.type == "cpu" and splits_input(self.config.input_dim, self.config.hidden):
            h = self._lstm_split(x)
        else:
            h, _ = self.lstm(x)             # [B, T, hidden] (cuDNN on CUDA)
        return self.fc(h).squeeze(-1)       # [B, T]

    def _bidirectional(self, x: Tensor, length: Tensor | None) -> Tensor:
        """(Conv1d front →) bidirectional LSTM over the real frames only → [B, T, 2 * hidden]
        (zeros on the padding). The backward direction starts at each clip's last real frame."""
        b, t, _ = x.shape
        if length is None:
            length = torch.full((b,), t, dtype=torch.long, device=x.device)
        if self.config.temporal == "conv-bilstm":
            keep = frame_mask(length, t).unsqueeze(1).to(x.dtype)      # [B, 1, T]
            y = x.transpose(1, 2)                                      # [B, d, T]
            for conv in self.conv:
                y = F.relu(conv(y * keep))      # zeros, not the padding, beyond the last real frame
            x = y.transpose(1, 2)
        packed = pack_padded_sequence(x, length.clamp(1, t).cpu(), batch_first=True, enforce_sorted=False)
        h, _ = self.lstm(packed)
        return pad_packed_sequence(h, batch_first=True, total_length=t)[0]

    def _lstm_split(self, x: Tensor) -> Tensor:
        """self.lstm's exact function, computed as (one big input GEMM for layer 0) + its recurrence
        + the other layers. The fused CPU LSTM also computes the gradient with respect to the input
        features, which nothing needs: a third of the work at D = 25088 (the head step's time, split
        or fused, is what `benchmarks/train_head.py` measures).

        Under bf16 autocast only the input GEMM runs in bf16 (AMX: it is ~95% of the FLOPs); the
        recurrence and the later layers stay float32, as fast here and without bf16's rounding
        accumulating over 48 steps (oneDNN's bf16 LSTM backward was several times slower than
        float32: `benchmarks/train_head.py` measures it)."""
        lstm = self.lstm
        gates_x = F.linear(x, lstm.weight_ih_l0, lstm.bias_ih_l0 + lstm.bias_hh_l0)    # [B, T, 4H]
        with torch.autocast("cpu", enabled=False):
            return self._recurrence(gates_x.float())

    def _recurrence(self, gates_x: Tensor) -> Tensor:
        """Layer 0's recurrence over its input gates [B, T, 4H], then layers 1.. → [B, T, H]."""
        lstm, (b, t, _), hidden = self.lstm, gates_x.shape, self.config.hidden
        h = c = gates_x.new_zeros(b, hidden)
        out = []
        for step in range(t):               # PyTorch's gate order: input, forget, cell, output
            i, f, g, o = torch.addmm(gates_x[:, step], h, lstm.weight_hh_l0.t()).chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            out.append(h)
        y = torch.stack(out, 1)             # [B, T, H]
        if lstm.num_layers == 1:
            return y
        y = F.dropout(y, lstm.dropout, self.training)
        zeros = y.new_zeros(lstm.num_layers - 1, b, hidden)
        rest = [getattr(lstm, f"{name}_l{k}") for k in range(1, lstm.num_layers)
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        return torch.lstm(y, (zeros, zeros), rest, True, lstm.num_layers - 1, lstm.dropout, self.training,
                          False, True)[0]        # layers 1.. as nn.LSTM runs them (has_biases, batch_first)


def splits_input(input_dim: int, hidden: int) -> bool:
    """Whether a CPU head runs layer 0 as one input GEMM + recurrence (Head._lstm_split)."""
    return input_dim > SPLIT_INPUT_RATIO * hidden


def frame_mask(length: Tensor, frames: int) -> Tensor:
    """[B] real-frame counts → bool [B, T], True on real frames."""
    return torch.arange(frames, device=length.device)[None, :] < length[:, None]


def masked_bce(logits: Tensor, target: Tensor, length: Tensor, reduction: str = "mean") -> Tensor:
    """BCE-with-logits over the real frames only.

    logits, target [B, T] (target in [0, 1]); length [B]. reduction "mean": the frame-weighted mean
    over all real frames of the batch (the same number as pipeline.metrics' `bce`); "sum": their sum.
    Computed in float32 whatever the autocast dtype of the logits.
    """
    mask = frame_mask(length, logits.shape[1])
    loss = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    total = (loss * mask).sum()
    if reduction == "sum":
        return total
    return total / mask.sum().clamp(min=1)


def onset_frames(target: Tensor, length: Tensor, tolerance: int = 1) -> Tensor:
    """[B, T] bool: within ±tolerance frames of an onset of the target envelope, picked by the
    metrics' own peak picker (pipeline.metrics.onsets) on each clip's real frames."""
    from pipeline.metrics import onsets

    marks = torch.zeros(target.shape, dtype=torch.bool)
    curves, lengths = target.detach().float().cpu().numpy(), length.cpu().tolist()
    for i, n in enumerate(lengths):
        for f in onsets(curves[i, :n])[0]:
            marks[i, max(0, f - tolerance):min(n, f + tolerance + 1)] = True
    return marks.to(target.device)


def onset_bce(logits: Tensor, target: Tensor, length: Tensor, tolerance: int = 1) -> Tensor:
    """The onset-aware term: BCE of "a target onset lies within ±tolerance frames", read from the
    logits max-pooled over ±tolerance frames (a peak one frame early or late is not penalised),
    positives weighted by negatives / positives over the batch's real frames (onsets are rare:
    ~5% of frames). Mean over the real frames; float32."""
    mask = frame_mask(length, logits.shape[1])
    onset = onset_frames(target, length, tolerance) & mask
    pooled = F.max_pool1d(logits.float().masked_fill(~mask, -1e4).unsqueeze(1), 2 * tolerance + 1, 1,
                          tolerance).squeeze(1)
    pos = onset.sum()
    weight = (mask.sum() - pos).clamp(min=1) / pos.clamp(min=1)
    loss = F.binary_cross_entropy_with_logits(pooled, onset.float(), pos_weight=weight, reduction="none")
    return (loss * mask).sum() / mask.sum().clamp(min=1)


def slope_mse(logits: Tensor, target: Tensor, length: Tensor) -> Tensor:
    """The slope term: mean squared difference between the frame-to-frame changes of the predicted
    envelope (sigmoid of the logits) and of the target, over pairs of real frames (a gradient
    difference loss, Mathieu et al. 2016). The BCE scores each frame alone, so a prediction that
    blurs two impacts 2-3 frames apart into one bump costs it little; the dip between them and the
    second rise are changes, and this term prices them. float32."""
    mask = frame_mask(length, logits.shape[1])
    pairs = (mask[:, 1:] & mask[:, :-1]).float()
    error = torch.sigmoid(logits.float()).diff(dim=1) - target.float().diff(dim=1)
    return (error * error * pairs).sum() / pairs.sum().clamp(min=1)


class HeadLoss:
    """The training loss: masked_bce on the envelope + onset_weight x onset_bce + slope_weight x
    slope_mse (both 0: the seed's loss)."""

    def __init__(self, onset_weight: float = 0.0, slope_weight: float = 0.0):
        self.onset_weight = float(onset_weight)
        self.slope_weight = float(slope_weight)

    def __call__(self, logits: Tensor, target: Tensor, length: Tensor) -> Tensor:
        loss = masked_bce(logits, target, length)
        if self.onset_weight:
            loss = loss + self.onset_weight * onset_bce(logits, target, length)
        if self.slope_weight:
            loss = loss + self.slope_weight * slope_mse(logits, target, length)
        return loss


# ----------------------------------------------------------------------------- input transforms

def feature_grid(dim: int, cache_config: dict | None = None) -> tuple[int, int, int]:
    """(channels, h, w) of channel-major features of size `dim` (D = channels * h * w, square grid).

    The channel count comes from the cache's backbone (its registry spec) when known, else 512.
    """
    channels = DEFAULT_CHANNELS
    name = (cache_config or {}).get("backbone")
    if name:
        try:
            from pipeline.backbones import get_spec
            channels = int(get_spec(name).channels)
        except (ImportError, FoleyError):       # an unregistered backbone: assume model3d_1's layout
            pass
    side = math.isqrt(dim // channels) if dim % channels == 0 else 0
    if side < 1 or channels * side * side != dim:
        raise FoleyError(f"--input motion-energy needs features laid out as [channels*h*w] with a square "
                         f"grid ({channels} channels); this cache has D = {dim}: use --input features")
    return channels, side, side


def _valid_rows(x: Tensor, length: Tensor) -> Tensor:
    """x [B, T, k] → [n_valid_frames, k] (the real frames only)."""
    return x[frame_mask(length, x.shape[1])]


class _RunningMoments:
    """Per-column mean and variance over many row blocks (Chan et al.'s parallel update, float64 totals)."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, None, None

    def update(self, rows: Tensor):
        n_b = rows.shape[0]
        if n_b == 0:
            return
        mean_b = rows.mean(0).double()
        m2_b = ((rows - mean_b.to(rows.dtype)) ** 2).sum(0).double()
        if self.mean is None:
            self.n, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta ** 2 * (self.n * n_b / n)
        self.n = n

    def result(self) -> tuple[Tensor, Tensor]:
        if not self.n:
            raise FoleyError("cannot fit the input transform: the training cache has no real frames")
        std = (self.m2 / self.n).sqrt()
        std = torch.where(std < STD_FLOOR, torch.ones_like(std), std)
        return self.mean.float(), std.float()


class InputTransform(nn.Module):
    """Cached features [B, T, D] → head input [B, T, out_dim], float32, on the features' device.

    t = InputTransform("motion-energy", dim=D, cache_config=cache.config)
    t.fit(train_cache)            # statistics from the training cache only
    x = t.apply(features)         # = t(features); any float dtype in, float32 out
    state = t.state_dict()        # tensors + extra state {kind, dim, channels, h, w, cells, center, fitted}
    t2 = InputTransform.from_state_dict(state)

    center (features only): subtract each clip's mean feature over its real frames before standardising
    (apply's `length`; without it every frame counts, as for transforms saved before lengths were used:
    their state has no "center_frames" and keeps centring over all T frames, padding included).
    What stays the same through a clip (the room, the object's look) goes; what changes (motion,
    contact, deformation) stays. With a few hundred clips of one renderer this is what lets the
    seed's head carry over to clips that look different (docs/learning.md: measured with and without).
    """

    def __init__(self, kind: str = "features", dim: int = 1, cache_config: dict | None = None,
                 grid: tuple[int, int, int] | None = None, cells: int = MOTION_CELLS, center: bool = False):
        super().__init__()
        if kind not in INPUTS:
            raise FoleyError(f"unknown --input {kind!r}; choose one of: {', '.join(INPUTS)}")
        if center and kind != "features":
            raise FoleyError("--center-clips applies to --input features only")
        self.kind, self.dim, self.center = kind, int(dim), bool(center)
        self.center_frames = "real"         # "all": a transform saved before centring read the lengths
        self.fitted = False
        self.register_buffer("mean", torch.zeros(self.dim))     # per-dimension feature statistics [D]
        self.register_buffer("std", torch.ones(self.dim))
        if kind == "motion-energy":
            self.channels, self.h, self.w = grid or feature_grid(self.dim, cache_config)
            self.cells = min(int(cells), self.h, self.w)
            self.out_dim = self.cells * self.cells + 1
            self.register_buffer("out_mean", torch.zeros(self.out_dim))   # after log1p [out_dim]
            self.register_buffer("out_std", torch.ones(self.out_dim))
        else:
            self.channels, self.h, self.w, self.cells = self.dim, 1, 1, 0
            self.out_dim = self.dim

    # -- describing itself (nn.Module extra state rides in state_dict, weights_only-safe)
    def get_extra_state(self) -> dict:
        return {"kind": self.kind, "dim": self.dim, "channels": self.channels, "h": self.h, "w": self.w,
                "cells": self.cells, "out_dim": self.out_dim, "center": self.center, "fitted": self.fitted,
                "center_frames": self.center_frames}

    def set_extra_state(self, state: dict):
        mine = self.get_extra_state()
        for key in ("kind", "dim", "out_dim", "center"):
            if state.get(key, False) != mine[key]:      # transforms saved before `center` existed: False
                raise FoleyError(f"input transform state is for {key}={state[key]!r}, this one has {mine[key]!r}")
        self.fitted = bool(state["fitted"])
        self.center_frames = state.get("center_frames", "all")

    @classmethod
    def from_state_dict(cls, state: dict) -> "InputTransform":
        extra = state["_extra_state"]
        grid = (int(extra["channels"]), int(extra["h"]), int(extra["w"])) if extra["kind"] == "motion-energy" else None
        t = cls(extra["kind"], int(extra["dim"]), grid=grid, cells=int(extra["cells"]) or MOTION_CELLS,
                center=bool(extra.get("center", False)))
        t.load_state_dict(state)
        return t

    # -- the transform
    def _motion(self, x: Tensor) -> Tensor:
        """x [B, T, D] → log1p of the RMS change per cell + global [B, T, cells^2 + 1]."""
        z = (x.float() - self.mean) / self.std
        diff = torch.zeros_like(z)
        diff[:, 1:] = z[:, 1:] - z[:, :-1]                      # frame 0 has no predecessor: no motion
        b, t = diff.shape[:2]
        sq = diff.reshape(b * t, self.channels, self.h, self.w).square()   # reshape: a backbone map may be strided
        per_pos = sq.mean(1, keepdim=True)                      # mean over channels [BT, 1, h, w]
        cells = F.adaptive_avg_pool2d(per_pos, self.cells).flatten(1)       # [BT, cells^2]
        total = per_pos.flatten(1).mean(1, keepdim=True)        # every channel and position [BT, 1]
        return torch.log1p(torch.cat([cells, total], 1).sqrt()).view(b, t, self.out_dim)

    def _centered(self, x: Tensor, length: Tensor | None = None) -> Tensor:
        """[B, T, D] float32, minus each clip's mean over its real frames when `center` (so the padding
        never changes the real frames' values; all T frames without `length` or for a transform saved
        before lengths were used)."""
        x = x.float()
        if not self.center:
            return x
        if length is None or self.center_frames == "all":
            return x - x.mean(1, keepdim=True)
        keep = frame_mask(length.to(x.device), x.shape[1]).unsqueeze(-1).to(x.dtype)     # [B, T, 1]
        return x - (x * keep).sum(1, keepdim=True) / keep.sum(1, keepdim=True).clamp(min=1)

    def apply(self, features: Tensor, length: Tensor | None = None) -> Tensor:
        """features [B, T, D] (float16/32), length [B] real frames (None: all T) → [B, T, out_dim] float32."""
        if features.shape[-1] != self.dim:
            raise FoleyError(f"input transform expects D = {self.dim} features, got {features.shape[-1]}")
        if self.kind == "features":
            return (self._centered(features, length) - self.mean) / self.std
        return (self._motion(features) - self.out_mean) / self.out_std

    def forward(self, features: Tensor, length: Tensor | None = None) -> Tensor:
        return self.apply(features, length)

    # -- fitting on the training data
    @torch.no_grad()
    def fit(self, source, progress: bool = False) -> "InputTransform":
        """Fit the statistics on the real frames of `source`: a FeatureCache (the TRAIN cache), or
        preloaded (features [N, T, D], length [N]) tensors. Runs on this module's device."""
        mean, std = self._moments(source, self._centered, progress, "fitting input statistics")
        self.mean.copy_(mean)
        self.std.copy_(std)
        if self.kind == "motion-energy":        # a second pass: statistics of the 17 values themselves
            out_mean, out_std = self._moments(source, lambda x, _: self._motion(x), progress,
                                              "fitting motion-energy statistics")
            self.out_mean.copy_(out_mean)
            self.out_std.copy_(out_std)
        self.fitted = True
        return self

    def _moments(self, source, values, progress: bool, desc: str) -> tuple[Tensor, Tensor]:
        """Per-column (mean, std) of values(features chunk, length) [B, T, k] over the real frames of `source`."""
        moments = _RunningMoments()
        for x, length in self._chunks(source, progress, desc):
            moments.update(_valid_rows(values(x, length), length))
        return moments.result()

    def _chunks(self, source, progress: bool, desc: str) -> Iterable[tuple[Tensor, Tensor]]:
        from tqdm import tqdm

        if isinstance(source, (tuple, list)):
            yield from self._split(*source)
            return
        for k in tqdm(range(source.n_shards), desc=desc, unit="shard", disable=not progress, leave=False):
            shard = source.read_shard(k)
            yield from self._split(torch.from_numpy(shard["features"]),
                                   torch.from_numpy(shard["length"].astype("int64")))

    def _split(self, features: Tensor, length: Tensor) -> Iterable[tuple[Tensor, Tensor]]:
        """features [N, T, D], length [N] → FIT_CHUNK clips at a time, on this module's device."""
        device = self.mean.device
        for lo in range(0, features.shape[0], FIT_CHUNK):
            yield features[lo:lo + FIT_CHUNK].to(device), length[lo:lo + FIT_CHUNK].to(device)


# ----------------------------------------------------------------------------- from a checkpoint

def rebuild_head(head_config: dict, model_state: dict, transform_state: dict,
                 source: str | Path = "checkpoint") -> tuple[Head, InputTransform]:
    """(head, transform) from a checkpoint's parts: HeadConfig.to_dict(), the model's state_dict
    (the Head's own, or a bigger model's whose `head.*` keys are the head: finetune's EndToEnd)
    and InputTransform.state_dict(). `source` names the checkpoint in errors. Reading the file is
    `pipeline.runs.load_head`'s job."""
    head = Head(HeadConfig(**head_config))
    state = model_state
    if any(k.startswith(HEAD_PREFIX) for k in state):      # a bigger model (finetune): its head.* part
        state = {k[len(HEAD_PREFIX):]: v for k, v in state.items() if k.startswith(HEAD_PREFIX)}
    try:
        head.load_state_dict(state)
        transform = InputTransform.from_state_dict(transform_state)
    except (RuntimeError, KeyError) as e:
        raise FoleyError(f"{source}: head weights do not match its head_config: {e}") from e
    return head, transform

