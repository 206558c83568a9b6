"""Clips decoded in DataLoader workers: what extraction, finetuning and the frame cache share.

    manifest entry ─► load_entry (find_video + load_clip, one decoder thread) ─► Clip, or FaultyVideo
    Dataset of entries ─► decode_loader (one torch thread per worker) ─► items in the main process

A faulty video is never replaced by another: the dataset returns its failure record
(`FaultyVideo.record`) in place of the clip, and the caller writes it to failures.jsonl.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from pipeline.data import Annotation, find_video
from pipeline.media import Clip, FaultyVideo, load_clip

PREFETCH = 4                    # items each worker decodes ahead: keeps the model fed between long clips


def load_entry(videos: str | Path, entry: Annotation, frames: int, fps: float, size: int, *, reduce: str = "max",
               normalize: bool = True, audio: bool = True) -> tuple[Clip, Path]:
    """(clip, video path) of one manifest entry, decoded from entry.start with one decoder thread (a
    worker's share of the cores). Raises FaultyVideo whose `path` is the file found, or where it was
    looked for when there is none, so `e.record(entry.id)` is the entry's failure record. audio=False:
    the audio is never read (prediction on footage without sound; the clip's envelope is zeros)."""
    path = Path(videos) / (entry.video or entry.id)
    try:
        path = find_video(videos, entry)
        return load_clip(path, frames, fps, size, reduce=reduce, normalize=normalize, threads=1,
                         start=entry.start, audio=audio), path
    except FaultyVideo as e:
        e.path = str(path)
        raise


def worker_init(_):
    torch.set_num_threads(1)    # decode workers leave the cores to the model


def decode_loader(dataset, workers: int, *, pin_memory: bool = False, batch_sampler=None,
                  prefetch: int = PREFETCH) -> DataLoader:
    """A DataLoader whose workers decode `dataset`'s items: each item as it is (batch_size=None), or
    collated into the batches of `batch_sampler`; in order; workers started for each pass.
    prefetch: items (or batches) each worker holds ready."""
    batching = {"batch_sampler": batch_sampler} if batch_sampler is not None else {"batch_size": None}
    return DataLoader(dataset, **batching, num_workers=workers, worker_init_fn=worker_init, pin_memory=pin_memory,
                      prefetch_factor=prefetch if workers else None, persistent_workers=False)


# --- extraction's clips ---------------------------------------------------------------------

class ClipDataset(torch.utils.data.Dataset):
    """One item per candidate: the decoded clip, or the failure record of a faulty video."""

    def __init__(self, items: list[tuple[int, Annotation]], videos: Path, frames: int, fps: float,
                 size: int, reduce: str, normalize: bool = True, audio: bool = True):
        self.items, self.videos = items, Path(videos)
        self.frames, self.fps, self.size, self.reduce, self.audio = frames, fps, size, reduce, audio
        self.normalize = normalize      # False: frames stay 0..255 and are normalised on the GPU

    def __len__(self):
        return len(self.items)

    def __getitem__(self, k):
        shard, ann = self.items[k]
        item = {"shard": shard, "id": ann.id, "label": ann.template}
        try:
            clip, path = load_entry(self.videos, ann, self.frames, self.fps, self.size, reduce=self.reduce,
                                    normalize=self.normalize, audio=self.audio)
        except FaultyVideo as e:
            item.update(path=e.path, failure=e.record(ann.id))
            return item
        item.update(path=str(path), frames=clip.frames, envelope=clip.envelope, length=clip.length)
        return item


@dataclass(frozen=True)
class ClipSettings:
    """How every clip is decoded: `ClipDataset`'s arguments."""
    videos: Path
    frames: int
    fps: float
    size: int
    reduce: str
    audio: bool = True          # False: no audio is read, every envelope is 0 (a cache without targets)

    def dataset(self, items: list[tuple[int, Annotation]], normalize: bool = False) -> ClipDataset:
        return ClipDataset(items, videos=self.videos, frames=self.frames, fps=self.fps, size=self.size,
                           reduce=self.reduce, normalize=normalize, audio=self.audio)
