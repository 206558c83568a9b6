"""Decoded clips kept as uint8 frames: training decodes each video once per run, not once per epoch.

A frame cache is a few files that share a prefix (RUN/frames-train, or DIR/train-<fingerprint> when
several runs share one with `pretrain --frame-cache DIR`):

    PREFIX.json            what it holds: fingerprint, clip count, T, size, ids (written last)
    PREFIX.frames.npy      uint8 [N, T, S, S, 3] RGB (np.memmap): load_clip's frames (shorter side to S,
                           centre crop), rounded to integers; padding repeats the last real frame
    PREFIX.clips.npy       one record per clip (np.memmap): status (0 pending, 1 decoded, 2 + index of the
                           FaultyVideo reason), length (real frames), envelope [T] float32 (load_clip's)
    PREFIX.failures.jsonl  one line per faulty video: id, path, reason, detail (as extraction writes them)

Decoding is `pipeline.decoding` (load_entry in DataLoader workers), as for extraction; a
faulty video becomes a record and its row is never used (never replaced by another clip). A clip's
frames are written before its status, in flushed chunks, so a killed build (even `kill -9`) resumes
where it stopped: re-building the same prefix decodes only the clips still pending. Under torchrun
every rank decodes its share of the rows (rank r: rows r, r + W, ...) into the same files.

Size: N x T x S x S x 3 bytes (300 clips x 48 x 73 x 73: 230 MB; 12,991 SSv2 clips at 224: 94 GB).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from pipeline.data import Annotation, manifest_sha256
from pipeline.decoding import decode_loader, load_entry
from pipeline.errors import FoleyError
from pipeline.fsio import atomic_write_json, atomic_write_text
from pipeline.media import REASONS, FaultyVideo

FRAME_CACHE_VERSION = 1
PENDING, DECODED = 0, 1                 # status codes; a faulty clip has FAILED_BASE + REASONS.index(reason)
FAILED_BASE = 2
FLUSH_EVERY = 16                        # clips between flushes: a kill re-decodes at most this many
SUFFIXES = (".json", ".frames.npy", ".clips.npy", ".failures.jsonl")


def normalise(x: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    """Frames [B, 3, T, S, S] as floats in 0..255 -> the backbone's input, (x - 255 mean) / (255 std)
    per channel (mean, std: the backbone spec's, for frames in [0, 1])."""
    m = torch.tensor(mean).view(1, 3, 1, 1, 1) * 255.0
    inv_std = 1.0 / (torch.tensor(std).view(1, 3, 1, 1, 1) * 255.0)
    return (x - m).mul_(inv_std).contiguous()


def normalised(frames: np.ndarray, mean: tuple, std: tuple) -> torch.Tensor:
    """uint8 frames [B, T, S, S, 3] (`FrameCache.read`'s) -> the backbone's input [B, 3, T, S, S]."""
    return normalise(torch.from_numpy(frames).permute(0, 4, 1, 2, 3).float(), mean, std)


def clip_dtype(frames: int) -> np.dtype:
    """The per-clip record of PREFIX.clips.npy."""
    return np.dtype([("status", "u1"), ("length", "<i4"), ("envelope", "<f4", (frames,))])


def cache_files(prefix: str | os.PathLike) -> list[Path]:
    """The files of the frame cache at `prefix` (existing or not)."""
    prefix = Path(prefix)
    return [prefix.with_name(prefix.name + s) for s in SUFFIXES]


def frame_cache_fingerprint(entries: list[Annotation], frames: int, fps: float, size: int, reduce: str) -> str:
    """sha256 of everything that changes the cached numbers: the clips (manifest_sha256), T, fps,
    the stored size, the envelope's reduction and this format's version."""
    params = {"manifest": manifest_sha256(entries), "frames": int(frames), "fps": float(fps), "size": int(size),
              "reduce": reduce, "version": FRAME_CACHE_VERSION}
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


class FrameCache:
    """A built (or partly built) frame cache, read through memory maps.

    frames [N, T, S, S, 3] uint8, envelope [N, T] float32, length [N] int, status [N] uint8;
    `decoded` = rows whose clip decoded (status 1), `failures` = the faulty videos' records.
    """

    def __init__(self, prefix: str | os.PathLike, mode: str = "r"):
        self.prefix = Path(prefix)
        meta, frames_path, clips_path, failures_path = cache_files(self.prefix)
        if not meta.is_file():
            raise FoleyError(f"no frame cache at {self.prefix} ({meta.name} is missing)")
        self.meta = json.loads(meta.read_text(encoding="utf-8"))
        self.frames = np.load(frames_path, mmap_mode=mode)
        self.clips = np.load(clips_path, mmap_mode=mode)
        self.ids: list[str] = self.meta["ids"]
        self.fingerprint: str = self.meta["fingerprint"]
        self.size: int = self.meta["size"]
        self.failures_path = failures_path

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def status(self) -> np.ndarray:
        return np.asarray(self.clips["status"])

    @property
    def decoded(self) -> np.ndarray:
        """Rows [n] int64 of the clips that decoded."""
        return np.flatnonzero(self.status == DECODED)

    @property
    def pending(self) -> np.ndarray:
        return np.flatnonzero(self.status == PENDING)

    @property
    def failures(self) -> list[dict]:
        if not self.failures_path.is_file():
            return []
        return [json.loads(line) for line in self.failures_path.read_text(encoding="utf-8").splitlines() if line]

    def read(self, rows) -> dict:
        """Clips `rows` as {"frames" uint8 [B, T, S, S, 3], "envelope" float32 [B, T], "length" int64 [B]}
        (copies: the memory maps stay untouched)."""
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")           # ascending reads: sequential on disk
        frames = np.empty((len(rows), *self.frames.shape[1:]), dtype=np.uint8)
        frames[order] = self.frames[rows[order]]
        return {"frames": frames, **self.targets(rows)}

    def targets(self, rows) -> dict:
        """Clips `rows`' {"envelope" float32 [B, T], "length" int64 [B]}, without their frames."""
        rec = self.clips[np.asarray(rows, dtype=np.int64)]
        return {"envelope": np.array(rec["envelope"], dtype=np.float32), "length": np.array(rec["length"], dtype=np.int64)}


class _Decode(Dataset):
    """Item k = row k's clip as uint8 [T, S, S, 3] + envelope + length, or its failure record."""

    def __init__(self, rows: list[int], entries: list[Annotation], videos: Path, frames: int, fps: float, size: int,
                 reduce: str):
        self.rows, self.entries, self.videos = rows, entries, Path(videos)
        self.frames, self.fps, self.size, self.reduce = frames, fps, size, reduce

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, k: int) -> dict:
        row = self.rows[k]
        try:
            clip, _ = load_entry(self.videos, self.entries[row], self.frames, self.fps, self.size, reduce=self.reduce,
                                 normalize=False)
        except FaultyVideo as e:
            return {"row": row, "failure": e.record(self.entries[row].id)}
        # [3, T, S, S] floats in 0..255 -> [T, S, S, 3] uint8 (round, not truncate)
        frames = clip.frames.permute(1, 2, 3, 0).round_().clamp_(0, 255).to(torch.uint8)
        return {"row": row, "frames": frames, "envelope": torch.from_numpy(clip.envelope), "length": clip.length}


