"""The CLI in child processes, killed with SIGKILL and resumed: the loop the crash tests share.

A library, not a test module: tests import from here, never from each other.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from typing import Callable

# Children get one math thread each: the machine is shared, and both runs of a comparison must use
# the same thread count for bit-identical numbers.
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
FINISH_TIMEOUT_S = 300


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
    proc = subprocess.run(command(), capture_output=True, text=True, env=env, timeout=FINISH_TIMEOUT_S)
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
