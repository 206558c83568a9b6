"""What `pretrain` trains: a backbone with a class head (+ a per-frame envelope head), its batches
of decoded, augmented clips, and its accuracy.

    frames [B, 3, T, S, S] ─► backbone.feature_map ─► [B, C, T, h, w] ─► mean over h, w ─► [B, C, T]
                                                                              │ mean over T ─► Linear ─► class logits [B, K]
                                                                              └ per frame ──► Linear ─► envelope logits [B, T]

Read top to bottom: the model (`Pretrainer`), the data (`ClipBatches`: rows of a uint8 frame cache
decoded once per run by `pipeline.framecache`, augmented per clip without ever moving a sound in
time), evaluation (top-k and per-class accuracy). The loop, the run directory and the export are
pipeline.pretrain's.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.data import Annotation, template_key
from pipeline.distributed import Distributed
from pipeline.framecache import FrameCache, normalise
from pipeline.stemcache import StemCache
from pipeline.head import masked_bce
from pipeline.loader import epoch_batches
from pipeline.runtime import autocast

TOP_K = 5
EVAL_BATCH = 16
# Augmentation, one draw per clip from (seed, epoch, clip): the same for every frame, so an impact
# stays on its frame. Train frames are cached CROP_MARGIN larger; a crop of side in [S, S*margin]
# is resized to S (scale + translation), flipped left-right with FLIP_P, and its brightness,
# contrast and saturation scaled by factors in COLOUR_JITTER.
CROP_MARGIN = 1.15
FLIP_P = 0.5
COLOUR_JITTER = (0.8, 1.2)
GREY = (0.299, 0.587, 0.114)    # ITU-R 601 luma weights, for contrast and saturation


# ----------------------------------------------------------------------------- the model

class Pretrainer(nn.Module):
    """Backbone + class head on the pooled final map + (optional) per-frame envelope head.

    forward: frames [B, 3, T, S, S] (normalised), or with `stem_blocks` N > 0 the first N stages'
    output (pipeline.stemcache), -> (class logits [B, K] or None, envelope logits [B, T] or None).
    The backbone's time axis is never pooled (model3d_1), so the map [B, C, T, h, w] pooled over h, w
    gives one C-vector per frame: the envelope head reads those, the class head their mean.
    classes = 0: no class head (the envelope as the only target).
    """

    def __init__(self, backbone: nn.Module, channels: int, classes: int, aux: bool, dropout: float,
                 stem_blocks: int = 0):
        super().__init__()
        self.backbone = backbone
        self.stem_blocks = stem_blocks
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels, classes) if classes else None
        self.aux = nn.Linear(channels, 1) if aux else None     # built after the classifier: same init either way

    def forward(self, x: Tensor, length: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
        fmap = self.backbone.trunk(x, self.stem_blocks) if self.stem_blocks else self.backbone.feature_map(x)
        per_frame = fmap.mean((3, 4))                                   # [B, C, T]
        logits = self.classifier(self.dropout(per_frame.mean(2))) if self.classifier is not None else None
        aux = self.aux(per_frame.transpose(1, 2)).squeeze(-1) if self.aux is not None else None   # [B, T]
        return logits, aux


def clip_gradients(model: Pretrainer, max_norm: float) -> Tensor:
    """Clip the global gradient norm to max_norm; returns the norm before clipping.

    The envelope head's gradients join the norm as a term of their own (hypot of the two norms), so a
    zero aux gradient (--aux-envelope 0) leaves the clip, and the whole run, bit-identical to a run
    without the head: one global norm over more tensors sums them in another order, and Adam turns
    that last-bit difference in near-zero gradients into whole-lr steps."""
    main = [p.grad for n, p in model.named_parameters() if p.grad is not None and not n.startswith("aux.")]
    aux = [p.grad for n, p in model.named_parameters() if p.grad is not None and n.startswith("aux.")]
    total = nn.utils.get_total_norm(main)
    if aux:
        total = torch.hypot(total, nn.utils.get_total_norm(aux))
    nn.utils.clip_grads_with_norm_(model.parameters(), max_norm, total)
    return total


# ----------------------------------------------------------------------------- the data

def class_list(entries: list[Annotation]) -> list[str]:
    """The classes a run learns: the train entries' templates, by the labels file's index when every
    entry has one (SSv2), else alphabetically (by template_key)."""
    first = {}
    for a in entries:
        first.setdefault(a.template, a)
    if all(a.class_index is not None for a in first.values()):
        return sorted(first, key=lambda t: (first[t].class_index, template_key(t)))
    return sorted(first, key=template_key)


def augment_params(seed: int, epoch: int, row: int, size: int, stored: int, flip: bool) -> dict:
    """One clip's augmentation, a function of (seed, epoch, row) only (a resumed run draws the same)."""
    rng = np.random.default_rng([seed, epoch, row])
    side = int(rng.integers(size, stored + 1))
    top, left = (int(v) for v in rng.integers(0, stored - side + 1, size=2))
    return {"side": side, "top": top, "left": left, "flip": bool(flip and rng.random() < FLIP_P),
            "brightness": float(rng.uniform(*COLOUR_JITTER)), "contrast": float(rng.uniform(*COLOUR_JITTER)),
            "saturation": float(rng.uniform(*COLOUR_JITTER))}


