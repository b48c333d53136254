"""What every experiment shares: flags derived from its ``Config``, comma lists, run context, figures.

An experiment is one module with

- ``Config``: a frozen dataclass, the *only* place its defaults are written; each field
  made with :func:`option` carries its ``--help`` text, and ``__post_init__`` validates
  with the validators of :mod:`infdepth.errors`, naming the flag;
- ``add_arguments(parser)``: :func:`add_config_arguments` derives the flags from ``Config``;
- ``run(config, ctx) -> summary``: does the work, writes into ``ctx.out``, returns a dict.

:func:`config_from_args` turns parsed flags back into a ``Config`` and so runs every
check before anything is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import multiprocessing as mp
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from infdepth import distributed
from infdepth.errors import InputError, check_int
from infdepth.errors import check_allocatable as check_allocatable  # re-exported: the experiments size checks

C = TypeVar("C")


# ---------------------------------------------------------------- numbers on the command line

#: the largest integer a flag takes: torch and NumPy hold counts and seeds in 64 bits
INT_MAX = 2**63 - 1
#: seeds are integers in [0, SEED_MAX] (NumPy's range; derived seeds stay within 64 bits)
SEED_MAX = 2**32 - 1
#: the most sub-layers a learned-depth flag may ask for at once (``--w0``, ``--grow-step``):
#: each is built when the run starts or grows, so a larger value only stalls the run
MAX_SUBLAYERS = 10_000


def _ascii(text: str, what: str) -> str:
    # int() and float() read any script's digits ("١٢" is 12): a flag takes ASCII only
    if not text.isascii():
        raise ValueError(f"{text!r} is not {what} (ASCII digits only)")
    return text


def _int(text: str) -> int:
    try:
        return int(_ascii(text, "an integer"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def integer(text: str) -> int:
    """argparse type: an integer written in ASCII digits, within 64 bits (``|n| <= 2**63 - 1``)."""
    value = _int(text)
    if abs(value) > INT_MAX:
        raise argparse.ArgumentTypeError(f"{text} is not accepted; expected an integer of at most {INT_MAX}")
    return value


def number(text: str) -> float:
    """argparse type: a number written in ASCII (the ``Config`` checks its range and finiteness)."""
    try:
        return float(_ascii(text, "a number"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def seed(text: str) -> int:
    """argparse type: a seed, an integer in ``[0, SEED_MAX]``."""
    value = _int(text)
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"{text} is not accepted; expected a seed in [0, {SEED_MAX}]")
    return value


def out_path(text: str) -> Path:
    """argparse type of ``--out``: a non-empty path (an empty one would mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not accepted; expected a folder name")
    if "\0" in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not accepted; a path holds no NUL character")
    return Path(text)


# ---------------------------------------------------------------- comma-separated lists


def _listed(text: str, kind: Callable[[str], Any], what: str, *, unique: bool = True) -> tuple[Any, ...]:
    try:
        values = tuple(kind(v.strip()) for v in text.split(",") if v.strip())
    except (ValueError, argparse.ArgumentTypeError) as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {what} ({exc})") \
            from None
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} is empty; expected at least one value")
    if unique and len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text!r} repeats an entry; give each value once")
    return values


def int_list(text: str) -> tuple[int, ...]:
    """argparse type: ``"1,2,8"`` -> ``(1, 2, 8)`` (non-empty, no repeats)."""
    return _listed(text, integer, "integers")


def seed_list(text: str) -> tuple[int, ...]:
    """argparse type: ``"0,1,2"`` -> ``(0, 1, 2)``, seeds in ``[0, SEED_MAX]`` (non-empty, no repeats)."""
    return _listed(text, seed, "seeds")


def int_tuple(text: str) -> tuple[int, ...]:
    """argparse type: ``"2,2,0"`` -> ``(2, 2, 0)``, one value per position (repeats allowed)."""
    return _listed(text, integer, "integers", unique=False)


