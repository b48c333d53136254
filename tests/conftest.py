"""Shared test settings: few threads (CI has 2 cores), a deterministic hypothesis profile;
the ``rank_pids`` fixture finds the processes torchrun started for a run."""

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import settings

torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")

settings.register_profile("ci", deadline=None, max_examples=50, derandomize=True)
settings.load_profile("ci")


def _rank_pids(marker: str) -> dict[int, int]:
    """RANK -> pid of the ranks torchrun started whose command line holds ``marker`` (a run folder)."""
    pids = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in cmd and "infdepth" in cmd and "torch.distributed.run" not in cmd:
            ranks = [e for e in environ if e.startswith(b"RANK=")]
            if ranks:
                pids[int(ranks[0].split(b"=")[1])] = int(proc.name)
    return pids


@pytest.fixture
def rank_pids() -> Callable[[str], dict[int, int]]:
    """``marker -> {RANK: pid}`` of the processes torchrun started for the run folder ``marker``."""
    return _rank_pids
