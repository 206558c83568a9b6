"""Something-Something v2 annotations: reading, class filtering, id validation, finding the videos.

An annotation file is a JSON list of {"id", "label", "template", "placeholders"}; the labels file
maps a template without brackets to a class index ("Dropping something onto something": "12").
A malformed file is a FoleyError naming the file and the problem; an id is a file stem, never a
path, so an annotation can never point outside the videos folder.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import FoleyError
from pipeline.media import FaultyVideo

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


@dataclass(frozen=True)
class Annotation:
    id: str
    template: str            # with brackets, as in the annotation file
    label: str               # the filled-in label ("Dropping a pen onto a desk"); template if absent
    class_index: int | None  # from the labels file when one is given


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


def _read_json(path: Path, what: str):
    path = Path(path)
    if not path.is_file():
        raise FoleyError(f"{what} file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise FoleyError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise FoleyError(f"{path}: cannot read {what} file ({e})") from None


def load_labels(path: str | os.PathLike) -> dict[str, int]:
    """Labels file -> {template_key: class index}."""
    raw = _read_json(path, "labels")
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
    """--classes: 'sound12', 'all' (None: no filter) or a text file of templates, one per line."""
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


def load_annotations(path: str | os.PathLike, classes: str | os.PathLike = "sound12",
                     labels_path: str | os.PathLike | None = None) -> list[Annotation]:
    """Read an SSv2 annotation list and keep the entries of the chosen classes, in file order.

    Refused with a FoleyError naming the file and entry: malformed JSON, not a list, an empty
    list, an entry without id or template, a bad or duplicate id, and (with a labels file) a
    template the labels file does not know.
    """
    raw = _read_json(path, "annotations")
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


def find_video(videos_dir: str | os.PathLike, video_id: str) -> Path:
    """The video file of an id: VIDEOS_DIR/{id}.webm, else .mp4, .mkv, ...

    Raises FaultyVideo('missing') when there is none, and FaultyVideo('unreadable') for a link that
    resolves outside the videos folder (an id can never name a file elsewhere).
    """
    videos_dir = Path(videos_dir)
    video_id = validate_id(video_id)
    for ext in VIDEO_EXTENSIONS:
        candidate = videos_dir / f"{video_id}{ext}"
        if candidate.exists() or candidate.is_symlink():
            try:
                root = videos_dir.resolve()
                target = candidate.resolve()
            except (OSError, RuntimeError) as e:     # a symlink loop: never a video, never a crash
                raise FaultyVideo("unreadable", f"{candidate}: {e}") from None
            if root != target.parent and root not in target.parents:
                raise FaultyVideo("unreadable", f"{candidate} links outside the videos folder ({target})")
            return candidate
    raise FaultyVideo("missing", f"no {video_id}{{{','.join(VIDEO_EXTENSIONS)}}} in {videos_dir}")
