"""The one timing helper of ``bench/``: honest, comparable numbers in every bench.

- contenders run interleaved in one process (round robin), so that a change of load
  hits all of them alike;
- each figure is the median of at least ``MIN_REPEATS`` rounds (``--quick`` takes fewer
  and says so: a smoke run, not a figure for the record);
- torch's CPU threads are fixed (``--threads``, default 1);
- the machine must be idle: a bench first measures the CPU time other processes use over
  ``WINDOW_S`` seconds (``/proc/stat`` less its own) and waits (``--settle``, up to 90 s)
  until that is below ``OTHERS_LIMIT`` cores; a ``# WARNING`` line says when it never
  was.  The load average is printed before and after as well.  (The 1-minute load
  average alone cannot decide: it lags by a minute, so in ``make bench`` it still counts
  the bench before, and waiting for it to decay cost 4-5 minutes of every ``make bench``;
  where ``/proc/stat`` is missing, the load average below ``LOAD_LIMIT`` decides);
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
OTHERS_LIMIT = 0.1  # cores' worth of CPU that other processes may use while a bench times
WINDOW_S = 2.0
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
                        help=f"wait up to this long for other processes' CPU use to fall below "
                             f"{OTHERS_LIMIT} cores before timing (default {SETTLE_S:g}; 0: start at once)")
    parser.set_defaults(_default_repeats=repeats, _quick_repeats=quick)


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def _busy_seconds() -> float | None:
    """CPU seconds all processes have used since boot (``/proc/stat``), None where unreadable."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def others_cpu(window: float = WINDOW_S) -> float | None:
    """Cores' worth of CPU other processes used over the next ``window`` seconds (sleeping).

    All processes' CPU time from ``/proc/stat`` less this process's own (``os.times``);
    None where ``/proc/stat`` cannot be read.
    """
    busy0, own0, start = _busy_seconds(), os.times(), time.monotonic()
    if busy0 is None:
        return None
    time.sleep(window)
    busy1, own1 = _busy_seconds(), os.times()
    assert busy1 is not None
    own = (own1.user + own1.system) - (own0.user + own0.system)
    return max(0.0, busy1 - busy0 - own) / (time.monotonic() - start)


def settle(timeout: float) -> tuple[float, float | None]:
    """Wait until other processes use under ``OTHERS_LIMIT`` cores (where ``/proc/stat`` is
    missing: until the 1-minute load is below ``LOAD_LIMIT``) or ``timeout`` s passed.

    Returns ``(seconds waited, others' CPU in the last window)``.
    """
    start = time.monotonic()
    while True:
        others = others_cpu()
        idle = others < OTHERS_LIMIT if others is not None else os.getloadavg()[0] <= LOAD_LIMIT
        if idle or time.monotonic() - start >= timeout:
            return time.monotonic() - start, others
        if others is None:
            time.sleep(1.0)


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
        self._started = time.monotonic()
        waited, others = settle(0.0 if args.quick else args.settle)
        if waited > WINDOW_S + 1:
            print(f"# waited {waited:.0f} s for other processes' CPU use to fall below "
                  f"{OTHERS_LIMIT} cores")
        print(f"# load average at start: {load_average()}")
        if others is not None:
            print(f"# other processes' CPU use at start: {others:.2f} cores (over {WINDOW_S:g} s; "
                  "the load average also counts the bench before)")
            busy = others >= OTHERS_LIMIT
        else:
            busy = os.getloadavg()[0] > LOAD_LIMIT
        if busy:
            print("# WARNING: other work is running at start, these timings are not comparable")
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

    def finish(self) -> None:
        print(f"# load average at end: {load_average()}; this bench took "
              f"{time.monotonic() - self._started:.0f} s", flush=True)
