"""The networks behind the registered backbones (pipeline.backbones): what they compute.

    frames [B, 3, T, H, W] ─► feature_map ─► [B, C, T', h, w] ─► pool (none | global | KxK) ─► [B, T', D]

`Backbone` is what they share: the last map, optionally averaged to a k x k grid, flattened
channel-major per frame (the seed's reshape), and 5 stages (`blocks`) that can be frozen. The map is
`trunk(stem(x, n), n)` for any n: `stem` runs the first n stages, so when those are frozen their
output can be computed once and kept (pipeline.stemcache), and training runs `trunk` only.
`Model3D1` is the 11-layer 3D CNN of the Something-Something v2 baseline (TwentyBN), key for key with
its published checkpoints (docs/model3d_1.md); `MobileNetV2` is torchvision's ImageNet
network in its key layout, run on every frame. Registration, preprocessing, weights and
calibration live in pipeline.backbones.
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from pipeline.errors import FoleyError
from pipeline.media import MEAN, STD

DROPOUT_P = 0.2               # Dropout3d at the end of blocks 1-4 (identity in eval)
NUM_BLOCKS = 5                # stages of every backbone: what freeze_blocks counts
POOL_HELP = "none (the whole last map), global (1x1) or KxK (e.g. 2x2: a k x k grid of averages)"


def canonical_pool(pool: str) -> str:
    """'none' | 'global' | 'KxK' (also 'K') -> 'none', 'global' or 'KxK'; anything else is an error."""
    text = str(pool).strip().lower()
    if text in ("none", "global"):
        return text
    m = re.fullmatch(r"(\d+)(?:x(\d+))?", text)
    if not m or (m.group(2) and m.group(2) != m.group(1)) or int(m.group(1)) < 1:
        raise FoleyError(f"--pool {pool!r}: expected {POOL_HELP}")
    k = int(m.group(1))
    return "global" if k == 1 else f"{k}x{k}"


def pool_side(pool: str) -> int | None:
    """Grid side k of a pooling ('global' = 1), None for 'none'."""
    pool = canonical_pool(pool)
    return None if pool == "none" else 1 if pool == "global" else int(pool.split("x")[0])


class Backbone(nn.Module):
    """What the registered networks share: a last map [B, C, T', h, w] from `feature_map`,
    optionally averaged to a k x k grid (`pool`), flattened channel-major per frame; stages
    (`blocks`) that `freeze_blocks` can freeze."""

    pool: str = "none"
    frozen_blocks: int = 0
    checkpointing: bool = False

    def blocks(self) -> list[nn.Module]:
        raise NotImplementedError

    def stem(self, x: Tensor, n: int) -> Tensor:
        """Frames [B, 3, T, H, W] through the first n stages, in the layout `trunk` reads."""
        raise NotImplementedError

    def trunk(self, h: Tensor, n: int) -> Tensor:
        """`stem(x, n)` through the stages after the first n -> the last map [B, C, T', h, w]."""
        raise NotImplementedError

    def unread(self) -> list[nn.Module]:
        """Stages the map never uses: they stay frozen whatever `freeze_blocks` says."""
        return []

    def feature_map(self, x: Tensor) -> Tensor:
        return self.trunk(self.stem(x, 0), 0)

    def run_blocks(self, blocks: list[nn.Module], x: Tensor) -> Tensor:
        """x through `blocks` in turn; with `checkpointing`, each recomputed in backward (training with
        grad only) to save memory."""
        recompute = self.checkpointing and self.training and torch.is_grad_enabled()
        for block in blocks:
            x = _checkpoint(block, x, use_reentrant=False) if recompute else block(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        """[B, 3, T, H, W] -> [B, T', C*h*w] (or C*k*k pooled), channel-major per frame (the seed's reshape)."""
        fmap = self.feature_map(x)
        k = pool_side(self.pool)
        if k is not None:
            fmap = F.adaptive_avg_pool3d(fmap, (fmap.shape[2], k, k))
        b, c, t, h, w = fmap.shape
        # reshape, not view: the map may be channels-last (CUDA) and is then not contiguous here
        return fmap.permute(0, 2, 1, 3, 4).reshape(b, t, c * h * w)

    def train(self, mode: bool = True):
        super().train(mode)
        for block in self.blocks()[: self.frozen_blocks]:
            block.eval()  # frozen BatchNorm keeps its statistics, frozen dropout stays off
        return self


# --------------------------------------------------------------------------- model3d_1

def _conv_bn_relu(c_in: int, c_out: int, kernel, stride, padding) -> list[nn.Module]:
    return [nn.Conv3d(c_in, c_out, kernel, stride, padding, bias=True), nn.BatchNorm3d(c_out), nn.ReLU(inplace=True)]


class Model3D1(Backbone):
    """TwentyBN's model3D_1 conv column: 11 Conv3d+BN+ReLU layers, h and w / 32, t kept.

    Input [B, 3, T, H, W] (ImageNet-normalised RGB). Indices inside block1..block5 match the
    published checkpoint keys (`block2.3.weight` ...). With `time_pool` (model3D_1_224) an
    AvgPool3d after block2's last ReLU halves T; it holds no weights, so the keys are unchanged.
    `checkpointing` recomputes each block in backward (training with grad only) to save memory.
    Blocks frozen by `freeze_blocks` stay in eval mode through `train()`.
    """

    def __init__(self, time_pool: bool = False, checkpointing: bool = False, width: float = 1.0):
        super().__init__()
        s2 = (1, 2, 2)  # halve h, w; the time axis is never strided
        w = lambda n: max(1, round(n * width))  # noqa: E731  (width multiplier: every channel count x width)
        self.block1 = nn.Sequential(*_conv_bn_relu(3, w(32), (3, 5, 5), s2, (1, 2, 2)), nn.Dropout3d(DROPOUT_P))
        block2 = _conv_bn_relu(w(32), w(64), 3, 1, 1) + _conv_bn_relu(w(64), w(128), 3, s2, 1)
        if time_pool:
            # index 6, after the ReLU at 5: conv/bn stay at 0,1,3,4 so checkpoints still load
            block2.append(nn.AvgPool3d((3, 1, 1), stride=(2, 1, 1), padding=(1, 0, 0)))
        self.block2 = nn.Sequential(*block2, nn.Dropout3d(DROPOUT_P))
        self.block3 = nn.Sequential(*_conv_bn_relu(w(128), w(128), 3, 1, 1), *_conv_bn_relu(w(128), w(128), 3, 1, 1),
                                    *_conv_bn_relu(w(128), w(256), 3, s2, 1), nn.Dropout3d(DROPOUT_P))
        self.block4 = nn.Sequential(*_conv_bn_relu(w(256), w(256), 3, 1, 1), *_conv_bn_relu(w(256), w(256), 3, 1, 1),
                                    *_conv_bn_relu(w(256), w(512), 3, s2, 1), nn.Dropout3d(DROPOUT_P))
        self.block5 = nn.Sequential(*_conv_bn_relu(w(512), w(512), 3, 1, 1), *_conv_bn_relu(w(512), w(512), 3, s2, 1))
        self.time_pool = time_pool
        self.checkpointing = checkpointing
        self.frozen_blocks = 0

    def blocks(self) -> list[nn.Sequential]:
        return [self.block1, self.block2, self.block3, self.block4, self.block5]

    def stem(self, x: Tensor, n: int) -> Tensor:
        """[B, 3, T, H, W] -> block n's map [B, C, T', h, w] (the frames themselves for n = 0)."""
        if x.dim() != 5 or x.shape[1] != 3:
            raise FoleyError(f"model3d_1 expects [B, 3, T, H, W], got {list(x.shape)}")
        if self.time_pool and x.shape[2] < 3:
            raise FoleyError(f"model3d_1_224 needs at least 3 frames (its temporal pool has kernel 3), got {x.shape[2]}")
        return self.run_blocks(self.blocks()[:n], x)

    def trunk(self, h: Tensor, n: int) -> Tensor:
        """-> block5 map [B, 512, T', ceil(H/32), ceil(W/32)], T' = T or ceil(T/2)."""
        return self.run_blocks(self.blocks()[n:], h)


# --------------------------------------------------------------------------- mobilenet_v2 (per frame)

# torchvision's MobileNetV2 (width 1.0): (expansion t, out channels c, repeats n, first stride s)
MOBILENET_V2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                         (6, 160, 3, 2), (6, 320, 1, 1))
MOBILENET_V2_STEM, MOBILENET_V2_LAST = 32, 1280
IMAGENET_CLASSES = 1000
# features.0..18 cut where the resolution halves (stem+/2, /4, /8, /16, /32): the 5 freezable stages
MOBILENET_V2_STAGES = ((0, 2), (2, 4), (4, 7), (7, 14), (14, 19))


def _conv_bn_relu6(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand (skipped when t = 1), 3x3 depthwise, 1x1 linear projection,
    identity shortcut when the shape is kept. Submodule indices match torchvision's `conv.N` keys."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int):
        super().__init__()
        hidden = c_in * expand
        layers = [] if expand == 1 else [_conv_bn_relu6(c_in, hidden, 1)]
        layers += [_conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(Backbone):
    """ImageNet MobileNetV2 (Sandler et al. 2018) in torchvision's key layout, run on every frame.

    `features` ([N, 3, H, W] -> [N, 1280, H/32, W/32]) is the backbone, read after its last stage or,
    with `read_stages` < 5, earlier (the stages after it are never run); `classifier` (dropout +
    Linear 1280 -> 1000) is kept so torchvision's file loads strictly and `classify` can check the
    weights against real photographs. Input [B, 3, T, H, W] is folded to [B*T, 3, H, W]: frames are
    independent, so the features of a clip equal the network run frame by frame.
    """

    def __init__(self, checkpointing: bool = False, read_stages: int = NUM_BLOCKS):
        super().__init__()
        if not 1 <= read_stages <= NUM_BLOCKS:
            raise FoleyError(f"mobilenet_v2: read_stages must be 1..{NUM_BLOCKS}, got {read_stages}")
        layers, c_in = [_conv_bn_relu6(3, MOBILENET_V2_STEM, 3, 2)], MOBILENET_V2_STEM
        for t, c, n, s in MOBILENET_V2_SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(c_in, c, s if i == 0 else 1, t))
                c_in = c
        layers.append(_conv_bn_relu6(c_in, MOBILENET_V2_LAST, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(MOBILENET_V2_LAST, IMAGENET_CLASSES))
        self.checkpointing = checkpointing
        self.read_stages = read_stages
        for m in self.modules():        # torchvision's init, so a random init is comparable to theirs
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)
        for block in self.unread():
            block.requires_grad_(False)

    def blocks(self) -> list[nn.Sequential]:
        return [self.features[a:b] for a, b in MOBILENET_V2_STAGES]

    def image_map(self, images: Tensor) -> Tensor:
        """[N, 3, H, W] -> [N, 1280, ceil(H/32), ceil(W/32)]."""
        return self.run_blocks(self.blocks(), images)

    def frames_in(self, x: Tensor) -> Tensor:
        """What the network reads of the normalised frames [B, 3, T, H, W]: the frames themselves."""
        return x

    def stem(self, x: Tensor, n: int) -> Tensor:
        """[B, 3, T, H, W] -> every frame through the first n stages: [B, T, C, h, w]."""
        if x.dim() != 5 or x.shape[1] != 3:
            raise FoleyError(f"mobilenet_v2 expects [B, 3, T, H, W], got {list(x.shape)}")
        b, _, t, h, w = x.shape
        images = self.frames_in(x).transpose(1, 2).reshape(b * t, 3, h, w)
        return self.run_blocks(self.blocks()[:n], images).unflatten(0, (b, t))

    def unread(self) -> list[nn.Sequential]:
        """The stages after `read_stages`: kept for the checkpoint's keys and `classify`, never run by
        `trunk`, so they take no gradient (DistributedDataParallel refuses parameters that get none)."""
        return self.blocks()[self.read_stages:]

    def trunk(self, h: Tensor, n: int) -> Tensor:
        """[B, T, C, h, w] -> the map after `read_stages` stages [B, C', T, h', w']: by default the last,
        [B, 1280, T, H/32, W/32]. Frames are independent: folded into the batch."""
        if n > self.read_stages:
            raise FoleyError(f"mobilenet_v2 is read after stage {self.read_stages}, inside a stem of {n} stages")
        fmap = self.run_blocks(self.blocks()[n:self.read_stages], h.flatten(0, 1))   # [B*T, C', h', w']
        return fmap.unflatten(0, h.shape[:2]).transpose(1, 2)

    def classify(self, images: Tensor) -> Tensor:
        """[N, 3, H, W] ImageNet-normalised -> logits [N, 1000] (torchvision's head)."""
        return self.classifier(self.image_map(images).mean((2, 3)))


def spacetime_frames(x: Tensor, mean: tuple, std: tuple) -> Tensor:
    """Owens et al. 2016's spacetime images: normalised RGB clips [B, 3, T, H, W] → [B, 3, T, H, W]
    whose three channels at frame t are the grey frames t-1, t, t+1 (the clip's first and last
    frames stand in for their missing neighbours), normalised with the same mean/std. A network
    trained on photographs then sees motion as colour: what moved between t-1 and t+1 is tinted."""
    m = x.new_tensor(mean).view(1, 3, 1, 1, 1)
    s = x.new_tensor(std).view(1, 3, 1, 1, 1)
    rgb = x * s + m
    grey = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]            # [B, T, H, W] (ITU-R 601 luma)
    before = torch.cat([grey[:, :1], grey[:, :-1]], 1)
    after = torch.cat([grey[:, 1:], grey[:, -1:]], 1)
    return (torch.stack([before, grey, after], 1) - m) / s


class SpacetimeMobileNetV2(MobileNetV2):
    """MobileNetV2 (the same weights) reading spacetime images instead of colour frames: each frame's
    features see its neighbours, so a per-frame network sees motion (`spacetime_frames`)."""

    def frames_in(self, x: Tensor) -> Tensor:
        return spacetime_frames(x, MEAN, STD)
