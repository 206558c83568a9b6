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