def augment_clip(frames: Tensor, p: dict, size: int) -> Tensor:
    """uint8 [T, S', S', 3] -> float [T, 3, size, size] in 0..255: crop, resize, flip, colour (the same
    for every frame: nothing moves in time)."""
    x = frames[:, p["top"]:p["top"] + p["side"], p["left"]:p["left"] + p["side"]]
    x = x.permute(0, 3, 1, 2).float()                                   # [T, 3, side, side]
    if p["side"] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    if p["flip"]:
        x = x.flip(-1)
    weights = torch.tensor(GREY).view(1, 3, 1, 1)
    x = x * p["brightness"]
    level = (x * weights).sum(1, keepdim=True).mean()                  # the clip's mean grey: one number
    x = (x - level) * p["contrast"] + level
    grey = (x * weights).sum(1, keepdim=True)                           # [T, 1, S, S]
    x = grey + (x - grey) * p["saturation"]
    return x.clamp_(0, 255)


class ClipBatches:
    """Batches of clips from a frame cache: {"inputs" [B, 3, T, S, S] normalised float32,
    "label" [B] int64, "envelope" [B, T], "length" [B], "index" [B] (position in this split)}.

    rows: the frame-cache rows of the split's usable clips, labels: their class indices. augment:
    the train split's crop / flip / colour (see augment_params); else the stored frames as they
    are (the stored size is the input size: extract-features' preprocessing).
    """

    def __init__(self, cache: FrameCache, rows: np.ndarray, labels: np.ndarray, *, size: int,
                 mean: tuple, std: tuple, augment: bool, flip: bool, seed: int, batch_size: int, dist: Distributed):
        self.cache, self.rows, self.labels = cache, np.asarray(rows, np.int64), np.asarray(labels, np.int64)
        self.size, self.augment, self.flip, self.seed = size, augment, flip, seed
        self.batch_size, self.dist = batch_size, dist
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return len(self.rows)

    def batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's batches of positions for `epoch` (shuffled for training; padded so every rank
        gets as many: DDP needs it)."""
        return epoch_batches([len(self.rows)], self.batch_size, shuffle=self.augment, seed=self.seed, epoch=epoch,
                             rank=self.dist.rank, world_size=self.dist.world_size, pad=self.augment)

    def load(self, positions: np.ndarray, epoch: int) -> dict:
        rows = self.rows[positions]
        clips = self.cache.read(rows)
        frames = torch.from_numpy(clips["frames"])                      # [B, T, S', S', 3] uint8
        if self.augment:
            x = torch.stack([augment_clip(frames[j], augment_params(self.seed, epoch, int(r), self.size,
                                                                    self.cache.size, self.flip), self.size)
                             for j, r in enumerate(rows)])               # [B, T, 3, S, S]
        else:
            x = frames.permute(0, 1, 4, 2, 3).float()
        return self._batch(normalise(x.permute(0, 2, 1, 3, 4), self.mean, self.std), positions, clips)

    def _batch(self, inputs: Tensor, positions: np.ndarray, targets: dict) -> dict:
        """One batch as the loop reads it: inputs, class indices, envelopes, lengths, positions."""
        return {"inputs": inputs, "label": torch.from_numpy(self.labels[positions]),
                "envelope": torch.from_numpy(targets["envelope"]), "length": torch.from_numpy(targets["length"]),
                "index": torch.as_tensor(positions, dtype=torch.int64)}


class StemBatches(ClipBatches):
    """ClipBatches whose inputs are the frozen stages' maps of the clips (pipeline.stemcache), read
    instead of frames. A crop or colour change would change those maps, so the only augmentation
    left is the left-right flip, done on the maps (a flip of the frames flips every stage's map up
    to the asymmetry of the learnt filters)."""

    def __init__(self, cache: FrameCache, stem: StemCache, rows: np.ndarray, labels: np.ndarray, *, flip: bool,
                 augment: bool, seed: int, batch_size: int, dist: Distributed):
        super().__init__(cache, rows, labels, size=cache.size, mean=(0.0,) * 3, std=(1.0,) * 3, augment=augment,
                         flip=flip, seed=seed, batch_size=batch_size, dist=dist)
        self.stem = stem

    def load(self, positions: np.ndarray, epoch: int) -> dict:
        rows = self.rows[positions]
        x = torch.from_numpy(self.stem.read(rows))                      # [B, *stem map], last axis = width
        if self.augment and self.flip:
            flips = [np.random.default_rng([self.seed, epoch, int(r)]).random() < FLIP_P for r in rows]
            x[flips] = x[flips].flip(-1)
        return self._batch(x, positions, self.cache.targets(rows))


class Prefetched:
    """Batches as pipeline.loop.fit reads them (`set_epoch`, `len()` batches, iteration), the next
    batch read and augmented in a thread while this one trains (`load` is a pure function of
    (positions, epoch): the order of work changes nothing)."""

    def __init__(self, data: ClipBatches):
        self.data, self.epoch = data, 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.data.batches(self.epoch))

    def __iter__(self):
        batches = self.data.batches(self.epoch)
        with ThreadPoolExecutor(max_workers=1) as pool:
            ahead = pool.submit(self.data.load, batches[0], self.epoch) if batches else None
            for i in range(len(batches)):
                batch = ahead.result()
                if i + 1 < len(batches):
                    ahead = pool.submit(self.data.load, batches[i + 1], self.epoch)
                yield batch


# ----------------------------------------------------------------------------- the objective

@dataclass
class PretrainObjective:
    """What pipeline.loop.fit trains a Pretrainer on: cross-entropy of the labels (label smoothing),
    plus aux_weight x the masked BCE of the envelope (aux_weight None: no envelope head); with
    `class_loss` False the envelope is the only target. The best epoch is the one of the lowest
    validation objective."""

    classes: list[str]
    aux_weight: float | None
    label_smoothing: float
    class_loss: bool = True

    def train_loss(self, outputs: tuple, batch: dict) -> tuple[Tensor, Tensor]:
        logits, aux = outputs
        loss = torch.zeros((), device=batch["length"].device)
        if self.class_loss:
            loss = F.cross_entropy(logits.float(), batch["label"], label_smoothing=self.label_smoothing)
        if aux is not None:
            loss = loss + self.aux_weight * masked_bce(aux, batch["envelope"], batch["length"])
        return loss, torch.tensor(float(len(batch["length"])), device=loss.device)

    def validate(self, model: Pretrainer, batches: ClipBatches, dist: Distributed, amp: str) -> tuple[float, dict]:
        parts = dist.gather(evaluate_pretrainer(model, batches, dist.device, amp))
        frames = sum(p["frames"] for p in parts)
        bce = sum(p["bce_sum"] for p in parts) / frames if frames else None
        record = {"val_aux_bce": bce, "val_clips": int(sum(len(p["index"]) for p in parts))}
        value = (self.aux_weight or 0.0) * (bce or 0.0)
        if self.class_loss:
            order = np.argsort(np.concatenate([p["index"] for p in parts]), kind="stable")
            logits = np.concatenate([p["logits"] for p in parts if len(p["index"])])[order]
            labels = np.concatenate([p["label"] for p in parts if len(p["index"])])[order].astype(np.int64)
            m = classification_metrics(logits, labels, self.classes)
            record.update(val_top1=m["top1"], val_top5=m["top5"], val_ce=m["ce"], val_per_class=m["per_class"],
                          chance=1.0 / len(self.classes))
            value += m["ce"]
        record["val_loss"] = value
        return value, record

    def clip(self, model: Pretrainer, max_norm: float):
        clip_gradients(model, max_norm)


# ----------------------------------------------------------------------------- evaluation

def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of rows whose label is among the k largest logits [N, K] (k capped at K)."""
    if len(labels) == 0:
        return float("nan")
    k = min(k, logits.shape[1])
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return float((top == labels[:, None]).any(1).mean())


