"""One prediction curve per video: clips (or windows of any stride) joined on the video's own timeline,
and the onsets a user works from.

origins = clip_origins(cache, videos)                        # (video, start s) of every cached clip
lines = join_clips(pred, length, origins, fps)               # one Timeline per video, in cache order
write_timelines(OUT, lines)                                  # timelines.h5, timelines.csv
write_onsets(OUT, lines)                                     # onsets.csv, onsets.json

The timeline of a video is sampled at the clip frame rate from the video's first frame: value j is
the prediction at j / fps s. A clip starting at `start` s puts its frame i at
j = round(start * fps) + i (a window starting at 40 s puts its frame 6 at j = 486, 40.5 s at 12 fps;
a start off the frame grid moves to the nearest frame, at most half a frame).
Overlaps (stride < clip length): each frame is taken from the clip in which it is most central,
|i - (length - 1) / 2| smallest over the clip's real frames; on a tie, the earlier clip. Near a
window's edges the head has seen the least of what happens around a frame, so the central copy is
the one to trust. Frames no clip covers (a stride longer than a clip) are NaN.
Onsets are `pipeline.metrics.onsets`, the peak picker the metrics use, run on each stretch of the
timeline that clips cover.

This module owns joining and the timeline / onset files. It predicts nothing (`pipeline.score`)
and draws nothing (`pipeline.figures`, `pipeline.preview`).
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import h5py
import numpy as np

from pipeline.errors import FoleyError
from pipeline.fsio import atomic_write, atomic_write_text
from pipeline.metrics import PEAK_PARAMS, onsets

TIMELINES_H5 = "timelines.h5"
TIMELINES_CSV = "timelines.csv"
ONSETS_CSV = "onsets.csv"
ONSETS_JSON = "onsets.json"
JOIN_RULE = ("each frame from the clip in which it is most central (|i - (length - 1) / 2| smallest), "
             "the earlier clip on a tie; frames no clip covers are NaN")
H5_STR = h5py.string_dtype("utf-8")


@dataclass
class Timeline:
    """One video's prediction. pred [L] float32 at `fps` from the video's first frame (NaN where no
    clip covers a frame); clips: ids of the clips joined, in time order; source: the first clip's
    `pipeline.data.Annotation` (how to find the video again)."""
    video: str
    pred: np.ndarray
    fps: float
    clips: list[str]
    source: object

    @property
    def seconds(self) -> float:
        return len(self.pred) / self.fps

    def onsets(self, peak_params: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(frames [K] int64, strengths [K] float64) of `metrics.onsets` on every covered stretch."""
        return covered_onsets(self.pred, peak_params)


# ----------------------------------------------------------------------------- where clips come from

def recorded_clips(cache, videos: Path | None) -> dict:
    """{id: Annotation} of the cache's recorded manifest (each clip's video path and start); {} when
    it cannot be read again (then an id is taken for what it says: `pipeline.data.clip_of_id`)."""
    from pipeline.data import load_annotations

    m = cache.config.get("manifest") or {}
    videos = videos if videos is not None else m.get("videos")
    try:
        entries = load_annotations(m["annotations"], classes=m.get("classes", "sound12"),
                                   labels_path=m.get("labels"), videos=videos, window_stride=m.get("window_stride"),
                                   frames=cache.frames, fps=float(cache.config.get("fps", 12.0)))
    except (KeyError, TypeError, FoleyError):
        return {}
    return {a.id: a for a in entries}


def video_key(annotation) -> str:
    """The name of a clip's video: its path inside the videos folder without the extension, or the
    id of an SSv2 clip (whose id is its video's stem)."""
    return PurePosixPath(annotation.video).with_suffix("").as_posix() if annotation.video else annotation.id


def clip_origins(cache, videos: Path | None = None) -> list:
    """The Annotation of every cached clip, in cache order (recorded manifest, else the id)."""
    from pipeline.data import clip_of_id

    clips = recorded_clips(cache, videos)
    return [clips.get(i) or clip_of_id(i) for i in cache.ids]


# ----------------------------------------------------------------------------- joining

def join_clips(pred: np.ndarray, length: np.ndarray, origins: list, fps: float, ids: list[str]) -> list[Timeline]:
    """Join clip predictions into one Timeline per video (videos in order of first appearance).

    pred: [N, T] head probabilities; length: [N] real frames; origins: [N] Annotations (video, start s).
    """
    groups: dict[str, list[int]] = {}
    for n, a in enumerate(origins):
        groups.setdefault(video_key(a), []).append(n)
    lines = []
    for video, members in groups.items():
        members.sort(key=lambda n: origins[n].start)
        offsets = [int(round(origins[n].start * fps)) for n in members]
        curve = _join([pred[n, :int(length[n])] for n in members], offsets)
        lines.append(Timeline(video=video, pred=curve, fps=float(fps), clips=[ids[n] for n in members],
                              source=origins[members[0]]))
    return lines


