"""Output times and accepted steps: which outputs a step serves, and how they are stored.

Outputs inside a step come from dense output; outputs at a step's end from its new state.
When the output times require grad, each step's start, size and end are linked to the
output times they move with (:func:`step_times`), so every output time gets its gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from infdepth.ode._interp import dense_eval


def bisect_left(keys: list[float], x: float, lo: int = 0) -> int:
    """:func:`bisect.bisect_left` in Python: ``torch.compile`` traces it (the C one is a graph break)."""
    hi = len(keys)
    while lo < hi:
        mid = (lo + hi) // 2
        if keys[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


def bisect_right(keys: list[float], x: float, lo: int = 0) -> int:
    """:func:`bisect.bisect_right` in Python (see :func:`bisect_left`)."""
    hi = len(keys)
    while lo < hi:
        mid = (lo + hi) // 2
        if x < keys[mid]:
            hi = mid
        else:
            lo = mid + 1
    return lo


@dataclass(frozen=True)
class OutputGrid:
    """Requested output times, sorted along the direction of integration.

    ``times`` are ``(M,)`` tensors (they may require grad); ``keys`` are
    ``direction * times`` as Python floats, ascending; ``rows`` is ``None`` when
    every output is the whole state, else ``(M,)`` sample indices.
    """

    times: torch.Tensor
    keys: list[float]
    rows: torch.Tensor | None
    direction: float


Group = tuple[int, int]
"""A tie group of output times: ``grid.times[lo:hi]``, all of one value."""


@dataclass(frozen=True)
class Step:
    """One accepted step, as the loop took it and as ``replay_step`` retakes it.

    ``t``, ``h`` and ``end`` are the values (no autograd) of the step's start, size and end;
    ``y`` is the state at its start; outputs ``lo:mid`` lie inside the step and ``mid:hi`` at
    its end. ``start`` and ``stop`` are the tie groups of output times that the start and
    the end of the step move with (see :func:`step_times`).
    """

    t: torch.Tensor
    h: torch.Tensor
    end: torch.Tensor
    y: torch.Tensor
    lo: int
    mid: int
    hi: int
    start: Group
    stop: Group


OnAccept = Callable[[Step], None]


def moves_with(times: torch.Tensor, group: Group) -> torch.Tensor:
    """Zero, with derivative ``1/K`` with respect to each of the ``K`` tied times of ``group``."""
    lo, hi = group
    anchor = times[lo] if hi - lo == 1 else times[lo:hi].mean()
    return anchor - anchor.detach()


def step_times(times: torch.Tensor, s: Step) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(t, h, end)`` of a step with the values recorded in ``s``, differentiable in ``times``.

    A step starts and ends either on the first time (its multiples of a fixed ``dt`` or of
    the adaptive steps are shifted with it) or on an output time. Tied output times (the
    same time in several samples' grids) share the gradient of the step end equally; each
    output additionally receives its own part through :func:`store`. The values are
    exactly those recorded: the autograd links add zero.
    """
    a = moves_with(times, s.start)
    if s.stop == s.start:
        return s.t + a, s.h, s.end + a
    b = moves_with(times, s.stop)
    return s.t + a, s.h + (b - a), s.end + b


def outputs_of(grid: OutputGrid, key: float, lo: int) -> tuple[int, int]:
    """``(mid, hi)``: outputs ``lo:mid`` lie before ``key``, ``mid:hi`` on it."""
    return bisect_left(grid.keys, key, lo=lo), bisect_right(grid.keys, key, lo=lo)


def needs_end_slope(s: Step) -> bool:
    """Outputs at the step end whose own times are not the step end itself."""
    return s.hi > s.mid and not (s.stop == (s.mid, s.hi) and s.hi - s.mid == 1)


def store(
    outs: list[torch.Tensor],
    grid: OutputGrid,
    s: Step,
    t: torch.Tensor,
    h: torch.Tensor,
    end: torch.Tensor,
    y: torch.Tensor,
    y1: torch.Tensor,
    stages: torch.Tensor,
    dense: torch.Tensor,
    end_slope: torch.Tensor | None,
) -> None:
    """Outputs ``lo:mid`` of step ``s`` from dense output, ``mid:hi`` at its end.

    With ``end_slope = f(end, y1)``, an output at the end is ``y1 + (t_j - end) f(end, y1)``:
    the same value (``t_j == end``), and the derivative the dense output of either
    neighbouring step has with respect to ``t_j``, so each output time gets its own gradient.
    """
    lo, mid, hi = s.lo, s.mid, s.hi
    if mid > lo:
        theta = (grid.times[lo:mid] - t) / h
        rows = None if grid.rows is None else grid.rows[lo:mid]
        outs.append(dense_eval(theta, y, h.to(y.dtype), stages, dense, rows))
    if hi > mid:
        if grid.rows is None:
            at_end = y1.unsqueeze(0).expand(hi - mid, *y1.shape)
            slope = None if end_slope is None else end_slope.unsqueeze(0)
        else:
            at_end = y1[grid.rows[mid:hi]]
            slope = None if end_slope is None else end_slope[grid.rows[mid:hi]]
        if slope is not None:
            gap = (grid.times[mid:hi] - end).to(y1.dtype)
            at_end = at_end + gap.view(-1, *([1] * (at_end.ndim - 1))) * slope
        outs.append(at_end)


def at_start(outs: list[torch.Tensor], grid: OutputGrid, y0: torch.Tensor) -> int:
    """Store the outputs at the first time (``y0``); return their count."""
    n = bisect_right(grid.keys, grid.keys[0])
    if grid.rows is None:
        outs.append(y0.unsqueeze(0).expand(n, *y0.shape))
    else:
        outs.append(y0[grid.rows[:n]])
    return n


def last_group(grid: OutputGrid) -> Group:
    """The tie group of the last output time."""
    return bisect_left(grid.keys, grid.keys[-1]), len(grid.keys)


def output_groups(grid: OutputGrid, lo: int) -> tuple[list[float], list[Group]]:
    """The distinct output keys from ``lo`` on, and the tie group of each."""
    keys, groups = [], []
    j, m = lo, len(grid.keys)
    while j < m:
        j_end = bisect_right(grid.keys, grid.keys[j], lo=j)
        keys.append(grid.keys[j])
        groups.append((j, j_end))
        j = j_end
    return keys, groups