def _create(prefix: Path, entries: list[Annotation], frames: int, size: int, fingerprint: str, params: dict):
    """Fresh, all-pending cache files (sparse: nothing is written for the frames yet); the JSON last."""
    meta, frames_path, clips_path, failures_path = cache_files(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    for path in (meta, failures_path):
        path.unlink(missing_ok=True)
    n = len(entries)
    np.lib.format.open_memmap(frames_path, mode="w+", dtype=np.uint8, shape=(n, frames, size, size, 3)).flush()
    clips = np.lib.format.open_memmap(clips_path, mode="w+", dtype=clip_dtype(frames), shape=(n,))
    clips["status"] = PENDING
    clips.flush()
    del clips
    atomic_write_json(meta, {"format": "foleycache-frame-cache", "version": FRAME_CACHE_VERSION,
                             "fingerprint": fingerprint, "clips": n, "frames": frames, "size": size,
                             "params": params, "ids": [a.id for a in entries]})


def _usable(prefix: Path, fingerprint: str, n: int) -> bool:
    meta, frames_path, clips_path, _ = cache_files(prefix)
    if not (meta.is_file() and frames_path.is_file() and clips_path.is_file()):
        return False
    try:
        saved = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return saved.get("fingerprint") == fingerprint and saved.get("clips") == n


def build_frame_cache(prefix: str | os.PathLike, entries: list[Annotation], videos: str | os.PathLike, *,
                      frames: int, fps: float, size: int, reduce: str = "max", workers: int = 1,
                      rank: int = 0, world_size: int = 1, barrier=lambda: None, gather=lambda x: [x],
                      progress: bool = True, desc: str = "decoding clips") -> dict:
    """Decode every clip of `entries` still pending into the frame cache at `prefix` (created, or
    reused when its fingerprint matches; a mismatching one is rebuilt). Call on every rank: rank 0
    creates the files, each rank decodes rows rank, rank + world_size, ...; `barrier` and `gather`
    are the run's collectives (pipeline.distributed.Distributed's). Returns {"prefix", "fingerprint",
    "decoded_now", "decoded", "failed", "reused"} (the same on every rank).
    """
    prefix = Path(prefix)
    fingerprint = frame_cache_fingerprint(entries, frames, fps, size, reduce)
    reused = _usable(prefix, fingerprint, len(entries))
    if rank == 0 and not reused:
        _create(prefix, entries, frames, size, fingerprint,
                {"frames": int(frames), "fps": float(fps), "size": int(size), "reduce": reduce})
    barrier()
    cache = FrameCache(prefix, mode="r+")
    pending = [int(r) for r in cache.pending if r % world_size == rank]
    failures = []
    if pending:
        loader = decode_loader(_Decode(pending, entries, Path(videos), frames, fps, size, reduce), workers)
        done = []
        total = int(sum(len(cache.pending[cache.pending % world_size == r]) for r in range(world_size)))
        bar = tqdm(total=total, desc=desc, unit="clip", disable=not progress, leave=False)
        for item in loader:
            row = item["row"]
            if "failure" in item:
                failures.append(item["failure"])
                cache.clips["status"][row] = FAILED_BASE + REASONS.index(item["failure"]["reason"])
            else:
                cache.frames[row] = item["frames"].numpy()
                cache.clips["envelope"][row] = item["envelope"].numpy()
                cache.clips["length"][row] = int(item["length"])
                done.append(row)
            bar.update(world_size)          # the other ranks decode as fast
            if len(done) >= FLUSH_EVERY:
                _commit(cache, done)
        _commit(cache, done)
        bar.close()
    decoded_now = int(sum(gather(len(pending) - len(failures))))
    all_failures = [f for part in gather(failures) for f in part]
    barrier()
    if rank == 0:
        _write_failures(cache, entries, all_failures)
    barrier()
    status = FrameCache(prefix).status
    return {"prefix": str(prefix), "fingerprint": fingerprint, "decoded_now": decoded_now,
            "decoded": int((status == DECODED).sum()), "failed": int((status >= FAILED_BASE).sum()),
            "reused": reused}


def _commit(cache: FrameCache, rows: list[int]):
    """Frames first (flushed), then the rows' status: a kill between the two re-decodes them."""
    if not rows:
        return
    cache.frames.flush()
    cache.clips.flush()                 # envelopes and lengths
    cache.clips["status"][rows] = DECODED
    cache.clips.flush()
    rows.clear()


def _write_failures(cache: FrameCache, entries: list[Annotation], new: list[dict]):
    """PREFIX.failures.jsonl: every faulty row's record (earlier builds' kept, this build's added),
    in row order. A row whose record was lost to a kill keeps its reason, without detail."""
    known = {f["id"]: f for f in cache.failures}
    known.update({f["id"]: f for f in new})
    lines = []
    for row in np.flatnonzero(cache.status >= FAILED_BASE):
        a = entries[row]
        record = known.get(a.id) or {"id": a.id, "path": a.video or a.id,
                                     "reason": REASONS[int(cache.status[row]) - FAILED_BASE], "detail": ""}
        lines.append(json.dumps(record, sort_keys=True) + "\n")
    atomic_write_text(cache.failures_path, "".join(lines))
