"""Manifests: which clips a cache holds. Reading, class filtering, id validation, windows, finding videos.

Four layouts, one list of `Annotation`s:
- Something-Something v2 JSON (any other extension): a list of {"id", "label", "template",
  "placeholders"}; the video is VIDEOS_DIR/{id}.webm (or .mp4, .mkv, ...). The labels file maps a
  template without brackets to a class index ("Dropping something onto something": "12").
- CSV (.csv, .tsv) with a header row, or JSON Lines (.jsonl, .ndjson): one clip per row, `video` (a
  file name or relative path inside the videos folder, extension optional), optional `start`
  (seconds, default 0), `label`, `id` (default: the video's stem, plus `@<start in ms>` when a
  start is given). Other columns are ignored.
- A folder (`none`: the videos folder itself, or a folder inside it): every video in it, labelled by
  the sub-folder it sits in (the ImageFolder convention).
- Any of them tiled into windows (`window_stride`): each video cut into clips of frames / fps
  seconds every stride seconds, ids `{stem}@{start in ms}`.
A malformed manifest is a FoleyError naming the file and the line; ids are plain file stems (a
window's adds `@ms`), never paths, and a video path never leaves the videos folder.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from pipeline.errors import FoleyError
from pipeline.fsio import read_json
from pipeline.media import FPS, FRAMES, MIN_FRAMES, FaultyVideo, video_duration

# The 12 templates of the seed experiment: interactions with a distinct sound.
SOUND12 = (
    "Hitting [something] with [something]",
    "Throwing [something] against [something]",
    "Throwing [something] onto a surface",
    "Dropping [something] onto [something]",
    "Dropping [something] into [something]",
    "Dropping [something] behind [something]",
    "Dropping [something] in front of [something]",
    "[Something] colliding with [something] and both are being deflected",
    "[Something] being deflected from [something]",
    "[Something] colliding with [something] and both come to a halt",
    "Poking a stack of [something] so the stack collapses",
    "Moving [something] and [something] so they collide with each other",
)
VIDEO_EXTENSIONS = (".webm", ".mp4", ".mkv", ".avi", ".mov")   # searched in this order
_BAD_ID = re.compile(r"[/\\\x00]|^\.|\.\.")
MAX_ID_BYTES = 255 - len(".webm")   # a longer id cannot be a file name (255 bytes on Linux/macOS)
FOLDER = "none"                      # --annotations none: every video in --videos, labelled by sub-folder
ROW_FORMATS = {".csv": ",", ".tsv": "\t", ".jsonl": None, ".ndjson": None}   # suffix -> CSV delimiter
NO_LABEL = "unlabeled"               # the label of a row without one, or of a video in the folder's root


@dataclass(frozen=True)
class Annotation:
    id: str
    template: str            # SSv2: with brackets, as in the annotation file; other manifests: the label
    label: str               # the filled-in label ("Dropping a pen onto a desk"); template if absent
    class_index: int | None  # from the labels file when one is given
    video: str | None = None  # path inside the videos folder; None: VIDEOS_DIR/{id}.{webm,mp4,...}
    start: float = 0.0       # seconds after the video's first frame where the clip begins


def template_key(template: str) -> str:
    """Comparable form of a template: brackets removed, whitespace collapsed, case-folded
    ("Dropping [something] onto [something]" == labels-file key "Dropping something onto something")."""
    return " ".join(template.replace("[", "").replace("]", "").split()).casefold()


def validate_id(video_id) -> str:
    """An id is a plain file stem; anything with a separator, a leading dot or '..' is refused."""
    if isinstance(video_id, bool) or not isinstance(video_id, (str, int)):
        raise FoleyError(f"id {video_id!r} must be a string or an integer")
    video_id = str(video_id)
    if not video_id or _BAD_ID.search(video_id) or video_id != video_id.strip():
        raise FoleyError(f"id {video_id!r} is not a plain file name (no separators, leading dot or '..')")
    try:
        size = len(video_id.encode("utf-8"))
    except UnicodeEncodeError:      # a lone surrogate from JSON: no file name, and no UTF-8 to store
        raise FoleyError(f"id {video_id!r} is not valid Unicode text") from None
    if size > MAX_ID_BYTES:
        raise FoleyError(f"id {video_id[:40]!r}... is {len(video_id)} characters: too long for a file name")
    return video_id


def load_labels(path: str | os.PathLike) -> dict[str, int]:
    """Labels file -> {template_key: class index}."""
    raw = read_json(path, "labels file")
    if not isinstance(raw, dict) or not raw:
        raise FoleyError(f"{path}: a labels file is a non-empty JSON object {{template: index}}")
    labels = {}
    for template, index in raw.items():
        try:
            labels[template_key(template)] = int(index)
        except (TypeError, ValueError):
            raise FoleyError(f"{path}: class index of {template!r} is {index!r}, not an integer") from None
    return labels


def resolve_classes(classes: str | os.PathLike) -> set[str] | None:
    """--classes: 'sound12', 'all' (None: no filter) or a text file of templates (or labels), one per line."""
    if str(classes) == "sound12":
        return {template_key(t) for t in SOUND12}
    if str(classes) == "all":
        return None
    path = Path(classes)
    if not path.is_file():
        raise FoleyError(f"--classes must be sound12, all or a file of templates; {classes} is none of them")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    keys = {template_key(line) for line in lines if line and not line.startswith("#")}
    if not keys:
        raise FoleyError(f"{path}: no templates in the --classes file")
    return keys


def load_annotations(path: str | os.PathLike, classes: str | os.PathLike | None = None,
                     labels_path: str | os.PathLike | None = None, *, videos: str | os.PathLike | None = None,
                     window_stride: float | None = None, frames: int = FRAMES,
                     fps: float = FPS) -> list[Annotation]:
    """The clips of a manifest, of the chosen classes, in file order (windows of a video in time order).

    path: an SSv2 JSON, a CSV / TSV / JSON Lines manifest, or FOLDER ("none", every video in
    `videos`) or a directory inside `videos` (see the module docstring).
    classes: 'sound12', 'all' or a file of templates / labels; None: sound12 for an SSv2 JSON,
    all for the other layouts (their labels are the user's own).
    videos: the videos folder; needed by a folder manifest and by windows (durations are read
    from the headers).
    window_stride: tile every clip's video from its start into windows of frames / fps seconds,
    one every `window_stride` seconds while at least MIN_FRAMES real frames are left.
    Refused with a FoleyError naming the file and entry or line: malformed file or row, missing
    column, empty manifest, bad start, a path leaving the videos folder, a bad or duplicate id,
    and (with a labels file) a label the labels file does not know.
    """
    if window_stride is not None and (not math.isfinite(window_stride) or window_stride <= 0):
        raise FoleyError(f"--window-stride must be a positive number of seconds, got {window_stride}")
    if window_stride is not None and videos is None:
        raise FoleyError("--window-stride needs the videos folder (it reads every video's duration)")
    kind = manifest_kind(path)
    if classes is None:
        classes = "sound12" if kind == "ssv2" else "all"
    if kind == "ssv2":
        entries = _load_ssv2(path, classes, labels_path)
    else:
        rows = _folder_rows(path, videos) if kind == "folder" else _read_rows(Path(path))
        entries = _row_annotations(rows, path, classes, labels_path)
    if window_stride is not None:
        entries = tile_windows(entries, videos, window_stride, frames, fps)
    return entries


def manifest_kind(path: str | os.PathLike) -> str:
    """'folder' (FOLDER or a directory), 'rows' (CSV / TSV / JSON Lines) or 'ssv2' (anything else)."""
    if str(path) == FOLDER or Path(path).is_dir():
        return "folder"
    return "rows" if Path(path).suffix.lower() in ROW_FORMATS else "ssv2"


def manifest_source(path: str | os.PathLike) -> str:
    """What a cache or run records as its manifest: FOLDER, or the manifest's absolute path."""
    return FOLDER if str(path) == FOLDER else str(Path(path).resolve())


def manifest_sha256(entries: list[Annotation]) -> str:
    """Hash of a manifest's clips (a cache belongs to one). An SSv2 clip hashes as it always has
    (id, template), so caches made before other layouts existed resume as they are."""
    def line(a: Annotation) -> str:
        where = f"\t{a.video}\t{a.start!r}" if a.video is not None or a.start else ""
        return f"{a.id}\t{a.template}{where}"
    return hashlib.sha256("\n".join(line(a) for a in entries).encode()).hexdigest()


def _load_ssv2(path, classes, labels_path) -> list[Annotation]:
    raw = read_json(path, "annotations file")
    if not isinstance(raw, list):
        raise FoleyError(f"{path}: an annotation file is a JSON list of entries, got {type(raw).__name__}")
    if not raw:
        raise FoleyError(f"{path}: the annotation list is empty")
    labels = load_labels(labels_path) if labels_path is not None else None
    wanted = resolve_classes(classes)
    seen: set[str] = set()
    entries = []
    for n, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise FoleyError(f"{path}: entry {n} is {type(entry).__name__}, not an object")
        for key in ("id", "template"):
            if key not in entry:
                raise FoleyError(f"{path}: entry {n} has no {key!r} key")
        try:
            video_id = validate_id(entry["id"])
        except FoleyError as e:
            raise FoleyError(f"{path}: entry {n}: {e}") from None
        if video_id in seen:
            raise FoleyError(f"{path}: id {video_id!r} appears more than once (entry {n})")
        seen.add(video_id)
        template = entry["template"]
        # (a lone surrogate from JSON does not survive the UTF-8 round trip the shards make)
        if not isinstance(template, str) or template != template.encode("utf-8", "replace").decode("utf-8"):
            raise FoleyError(f"{path}: entry {n} (id {video_id}): template is not a string of valid Unicode text")
        key = template_key(template)
        if labels is not None and key not in labels:
            raise FoleyError(f"{path}: entry {n} (id {video_id}): template {template!r} is not in the labels file")
        if wanted is not None and key not in wanted:
            continue
        label = entry.get("label") if isinstance(entry.get("label"), str) else template
        entries.append(Annotation(video_id, template, label, labels[key] if labels else None))
    if not entries:
        raise FoleyError(f"{path}: none of its {len(raw)} entries is in --classes {classes}")
    return entries


# --- CSV / JSON Lines / folder manifests -----------------------------------------------------

def _read_rows(path: Path) -> list[tuple[str, dict]]:
    """[(where, row)] of a CSV / TSV (header row first) or JSON Lines file; where = 'line N'."""
    if not path.is_file():
        raise FoleyError(f"annotations file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")             # a spreadsheet's BOM is no column name
    except (OSError, UnicodeDecodeError) as e:
        raise FoleyError(f"{path}: cannot read the manifest ({e})") from None
    if not text.strip():
        raise FoleyError(f"{path}: the manifest is empty")
    delimiter = ROW_FORMATS[path.suffix.lower()]
    rows = _csv_rows(path, text, delimiter) if delimiter else _jsonl_rows(path, text)
    if not rows:
        raise FoleyError(f"{path}: the manifest has no rows")
    return rows


def _csv_rows(path: Path, text: str, delimiter: str) -> list[tuple[str, dict]]:
    reader = csv.reader(text.splitlines(), delimiter=delimiter)
    try:
        header = [h.strip() for h in next(reader)]
        if "video" not in header:
            raise FoleyError(f"{path}: line 1: no 'video' column (the header is {delimiter.join(header)!r})")
        rows = []
        for fields in reader:
            where = f"line {reader.line_num}"
            if not any(f.strip() for f in fields):
                continue                                        # a blank line
            if len(fields) != len(header):
                raise FoleyError(f"{path}: {where}: {len(fields)} fields, the header has {len(header)}")
            rows.append((where, dict(zip(header, (f.strip() for f in fields)))))
    except csv.Error as e:
        raise FoleyError(f"{path}: line {reader.line_num}: not valid CSV ({e})") from None
    return rows


def _jsonl_rows(path: Path, text: str) -> list[tuple[str, dict]]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise FoleyError(f"{path}: line {n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise FoleyError(f"{path}: line {n}: a row is a JSON object, got {type(row).__name__}")
        rows.append((f"line {n}", row))
    return rows


def _folder_rows(path, videos) -> list[tuple[str, dict]]:
    """Every video under the folder (sorted), labelled by its top sub-folder (NO_LABEL in the root)."""
    if videos is None:
        raise FoleyError("a folder manifest needs the videos folder (--videos)")
    videos = Path(videos)
    root = videos if str(path) == FOLDER else Path(path)
    if root.resolve() != videos.resolve() and videos.resolve() not in root.resolve().parents:
        raise FoleyError(f"--annotations {path}: a folder manifest must be --videos or a folder inside it")
    rows = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or Path(name).suffix.lower() not in VIDEO_EXTENSIONS:
                continue
            inside = Path(dirpath, name).relative_to(root)
            label = inside.parts[0] if len(inside.parts) > 1 else NO_LABEL
            rows.append((str(inside), {"video": Path(dirpath, name).relative_to(videos).as_posix(), "label": label}))
    if not rows:
        raise FoleyError(f"no videos ({', '.join(VIDEO_EXTENSIONS)}) in the folder {root}")
    return rows


def _row_annotations(rows, path, classes, labels_path) -> list[Annotation]:
    labels = load_labels(labels_path) if labels_path is not None else None
    wanted = resolve_classes(classes)
    seen: dict[str, str] = {}
    entries = []
    for where, row in rows:
        try:
            a = _row_annotation(row, labels)
        except FoleyError as e:
            raise FoleyError(f"{path}: {where}: {e}") from None
        if a.id in seen:
            raise FoleyError(f"{path}: {where}: id {a.id!r} appears more than once (first at {seen[a.id]})")
        seen[a.id] = where
        if wanted is None or template_key(a.template) in wanted:
            entries.append(a)
    if not entries:
        raise FoleyError(f"{path}: none of its {len(rows)} rows is in --classes {classes}")
    return entries


def _row_annotation(row: dict, labels: dict[str, int] | None) -> Annotation:
    """One manifest row -> Annotation; FoleyError (without file and line) for a bad row."""
    video = row.get("video")
    if not isinstance(video, str) or not video.strip():
        raise FoleyError("no 'video' (a file name or a path inside the videos folder)")
    video = _relative_video_path(video.strip())
    given = row.get("start") not in (None, "")
    start = _parse_start(row["start"]) if given else 0.0
    label = row.get("label")
    if label in (None, ""):
        label = NO_LABEL
    if not isinstance(label, str) or label != label.encode("utf-8", "replace").decode("utf-8"):
        raise FoleyError(f"label {label!r} is not a string of valid Unicode text")
    if labels is not None and template_key(label) not in labels:
        raise FoleyError(f"label {label!r} is not in the labels file")
    video_id = row.get("id")
    if video_id in (None, ""):
        video_id = window_id(PurePosixPath(video).stem, start) if given else PurePosixPath(video).stem
    return Annotation(validate_id(video_id), label, label, labels[template_key(label)] if labels else None,
                      video=video, start=start)


def _relative_video_path(video: str) -> str:
    """A manifest's video path, refused when it could leave the videos folder."""
    pure = PurePosixPath(video)
    if "\\" in video or "\x00" in video or pure.is_absolute() or ".." in pure.parts:
        raise FoleyError(f"video {video!r} must be a relative path inside the videos folder (no '..', "
                         "no leading '/')")
    parts = [p for p in pure.parts if p != "."]
    if not parts:
        raise FoleyError(f"video {video!r} names no file")
    return "/".join(parts)


def _parse_start(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise FoleyError(f"start {value!r} is not a number of seconds")
    try:
        start = float(value)
    except ValueError:
        raise FoleyError(f"start {value!r} is not a number of seconds") from None
    if not math.isfinite(start) or start < 0:
        raise FoleyError(f"start {value!r} must be a finite number of seconds >= 0")
    return start


# --- windows ---------------------------------------------------------------------------------

def window_id(stem: str, start: float) -> str:
    """The id of the clip of video `stem` starting at `start` s: '{stem}@{start in ms}'."""
    return f"{stem}@{int(round(start * 1000))}"


def clip_of_id(clip_id: str) -> Annotation:
    """What an id alone says, for a tool that has no manifest: '{stem}@{ms}' is the video {stem}.*
    from ms / 1000 s, any other id the video {id}.* from its start (the Annotation's id is the stem
    `find_video` looks up)."""
    stem, at, ms = clip_id.rpartition("@")
    if at and stem and ms.isdigit():
        return Annotation(validate_id(stem), "", "", None, start=int(ms) / 1000)
    return Annotation(validate_id(clip_id), "", "", None)


def tile_windows(entries: list[Annotation], videos: str | os.PathLike, stride: float, frames: int = FRAMES,
                 fps: float = FPS) -> list[Annotation]:
    """Each entry's video cut into clips of frames / fps s every `stride` s from the entry's start.

    A window is kept while at least MIN_FRAMES real frames are left in it (the header's duration);
    ids are window_id(video stem, start). A video whose duration cannot be read gives one clip at the
    entry's start, so its failure is recorded when it is decoded, like any faulty video's.
    """
    videos, out, seen = Path(videos), [], set()
    for a in entries:
        stem = PurePosixPath(a.video).stem if a.video is not None else a.id
        video = a.video or a.id             # a window's id is no file name: the clip keeps its video's
        try:
            path = find_video(videos, a)
            video = path.relative_to(videos).as_posix()
            duration = video_duration(path)
            count = max(1, int(math.floor((duration - a.start - MIN_FRAMES / fps) / stride + 1e-9)) + 1)
        except FaultyVideo:
            count = 1
        for k in range(count):
            start = a.start + k * stride
            w = replace(a, id=validate_id(window_id(stem, start)), video=video, start=start)
            if w.id in seen:
                raise FoleyError(f"window {w.id!r} appears twice: two rows tile the same video and start")
            seen.add(w.id)
            out.append(w)
    return out


# --- videos ----------------------------------------------------------------------------------

def find_video(videos_dir: str | os.PathLike, video: str | Annotation) -> Path:
    """The video file of an annotation or an id.

    An annotation with a `video` path: VIDEOS_DIR/video, or with .webm, .mp4, ... appended when it has
    no such file (VGGSound-style rows name a YouTube id). An id, or an annotation without a path:
    VIDEOS_DIR/{id}.webm, else .mp4, .mkv, ...
    Raises FaultyVideo('missing') when there is none, and FaultyVideo('unreadable') for a link that
    resolves outside the videos folder (a manifest can never name a file elsewhere).
    """
    videos_dir = Path(videos_dir)
    if isinstance(video, Annotation) and video.video is not None:
        name = _relative_video_path(video.video)
        bare = videos_dir / name                 # a folder of that name is no video: try the extensions
        candidates = [bare] * (not bare.is_dir()) + [videos_dir / f"{name}{ext}" for ext in VIDEO_EXTENSIONS
                                                     if not name.lower().endswith(ext)]
    else:
        video_id = validate_id(video.id if isinstance(video, Annotation) else video)
        name = f"{video_id}{{{','.join(VIDEO_EXTENSIONS)}}}"
        candidates = [videos_dir / f"{video_id}{ext}" for ext in VIDEO_EXTENSIONS]
    for candidate in candidates:
        if candidate.exists() or candidate.is_symlink():
            try:
                root = videos_dir.resolve()
                target = candidate.resolve()
            except (OSError, RuntimeError) as e:     # a symlink loop: never a video, never a crash
                raise FaultyVideo("unreadable", f"{candidate}: {e}") from None
            if root != target.parent and root not in target.parents:
                raise FaultyVideo("unreadable", f"{candidate} links outside the videos folder ({target})")
            return candidate
    raise FaultyVideo("missing", f"no {name} in {videos_dir}")
