"""Load: a long extraction holds flat memory and leaves a resumable progress record.

The slow test extracts 1,000 synthetic clips at --size 32 and reports the peak resident memory of
the whole process tree (CLI + decode worker) after 100 and after 1,000 clips; the fast one does the
same with 8 clips in shards of 2 (after 4 and 8). While the run goes, the progress record (progress.json + the
finished shards) always says exactly what is done; a run killed half-way resumes from it, redoing
no finished shard, to the same cache as the uninterrupted run.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline import cache as cachemod
from pipeline.cache import FeatureCache
from tests.badfiles import BadFile, write_annotations
from tests.mediakit import make_video
from tests.runkit import ENV, assert_same_tree, assert_visible_shards_complete, extract_cmd, visible_shards

RSS_POLL_S = 0.05


def tree_pids(pid: int) -> list[int]:
    """pid and all its descendants (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def rss_mb(pid: int) -> float:
    """Resident memory of the process tree (sum of VmRSS), MB."""
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return total / 1024


class Watch:
    """Samples a running extraction every RSS_POLL_S: tree RSS and the number of finished shards.
    peak_at[k] = highest tree RSS seen while k shards were finished."""

    def __init__(self, proc: subprocess.Popen, out: Path):
        self.proc, self.out = proc, out
        self.peak, self.peak_at, self.shards_seen = 0.0, {}, []
        self.record_missing = False     # a finished shard but neither progress.json nor cache.json
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while self.proc.poll() is None:
            rss = rss_mb(self.proc.pid)
            done = len(visible_shards(self.out))
            self.peak = max(self.peak, rss)
            self.peak_at[done] = max(self.peak_at.get(done, 0.0), rss)
            self.shards_seen.append(done)
            if done and not (self.out / cachemod.PROGRESS_JSON).exists() \
                    and not (self.out / cachemod.CACHE_JSON).exists():
                self.record_missing = True
            time.sleep(RSS_POLL_S)

    def peak_before(self, shards: int) -> float:
        """Highest tree RSS seen before the `shards`-th shard was finished."""
        return max(v for k, v in self.peak_at.items() if k < shards)

    def join(self):
        self.thread.join(timeout=60)


def make_dataset(root: Path, n: int) -> tuple[Path, Path]:
    """n tiny distinct clips (32x32 VP9 + Opus, 4.1 s, one burst each) and their annotations."""
    videos = root / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        make_video(videos / f"{i:05d}.webm", seconds=4.1, width=32, height=32, impulses=((3 + i % 40 + 0.3) / 12,))
    ann = write_annotations([BadFile(f"{i:05d}", "", "") for i in range(n)], root / "ann.json")
    return videos, ann


def run_watched(cmd, out: Path, kill_after_shards: int | None = None, timeout: float = 3000):
    """Run an extraction, sampling it; optionally SIGKILL it once `kill_after_shards` are finished."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    watch = Watch(proc, out)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if kill_after_shards is not None and len(visible_shards(out)) >= kill_after_shards:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    stdout, stderr = proc.communicate(timeout=120)
    watch.join()
    return proc, watch, stdout, stderr


def check_load(tmp_path: Path, n: int, shard: int, early: int, report: Path | None = None) -> dict:
    videos, ann = make_dataset(tmp_path, n)
    whole = tmp_path / "whole"
    cmd = extract_cmd(videos, ann, whole, "--shard-size", shard)
    start = time.monotonic()
    proc, watch, _, stderr = run_watched(cmd, whole)
    seconds = time.monotonic() - start
    assert proc.returncode == 0, stderr[-2000:]
    assert len(FeatureCache(whole)) == n
    n_shards = n // shard
    early_peak, final_peak = watch.peak_before(early // shard), watch.peak
    result = {"clips": n, "shard_size": shard, "seconds": round(seconds, 1),
              f"peak_rss_mb_at_{early}": round(early_peak, 1), f"peak_rss_mb_at_{n}": round(final_peak, 1)}
    # flat: the last (n - early) clips add at most a few percent over what the first `early` needed
    assert final_peak <= early_peak * 1.10 + 40, result
    assert watch.shards_seen == sorted(watch.shards_seen), "a finished shard disappeared"
    assert not watch.record_missing, "shards on disk without a progress record"

    # The progress record: kill half-way, read it, resume from it.
    killed = tmp_path / "killed"
    half = n_shards // 2
    proc, _, _, stderr = run_watched(extract_cmd(videos, ann, killed, "--shard-size", shard), killed,
                                     kill_after_shards=half)
    assert proc.returncode == -signal.SIGKILL, stderr[-2000:]
    record = json.loads((killed / cachemod.PROGRESS_JSON).read_text())
    assert record["n_shards"] == n_shards and record["fingerprint"] == json.loads(
        (whole / cachemod.CACHE_JSON).read_text())["fingerprint"]
    done = visible_shards(killed)
    assert half <= len(done) < n_shards
    assert_visible_shards_complete(killed, shard, n)
    assert cachemod.pending_shards(killed, n_shards) == [k for k in range(n_shards) if k >= len(done)]
    inodes = {p.name: p.stat().st_ino for p in done}
    proc = subprocess.run(extract_cmd(videos, ann, killed, "--shard-size", shard), capture_output=True, text=True,
                          env=ENV, timeout=3000)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {p.name: p.stat().st_ino for p in visible_shards(killed) if p.name in inodes} == inodes  # not redone
    assert_same_tree(killed, whole)
    result["killed_after_shards"], result["resumed_shards"] = len(done), n_shards - len(done)
    if report is not None:
        report.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return result


def test_flat_memory_and_progress_record_small(tmp_path):
    check_load(tmp_path, n=8, shard=2, early=4)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_flat_memory_and_progress_record_1000_clips(tmp_path):
    """1,000 clips: peak RSS after 100 and after 1,000 (printed, and written to
    $FOLEYCACHE_LOAD_REPORT when set)."""
    report = os.environ.get("FOLEYCACHE_LOAD_REPORT")
    check_load(tmp_path, n=1000, shard=50, early=100, report=Path(report) if report else None)