def float_list(text: str) -> tuple[float, ...]:
    """argparse type: ``"0.5,1,2"`` -> ``(0.5, 1.0, 2.0)`` (non-empty, no repeats)."""
    return _listed(text, number, "numbers")


def str_list(text: str) -> tuple[str, ...]:
    """argparse type: ``"relu,tanh"`` -> ``("relu", "tanh")`` (non-empty, no repeats)."""
    return _listed(text, str, "names")


def _show(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) or "none"
    return str(value)


# ---------------------------------------------------------------- Config -> flags


def option(
    default: Any,
    help: str,
    *,
    type: Callable[[str], Any] | None = None,
    flag: str | None = None,
    cli: bool = True,
) -> Any:
    """A ``Config`` field with its ``--help`` text (``type`` for lists or optional values)."""
    return field(default=default, metadata={"help": help, "type": type, "flag": flag, "cli": cli})


def flag_of(config_cls: type, name: str) -> str:
    """The command-line flag of a ``Config`` field (``batch_size`` -> ``--batch-size``)."""
    for f in fields(config_cls):
        if f.name == name and f.metadata.get("flag"):
            return str(f.metadata["flag"])
    return "--" + name.replace("_", "-")


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """One flag per field of the dataclass ``config_cls``, its default and help from the field."""
    for f in fields(config_cls):
        if not f.metadata.get("cli", True):
            continue
        default = f.default
        helptext = f.metadata.get("help", "")
        name = flag_of(config_cls, f.name)
        if isinstance(default, bool):
            if default:
                raise TypeError(f"{config_cls.__name__}.{f.name}: a flag defaults to off")
            parser.add_argument(name, dest=f.name, action="store_true", help=helptext)
            continue
        kind: Any = f.metadata.get("type") or (type(default) if default is not None else str)
        # every count and number is read the same way: ASCII, within 64 bits; a seed within SEED_MAX
        kind = {int: integer, float: number}.get(kind, kind)
        if f.name in ("seed", "seeds"):
            kind = {integer: seed, int_list: seed_list}.get(kind, kind)
        shown = "%(default)s" if not isinstance(default, tuple) else _show(default)
        # a help that explains its default (or None: unset) says it once, in words
        if default is not None and "default:" not in helptext and "(default" not in helptext:
            helptext = f"{helptext} (default: {shown})"
        parser.add_argument(name, dest=f.name, type=kind, default=default, metavar=f.name.upper(),
                            help=helptext)


def config_from_args(config_cls: type[C], args: argparse.Namespace, **overrides: Any) -> C:
    """The ``Config`` of the parsed flags (validated by its ``__post_init__``)."""
    values = {f.name: getattr(args, f.name) for f in fields(config_cls)  # type: ignore[arg-type]
              if f.metadata.get("cli", True) and hasattr(args, f.name)}
    values.update(overrides)
    return config_cls(**values)


def config_dict(config: Any) -> dict[str, Any]:
    """A ``Config`` as a JSON-ready dict (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


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


def add_run_arguments(
    parser: argparse.ArgumentParser, default_out: str, *, resumable: bool = False, progress: bool = True
) -> None:
    """``--out`` (and ``--resume``/``--overwrite``, ``--no-progress``, ``--threads``) for a command."""
    parser.add_argument("--out", type=out_path, default=Path(default_out),
                        help="run folder (default: %(default)s)")
    if resumable:
        parser.add_argument("--resume", action="store_true",
                            help="continue the run in --out from its last checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the previous run in --out instead of refusing")
    if progress:
        parser.add_argument("--no-progress", action="store_true", help="no progress bars or per-epoch lines")
    parser.add_argument("--threads", type=integer, default=1,
                        help="torch CPU threads per process, at most the machine's cores (0: torch's "
                        "default; 1 is fastest on a shared machine) (default: %(default)s)")


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
