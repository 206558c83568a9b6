"""Fixtures shared by the test suite.

Libraries hold the helpers (tests import from them, never from another test module):
  tests/mediakit.py    tiny real videos with known frames and sound
  tests/badfiles.py    the bad-video corpus and annotation lists
  tests/modelkit.py    model3d_1's published layout, random checkpoints, a functional reference
  tests/cachekit.py    small learnable feature caches
  tests/runkit.py      the CLI in a child process, kill -9 and resume, comparing cache trees
This file holds the fixtures built on them.
"""
from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """One torch thread for the test: the machine's 2 cores are shared, and in-process numbers must
    match the child processes, which run with OMP_NUM_THREADS=1 (runkit.ENV)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- --cpu-durations
# Wall-clock durations swing with the load on a shared machine; CPU seconds (this process and the
# child processes it waited for) do much less, so the suite's cost can be compared across runs.

def pytest_addoption(parser):
    parser.addoption("--cpu-durations", type=int, default=None, metavar="N",
                     help="show the N tests that used the most CPU seconds (process + waited-for children)")


def _cpu_seconds() -> float:
    import resource
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


_CPU: dict[str, float] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    start = _cpu_seconds()
    yield
    _CPU[item.nodeid] = _cpu_seconds() - start      # setup + call + teardown, module fixtures included


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    n = config.getoption("--cpu-durations")
    if n is None or not _CPU:
        return
    terminalreporter.section(f"most CPU seconds (of {sum(_CPU.values()):.1f} s in all)")
    for nodeid, seconds in sorted(_CPU.items(), key=lambda kv: -kv[1])[:n or None]:
        terminalreporter.write_line(f"{seconds:8.2f}s  {nodeid}")
