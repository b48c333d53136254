"""What every experiment shares: flags derived from its ``Config``, comma lists, run context, figures.

The command-line half (:func:`option`, :func:`add_config_arguments`, the list parsers, ...)
lives torch-free in :mod:`infdepth.experiments._flags` and is re-exported here.  An
experiment is a torch-free ``*_config`` module (its ``Config``, ``add_arguments`` and
``register``, so that ``--help`` imports no torch) and a module with the work:

- ``Config``: a frozen dataclass, the *only* place its defaults are written; each field
  made with :func:`option` carries its ``--help`` text, and ``__post_init__`` validates
  with the validators of :mod:`infdepth.errors`, naming the flag;
- ``add_arguments(parser)``: :func:`add_config_arguments` derives the flags from ``Config``;
  ``register`` sets the command's ``func`` with :func:`deferred`;
- ``run(config, ctx) -> summary``: does the work, writes into ``ctx.out``, returns a dict.

:func:`config_from_args` turns parsed flags back into a ``Config`` and so runs every
check before anything is written.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from infdepth import distributed
from infdepth.errors import InputError, check_int
from infdepth.errors import check_allocatable as check_allocatable  # re-exported: the experiments size checks
from infdepth.experiments._flags import *  # noqa: F403  (re-exported: the torch-free command-line half)
from infdepth.experiments._flags import config_from_args

C = TypeVar("C")

# ---------------------------------------------------------------- run context


@dataclass(frozen=True)
class RunContext:
    """Where and how an experiment runs: its run folder, resume/overwrite, progress, ranks."""

    out: Path
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    dist: distributed.DistContext = field(default_factory=distributed.current)

    @property
    def is_main(self) -> bool:
        """Whether this process prints and writes (rank 0, or the only process)."""
        return self.dist.is_main

    def say(self, text: str) -> None:
        """Print on the main process only."""
        if self.is_main:
            print(text, flush=True)



def run_from_args(
    config_cls: type[C], run: Callable[[C, RunContext], dict[str, Any]], args: argparse.Namespace
) -> tuple[dict[str, Any], RunContext]:
    """Validate the flags into ``config_cls``, set up the run context, run: what every ``main`` does."""
    config = config_from_args(config_cls, args)
    ctx = context_from_args(args)
    return run(config, ctx), ctx


def context_from_args(args: argparse.Namespace) -> RunContext:
    """The :class:`RunContext` of the run flags; sets the torch thread count."""
    cores = os.cpu_count() or 1
    threads = check_int("--threads", args.threads, low=0)
    if threads > cores:  # more would only oversubscribe, and each thread reserves memory
        raise InputError(f"--threads={threads} is not accepted; this machine has {cores} cores: "
                         f"expected an integer in [0, {cores}]")
    if threads:
        torch.set_num_threads(threads)
    return RunContext(
        out=Path(args.out),
        resume=bool(getattr(args, "resume", False)),
        overwrite=bool(getattr(args, "overwrite", False)),
        progress=not getattr(args, "no_progress", False),
    )


# ---------------------------------------------------------------- parallel runs

R = TypeVar("R")


#: seconds a terminated pool worker gets for its clean exit before it is ended hard
TERM_GRACE = 5.0


def _die_with_parent(parent: int) -> None:
    """Pool initializer: end this worker as soon as the process that started it is gone.

    A killed command must not leave workers training and writing into its run folder;
    checkpoints are atomic and a torn last metrics line is ignored on reading.  Ctrl-C
    reaches the whole process group: the parent alone answers it (one line) and ends the
    pool, whose SIGTERM a worker turns into a clean exit (a checkpoint being written is
    dropped, the last one stays).

    The clean exit is a ``SystemExit`` raised on the main thread, which can be lost:
    Python ignores it inside a ``__del__``, a weakref callback or an atexit handler, and
    a main thread blocked in C (the task queue's lock, which a terminating pool holds)
    never runs the handler when another thread took the signal.  ``Pool.terminate``
    waits for its workers, so a lost exit hung it forever.  The watch thread therefore
    also hears SIGTERM (Python writes every handled signal's number to the wakeup fd,
    whichever thread took it) and ends the worker hard ``TERM_GRACE`` seconds later.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    heard, tell = os.pipe()
    os.set_blocking(tell, False)
    signal.set_wakeup_fd(tell, warn_on_full_buffer=False)

    def watch() -> None:
        while os.getppid() == parent:
            if select.select([heard], [], [], 0.5)[0] and signal.SIGTERM in os.read(heard, 64):
                time.sleep(TERM_GRACE)
                os._exit(128 + signal.SIGTERM)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def parallel_imap(worker: Callable[[Any], R], items: Iterable[Any], processes: int) -> Iterator[R]:
    """``worker(item)`` for every item, in the order they finish, from ``processes`` processes.

    ``processes <= 1`` runs them here, one after the other.  Otherwise the workers are
    spawned (``worker`` and the items must pickle), die with this process, and exit on
    their own at the end: a pool's exit would terminate them, and a worker killed that
    way leaves its tqdm lock's semaphore to Python's resource tracker.
    """
    if processes <= 1:
        for item in items:
            yield worker(item)
        return
    with mp.get_context("spawn").Pool(processes, _die_with_parent, (os.getpid(),)) as pool:
        yield from pool.imap_unordered(worker, items)
        pool.close()
        pool.join()


# ---------------------------------------------------------------- data order


def steps_per_epoch(n: int, batch_size: int, *, drop_last: bool = False) -> int:
    """Batches per epoch of ``n`` examples (the last one smaller, or dropped with ``drop_last``)."""
    return n // batch_size if drop_last else math.ceil(n / batch_size)


def epoch_batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, *, drop_last: bool = False
) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    """``step -> (inputs, targets)``: the global batch of ``step``, a pure function of ``step``.

    Each epoch is a permutation seeded by ``(seed, epoch)``, cut into batches of
    ``batch_size``; the last incomplete one is smaller, or dropped with ``drop_last`` (so
    that every global batch splits evenly over the ranks).  Pure in ``step``, so a
    resumed run sees the same batches without any data-loader state.
    """
    n = len(x)
    per_epoch = steps_per_epoch(n, batch_size, drop_last=drop_last)
    order: dict[int, torch.Tensor] = {}  # this epoch's permutation, recomputed from the seed

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, i = divmod(step, per_epoch)
        if epoch not in order:
            order.clear()
            gen = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)
            order[epoch] = torch.randperm(n, generator=gen).to(x.device)
        idx = order[epoch][i * batch_size : (i + 1) * batch_size]
        return x[idx], y[idx]

    return batch


# ---------------------------------------------------------------- sizes, figures, statistics


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> None:
    """Save a matplotlib figure as a PNG (100 dpi) and close it."""
    fig.savefig(path, dpi=100, bbox_inches="tight")
    pyplot().close(fig)


def mean_ci(x: Sequence[float] | np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and half-width of the normal 95% confidence interval along ``axis``."""
    a = np.asarray(x, dtype=float)
    n = a.shape[axis]
    return a.mean(axis), 1.96 * a.std(axis, ddof=1) / math.sqrt(n)


def count_params(module: torch.nn.Module, *, trainable: bool = True) -> int:
    """Number of (trainable) parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)
