"""Model helpers shared by the tests: model3d_1's published checkpoint layout written from
docs/model3d_1.md, random checkpoints in that layout, an independent functional
reference of the network, toy clips, and a pickle payload that proves whether a loader runs code.

A library, not a test module: tests import from here, never from each other.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.backbones import IMAGENET_MEAN, IMAGENET_STD

P = "module.conv_column."
BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

# The 79 entries of the published checkpoint (layout doc, "Checkpoint file").
LAYOUT_TABLE: list[tuple[str, list[int]]] = []
# (block, conv idx, bn idx, c_in, c_out, kernel, stride, padding): layout doc, "Architecture"
CONV_LAYERS = [
    ("block1", 0, 1, 3, 32, (3, 5, 5), (1, 2, 2), (1, 2, 2)),
    ("block2", 0, 1, 32, 64, (3, 3, 3), (1, 1, 1), (1, 1, 1)),
    ("block2", 3, 4, 64, 128, (3, 3, 3), (1, 2, 2), (1, 1, 1)),
    ("block3", 0, 1, 128, 128, (3, 3, 3), (1, 1, 1), (1, 1, 1)),
    ("block3", 3, 4, 128, 128, (3, 3, 3), (1, 1, 1), (1, 1, 1)),
    ("block3", 6, 7, 128, 256, (3, 3, 3), (1, 2, 2), (1, 1, 1)),
    ("block4", 0, 1, 256, 256, (3, 3, 3), (1, 1, 1), (1, 1, 1)),
    ("block4", 3, 4, 256, 256, (3, 3, 3), (1, 1, 1), (1, 1, 1)),
    ("block4", 6, 7, 256, 512, (3, 3, 3), (1, 2, 2), (1, 1, 1)),
    ("block5", 0, 1, 512, 512, (3, 3, 3), (1, 1, 1), (1, 1, 1)),
    ("block5", 3, 4, 512, 512, (3, 3, 3), (1, 2, 2), (1, 1, 1)),
]
for _blk, _ci, _bi, _cin, _cout, _k, _s, _p in CONV_LAYERS:
    LAYOUT_TABLE += [(f"{P}{_blk}.{_ci}.weight", [_cout, _cin, *_k]), (f"{P}{_blk}.{_ci}.bias", [_cout])]
    LAYOUT_TABLE += [(f"{P}{_blk}.{_bi}.{sfx}", [] if sfx == "num_batches_tracked" else [_cout]) for sfx in BN_SUFFIXES]
LAYOUT_TABLE += [("module.clf_layers.0.weight", [174, 512]), ("module.clf_layers.0.bias", [174])]


def published_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random, well-scaled tensors in the published layout (incl. a fake 174-class classifier)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in LAYOUT_TABLE:
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1234, dtype=torch.long)
        elif len(shape) == 5:  # conv weight, He-scaled so activations neither vanish nor explode
            fan_in = math.prod(shape[1:])
            state[key] = torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_in)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith("weight") and "clf" not in key:  # BN gamma
            state[key] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:  # biases, BN beta, running_mean, classifier
            state[key] = 0.1 * torch.randn(shape, generator=g)
    return state


def write_published(path: Path, state: dict) -> Path:
    torch.save({"epoch": 7, "arch": "Conv4Col", "state_dict": state, "best_loss": 3.25}, path)
    return path


def reference_feature_map(state: dict, x: torch.Tensor, time_pool: bool = False) -> torch.Tensor:
    """[B, 3, T, H, W] -> [B, 512, T', h, w] with F.conv3d / F.batch_norm / relu from the layout table."""
    for blk, ci, bi, _cin, _cout, _k, stride, padding in CONV_LAYERS:
        c, b = f"{P}{blk}.{ci}.", f"{P}{blk}.{bi}."
        x = F.conv3d(x, state[c + "weight"], state[c + "bias"], stride=stride, padding=padding)
        x = F.batch_norm(x, state[b + "running_mean"], state[b + "running_var"], state[b + "weight"],
                         state[b + "bias"], training=False, eps=1e-5)
        x = F.relu(x)
        if time_pool and (blk, ci) == ("block2", 3):
            x = F.avg_pool3d(x, (3, 1, 1), stride=(2, 1, 1), padding=(1, 0, 0))
    return x


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def toy_clips(n: int, frames: int = 8, size: int = 64, seed: int = 0) -> torch.Tensor:
    """[n, 3, T, S, S] ImageNet-normalised clips: a coloured square moving over a flat background."""
    g = torch.Generator().manual_seed(seed)
    clips = []
    side = size // 4
    for _ in range(n):
        x = torch.rand(3, 1, 1, 1, generator=g).expand(3, frames, size, size).clone()
        x0, y0 = torch.randint(0, size - side, (2,), generator=g).tolist()
        vx, vy = torch.randint(-4, 5, (2,), generator=g).tolist()
        colour = torch.rand(3, 1, 1, generator=g)
        for t in range(frames):
            xx, yy = min(max(x0 + vx * t, 0), size - side), min(max(y0 + vy * t, 0), size - side)
            x[:, t, yy:yy + side, xx:xx + side] = colour
        clips.append(x + 0.05 * torch.randn(x.shape, generator=g))
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    return (torch.stack(clips) - mean) / std


class Evil:
    """Unpickling this calls open(marker, 'w'): a file appears if the loader runs pickled code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))