def classification_metrics(logits: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    """{"top1", "top5", "per_class": {template: accuracy or None when absent}, "ce"}: logits [N, K], labels [N]."""
    pred = logits.argmax(1)
    per_class = {}
    for k, name in enumerate(classes):
        m = labels == k
        per_class[name] = float((pred[m] == k).mean()) if m.any() else None
    ce = float(F.cross_entropy(torch.from_numpy(logits).double(), torch.from_numpy(labels))) if len(labels) else None
    return {"top1": topk_accuracy(logits, labels, 1), "top5": topk_accuracy(logits, labels, TOP_K),
            "per_class": per_class, "ce": ce}


@torch.no_grad()
def evaluate_pretrainer(model: Pretrainer, data: ClipBatches, device: torch.device, amp: str) -> dict:
    """This rank's share of the validation clips: {"index", "logits" [n, K], "label", "bce_sum", "frames"}."""
    was = model.training
    model.eval()
    index, logits_all, labels, bce_sum, frames = [], [], [], 0.0, 0
    for positions in data.batches(0):
        b = data.load(positions, 0)
        with autocast(device, amp):
            logits, aux = model(b["inputs"].to(device))
        if logits is not None:
            logits_all.append(logits.float().cpu())
        labels.append(b["label"])
        index.append(b["index"])
        if aux is not None:
            bce_sum += float(masked_bce(aux, b["envelope"].to(device), b["length"].to(device), reduction="sum"))
            frames += int(b["length"].sum())
    model.train(was)
    cat = lambda xs: torch.cat(xs).numpy() if xs else np.zeros((0,))    # noqa: E731
    return {"index": cat(index), "logits": cat(logits_all), "label": cat(labels), "bce_sum": bce_sum,
            "frames": frames}
