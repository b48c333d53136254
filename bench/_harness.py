"""The one timing helper of ``bench/``: honest, comparable numbers in every bench.

- contenders run interleaved in one process (round robin), so that a change of load
  hits all of them alike;
- each figure is the median of at least ``MIN_REPEATS`` rounds (``--quick`` takes fewer
  and says so: a smoke run, not a figure for the record);
- torch's CPU threads are fixed (``--threads``, default 1);
- the load average is printed before and after, with a ``# WARNING`` line when the
  1-minute load at the start exceeds ``LOAD_LIMIT``; a bench first waits (``--settle``,
  up to 90 s) for the load to fall below it, so that in ``make bench`` the decaying
  load of the bench before does not count as other work;
- every result is a ``name: ratio`` line, and the absolute time of each contender
  is printed beside it (``# name: ours 7.9 ms, torchdiffeq 18.9 ms``).

Use::

    parser = argparse.ArgumentParser(...)
    add_arguments(parser)
    h = Harness(parser.parse_args(), "what this bench measures")
    t = h.time({"ours": run_ours, "torchdiffeq": run_theirs})
    h.times("case", t)
    h.ratio("case_speedup_vs_torchdiffeq", t["torchdiffeq"] / t["ours"], goal=(">=", 3.0))
    h.finish()
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping

import torch

MIN_REPEATS = 5
LOAD_LIMIT = 0.5
SETTLE_S = 90.0


def add_arguments(parser: argparse.ArgumentParser, *, repeats: int = MIN_REPEATS,
                  quick: int = 2) -> None:
    """``--threads``, ``--repeats`` and ``--quick``; ``repeats``/``quick`` are this bench's defaults."""
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"timed rounds per contender, the median is reported (default {repeats}; "
                             f"at least {MIN_REPEATS} for figures to keep)")
    parser.add_argument("--quick", action="store_true",
                        help=f"{quick} rounds: a smoke run, not figures for the record (no --settle wait)")
    parser.add_argument("--settle", type=float, default=SETTLE_S, metavar="SECONDS",
                        help=f"wait up to this long for the 1-minute load to fall below {LOAD_LIMIT} "
                             f"before timing (default {SETTLE_S:g}; 0: start at once)")
    parser.set_defaults(_default_repeats=repeats, _quick_repeats=quick)


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def settle(timeout: float) -> float:
    """Sleep until the 1-minute load is below ``LOAD_LIMIT`` or ``timeout`` s passed; seconds waited."""
    start = time.monotonic()
    while os.getloadavg()[0] > LOAD_LIMIT and time.monotonic() - start < timeout:
        time.sleep(1.0)
    return time.monotonic() - start


def fmt_seconds(s: float) -> str:
    """``1.23 s``, ``7.90 ms`` or ``12.3 us``."""
    if s >= 1.0:
        return f"{s:.3g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} us"


class Harness:
    """Fixes the threads, prints the header and the load, times and reports contenders."""

    def __init__(self, args: argparse.Namespace, title: str) -> None:
        if args.threads < 1:
            raise SystemExit(f"--threads={args.threads} is not accepted; expected >= 1")
        torch.set_num_threads(args.threads)
        if args.repeats is not None:
            self.repeats = args.repeats
        else:
            self.repeats = args._quick_repeats if args.quick else args._default_repeats
        if self.repeats < 1:
            raise SystemExit(f"--repeats={self.repeats} is not accepted; expected >= 1")
        print(f"# {title}")
        print(f"# python {platform.python_version()}, torch {torch.__version__}, "
              f"threads {torch.get_num_threads()}, {os.cpu_count()} cpus, "
              f"median of {self.repeats} interleaved rounds")
        print(f"# command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
        waited = settle(0.0 if args.quick else args.settle)
        if waited:
            print(f"# waited {waited:.0f} s for the 1-minute load to fall below {LOAD_LIMIT}")
        load1 = os.getloadavg()[0]
        print(f"# load average at start: {load_average()}")
        if load1 > LOAD_LIMIT:
            print(f"# WARNING: 1-minute load {load1:.2f} > {LOAD_LIMIT} at start: other work is "
                  "running, these timings are not comparable")
        if self.repeats < MIN_REPEATS:
            print(f"# WARNING: {self.repeats} rounds < {MIN_REPEATS}: a smoke run, not figures "
                  "for the record")
        sys.stdout.flush()

    def time(
        self,
        contenders: Mapping[str, Callable[[], object]],
        *,
        inner: int = 1,
        warmup: int = 1,
        repeats: int | None = None,
    ) -> dict[str, float]:
        """Median seconds of one call of each contender.

        Each round calls every contender ``inner`` times in turn (round robin), after
        ``warmup`` untimed calls of each.
        """
        rounds = self.repeats if repeats is None else repeats
        for _ in range(warmup):
            for fn in contenders.values():
                fn()
        samples: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(rounds):
            for name, fn in contenders.items():
                start = time.perf_counter()
                for _ in range(inner):
                    fn()
                samples[name].append((time.perf_counter() - start) / inner)
        return {name: statistics.median(v) for name, v in samples.items()}

    @staticmethod
    def times(name: str, seconds: Mapping[str, float], extra: str = "") -> None:
        """``# name: ours 7.9 ms, torchdiffeq 18.9 ms``: the absolute time of each contender."""
        body = ", ".join(f"{k} {fmt_seconds(v)}" for k, v in seconds.items())
        print(f"# {name}: {body}{extra}", flush=True)

    @staticmethod
    def ratio(name: str, value: float, *, goal: tuple[str, float] | None = None,
              note: str = "", digits: int = 3) -> bool | None:
        """Print ``name: value`` and, with ``goal=(">=", 3.0)``, whether the goal is met."""
        line = f"{name}: {value:.{digits}g}"
        met = None
        if goal is not None:
            op, target = goal
            met = value >= target if op == ">=" else value <= target
            line += f"   [goal {op} {target:g}: {'met' if met else 'NOT met'}]"
        if note:
            line += f"   ({note})"
        print(line, flush=True)
        return met

    @staticmethod
    def note(text: str) -> None:
        print(f"# {text}", flush=True)

    @staticmethod
    def finish() -> None:
        print(f"# load average at end: {load_average()}", flush=True)