def _join(curves: list[np.ndarray], offsets: list[int]) -> np.ndarray:
    """[L] float32: curves[k] placed from offsets[k] (in time order); each frame from the curve in
    which it is most central, the earlier on a tie; NaN where none covers it."""
    total = max(o + len(c) for c, o in zip(curves, offsets))
    out = np.full(total, np.nan, np.float32)
    best = np.full(total, np.inf)
    for curve, offset in zip(curves, offsets):
        distance = np.abs(np.arange(len(curve)) - (len(curve) - 1) / 2.0)
        span = slice(offset, offset + len(curve))
        better = distance < best[span]          # strict: an equally central later clip loses
        out[span][better] = curve[better]
        best[span][better] = distance[better]
    return out


def covered_onsets(curve: np.ndarray, peak_params: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`metrics.onsets` on each stretch of `curve` [L] without NaN; (frames [K] int64 on the whole
    curve, strengths [K] float64), in time order."""
    valid = np.isfinite(curve)
    edges = np.flatnonzero(np.diff(np.concatenate([[False], valid, [False]]).astype(np.int8)))
    frames, strengths = [], []
    for lo, hi in zip(edges[::2], edges[1::2]):
        f, s = onsets(curve[lo:hi], peak_params)
        frames.append(f + lo)
        strengths.append(s)
    if not frames:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    return np.concatenate(frames), np.concatenate(strengths)


# ----------------------------------------------------------------------------- files

def write_timelines(out: Path, lines: list[Timeline]) -> list[Path]:
    """timelines.h5 (video [V] str, offset [V + 1] int64, pred [sum L] float32: video v's curve is
    pred[offset[v]:offset[v + 1]]; attrs fps, rule) and timelines.csv (video, frame, time_s, pred;
    pred empty where no clip covers the frame)."""
    out = Path(out)
    offset = np.concatenate([[0], np.cumsum([len(t.pred) for t in lines])]).astype(np.int64)
    fps = lines[0].fps if lines else 0.0

    def write_h5(tmp: Path):
        with h5py.File(tmp, "w") as f:
            f.create_dataset("video", data=np.asarray([t.video for t in lines], dtype=object), dtype=H5_STR)
            f.create_dataset("offset", data=offset)
            f.create_dataset("pred", data=np.concatenate([t.pred for t in lines]) if lines else np.zeros(0, np.float32))
            f.attrs["fps"], f.attrs["rule"] = fps, JOIN_RULE

    def write_csv(tmp: Path):
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["video", "frame", "time_s", "pred"])
            for t in lines:
                for j, v in enumerate(t.pred):
                    w.writerow([t.video, j, f"{j / t.fps:.4f}", "" if np.isnan(v) else f"{v:.4f}"])

    atomic_write(out / TIMELINES_H5, write_h5)
    atomic_write(out / TIMELINES_CSV, write_csv)
    return [out / TIMELINES_H5, out / TIMELINES_CSV]


def onset_rows(lines: list[Timeline], peak_params: dict | None = None) -> list[dict]:
    """Every onset of every timeline: {video, time_s (from the video's first frame), frame, strength}."""
    rows = []
    for t in lines:
        frames, strengths = t.onsets(peak_params)
        rows += [{"video": t.video, "time_s": round(float(f) / t.fps, 4), "frame": int(f),
                  "strength": round(float(s), 4)} for f, s in zip(frames, strengths)]
    return rows


def write_onsets(out: Path, lines: list[Timeline], peak_params: dict | None = None) -> list[dict]:
    """onsets.csv (video, time_s, frame, strength) and onsets.json (the same rows, with fps, the
    peak picker's settings and the join rule). Returns the rows."""
    out = Path(out)
    rows = onset_rows(lines, peak_params)
    record = {"fps": lines[0].fps if lines else None, "peak_params": {**PEAK_PARAMS, **(peak_params or {})},
              "time": "seconds from the video's first frame", "join_rule": JOIN_RULE,
              "videos": len(lines), "onsets": rows}

    def write_csv(tmp: Path):
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["video", "time_s", "frame", "strength"])
            w.writeheader()
            w.writerows(rows)

    atomic_write(out / ONSETS_CSV, write_csv)
    atomic_write_text(out / ONSETS_JSON, json.dumps(record, indent=1) + "\n")
    return rows
