"""The CLI in child processes, killed with SIGKILL and resumed, and the checks on what a killed run
left: the helpers the crash and load tests share.

A library, not a test module: tests import from here, never from each other.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from pipeline import cache as cachemod
from pipeline import shards as shardsmod

# Children get one math thread each: the machine is shared, and both runs of a comparison must use
# the same thread count for bit-identical numbers.
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
EXTRACT = ["--size", "32", "--calibration-clips", "4", "--quiet"]     # tiny, fast extraction settings
CLI_TIMEOUT = 300
ROOT = Path(__file__).resolve().parents[1]


def foleycache(*args, check: bool = False, env: dict | None = ENV, timeout: float | None = CLI_TIMEOUT,
               cwd=ROOT) -> subprocess.CompletedProcess:
    """`python -m pipeline ARGS` in its own process, output captured. check: exit 0 or fail with the
    end of stderr. env=None keeps this process's environment (its thread counts)."""
    proc = subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=cwd)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def assert_one_line_error(output: str, *needles: str):
    """A user error: one line, 'error: ...', naming what is wrong; no traceback. (The only other line
    allowed before it is the loud warning of a random-init backbone, printed when the run started.)"""
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), output
    assert all(line.startswith("WARNING: --checkpoint none") for line in lines[:-1]), output
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])


def read_metrics(run: Path) -> list[dict]:
    """A run directory's metrics.jsonl, one dict per epoch line."""
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines() if line]


def extract_cmd(videos, annotations, out, *extra, quiet=True) -> list[str]:
    return [sys.executable, "-m", "pipeline", "extract-features", "--videos", str(videos),
            "--annotations", str(annotations), "--out", str(out), *(EXTRACT if quiet else EXTRACT[:-1]),
            *map(str, extra)]


def tree(path: Path) -> dict[str, bytes]:
    """Every file under `path`: relative path -> bytes (for bit-for-bit comparison)."""
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def assert_same_tree(a: Path, b: Path):
    ta, tb = tree(a), tree(b)
    assert sorted(ta) == sorted(tb), (sorted(set(ta) ^ set(tb)))
    different = [name for name in ta if ta[name] != tb[name]]
    assert not different, different


def visible_shards(out: Path) -> list[Path]:
    """Finished shards: exactly shard-NNNNN.zarr / .h5, no temporaries."""
    shards = out / cachemod.SHARDS_DIR
    return sorted(p for p in shards.iterdir() if shardsmod.SHARD_RE.match(p.name)) if shards.is_dir() else []


def temporaries(out: Path) -> list[str]:
    return sorted(p.name for p in out.rglob("*") if re.search(r"\.(tmp|old)-\d+$|\.tmp$", p.name))


def assert_visible_shards_complete(out: Path, shard_size: int, n_candidates: int):
    """Every shard a reader can see holds all its candidates (cached + failed): none is half-written."""
    for path in visible_shards(out):
        k = int(shardsmod.SHARD_RE.match(path.name).group(1))
        meta = shardsmod.read_shard_meta(path)
        expected = min(shard_size, n_candidates - k * shard_size)
        assert meta["attrs"]["count"] + len(meta["attrs"]["failures"]) == expected, (path.name, meta["attrs"])


def kill_and_resume(command: Callable[[], list[str]], progress: Callable[[], int], *, kills: int, seed: int,
                    seconds: float, units: int, unit: str, min_delay: float, max_settle: float, poll: float,
                    check: Callable[[dict], None] = lambda state: None, env: dict | None = None) -> list[dict]:
    """Start `command()` in its own process group and SIGKILL the whole group, `kills` times: even
    tries at a random time in [min_delay, seconds] (`seconds`: how long an uninterrupted run took),
    odd tries up to `max_settle` s after a random number in [1, units) of `unit`s is done
    (`progress()` counts them). `command()` is asked again before each start, so it can add
    --resume once the run exists. After each kill `check(state)` runs (it may add keys); then the
    command runs to the end and must succeed. Returns one state per kill:
    {kill: when, resume: "--resume" in the command, finished: ended before the kill, <unit>s: progress()}.
    """
    env = ENV if env is None else env
    rng, states = random.Random(seed), []
    for n in range(kills):
        cmd = command()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
        if n % 2 == 0:
            delay = rng.uniform(min_delay, seconds)
            how = f"after {delay:.2f} s"
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and proc.poll() is None:
                time.sleep(poll)
        else:
            want, delay = rng.randrange(1, units), rng.uniform(0.0, max_settle)
            how = f"{delay:.2f} s after {unit} {want} of {units}"
            while proc.poll() is None and progress() < want:
                time.sleep(poll / 2)
            time.sleep(delay)
        finished = proc.poll() is not None
        if not finished:
            os.killpg(proc.pid, signal.SIGKILL)     # the CLI and its workers, all at once, like a crash
        proc.wait(timeout=60)
        stderr = proc.stderr.read().decode()
        proc.stderr.close()
        assert "Traceback" not in stderr, stderr
        state = {"kill": how, "resume": "--resume" in cmd, "finished": finished, f"{unit}s": progress()}
        states.append(state)
        check(state)
    proc = subprocess.run(command(), capture_output=True, text=True, env=env, timeout=CLI_TIMEOUT)
    assert proc.returncode == 0, (states, proc.stderr[-2000:])
    return states


def run_until_killed(cmd: list[str], ready: Callable[[], bool], *, env: dict | None = None, cwd=None,
                     timeout: float = 240, poll: float = 0.02) -> bool:
    """Run `cmd` in its own process group, SIGKILL the group as soon as `ready()` holds (or at
    `timeout` s); returns whether the process was still running when it was killed."""
    proc = subprocess.Popen(cmd, env=ENV if env is None else env, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None and not ready():
        time.sleep(poll)
    running = proc.poll() is None
    if running:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    return running
