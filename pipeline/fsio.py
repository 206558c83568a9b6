"""Files that survive a crash: the one atomic write, fsync, sha256 and JSON reading.

Every file the tool writes for a user (cache index, progress records, run configs, checkpoints,
exported weights, metrics) goes through `atomic_write`: the bytes are written to a temporary name
beside the target, fsynced, renamed over it, and the directory is fsynced, so a `kill -9` or a power
cut leaves either the old file or the new one, whole — never half of one.

Temporary names are `{name}.tmp-{pid}`: in the same directory (so the rename stays on one
filesystem) and carrying the writer's pid, which is how `pipeline.cache` tells a dead writer's
leftovers from a live one's.

This module knows nothing about caches, runs or models; it must not import from the rest of the
package except `pipeline.errors`.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from pipeline.errors import FoleyError

HASH_BLOCK = 1 << 20        # bytes read per step when hashing a file


def temp_name(path: Path) -> Path:
    """Where `path` is written before its rename: same directory, the writer's pid in the name."""
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def fsync_dir(path: Path):
    """fsync a directory, so a rename inside it survives a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path):
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], also: str | os.PathLike | None = None):
    """`write(tmp_path)` creates the file's bytes; they then replace `path` atomically.

    `also`: a second name for the same bytes (a hard link, else a copy), renamed into place first,
    so one write serves two names (checkpoint-last and checkpoint-best)."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        write(tmp)
        fsync_file(tmp)
        if also is not None:
            also = Path(also)
            twin = temp_name(also)
            try:
                os.link(tmp, twin)
            except OSError:             # a filesystem without hard links
                shutil.copyfile(tmp, twin)
            os.replace(twin, also)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str):
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2):
    """JSON with sorted keys and a final newline (diff-friendly), written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike, also: str | os.PathLike | None = None):
    """torch.save(obj) to `path` (and `also`) atomically; one write even with two names."""
    import torch        # here, so that reading JSON does not pay torch's import
    atomic_write(path, lambda tmp: torch.save(obj, tmp), also=also)


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 hex of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def read_jsonl(path: str | os.PathLike) -> list:
    """The parsed lines of a JSON Lines file this tool wrote (blank lines skipped); [] when it is missing."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def read_json(path: str | os.PathLike, what: str, hint: str = "") -> Any:
    """The parsed JSON of `path`. A missing, unreadable or invalid file is a one-line FoleyError
    that names `what` the file is (e.g. "annotations file", "cache index") and the path; `hint`
    (what to do about it) is appended to the messages of a file that exists but cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise FoleyError(f"{what} {path} does not exist")
    tail = f"; {hint}" if hint else ""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise FoleyError(f"{what} {path} is not valid JSON ({e.msg} at line {e.lineno}, "
                         f"column {e.colno}){tail}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise FoleyError(f"{what} {path} cannot be read ({type(e).__name__}: {e}){tail}") from None
