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
from infdepth.ode._per_sample_step import _rows, dense_per_sample


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


PENDING_STEPS = 16
"""Steps with outputs inside that the per-sample loop gathers before storing them all at once
(:class:`SampleOutputs`), fewer where their stages would pass :data:`PENDING_BYTES`."""

PENDING_BYTES = 16 * 2**20


class SampleOutputs:
    """The per-sample loop's outputs: ``ys`` ``((T + 1) * B, ...)``, sample ``b``'s output
    ``j`` at slot ``j * B + b``; the block ``T`` takes the writes that store nothing.

    The steps that passed output times are kept (their start, size, state, stages, end) and
    evaluated together every :data:`PENDING_STEPS` of them, at a compaction and at the end
    (:meth:`flush`): one dense output and one ``index_copy`` for all of them instead of one
    per pass. A row's slots are written once each (by the step that passed them), so the
    order of the writes does not matter; rows that store nothing in a round write to their
    own slot of block ``T``, which is discarded.
    """

    def __init__(self, ys: torch.Tensor, times: torch.Tensor, batch: int, n_out: int,
                 dense: torch.Tensor) -> None:
        """``times`` the output times by slot (block ``T`` at infinity); ``dense`` the
        solver's dense-output matrix."""
        self.ys, self.times, self.batch, self.n_out, self.dense = ys, times, batch, n_out, dense
        self.pending: list[tuple[torch.Tensor, ...]] = []
        self.most = 0  # the most outputs one pending step passed

    def add(self, base: torch.Tensor, written: torch.Tensor, ahead: torch.Tensor, n_ahead: int,
            t: torch.Tensor, h: torch.Tensor, y: torch.Tensor, hk: torch.Tensor,
            y_end: torch.Tensor, t_end: torch.Tensor) -> None:
        """Rows ``base - B`` of the batch; ``written`` outputs of each stored before its step
        from ``t`` of size ``h`` (nonzero: a row that took no step has any other) from state
        ``y`` with scaled stages ``hk`` ``(R, n, F)`` (kept: not written afterwards), ending at
        ``t_end`` (NaN: not at an output) with state ``y_end``, passed ``ahead`` more output
        times (``n_ahead`` the most of any row)."""
        if self.pending and self.pending[0][6].shape[0] != hk.shape[0]:
            self.flush()  # DOP853: steps with and without the dense output's stages
        self.pending.append((base, written, ahead, t, h, y, hk, y_end, t_end))
        self.most = max(self.most, n_ahead)
        if len(self.pending) >= max(1, min(PENDING_STEPS, PENDING_BYTES // max(
                hk.numel() * hk.element_size(), 1))):
            self.flush()

    def flush(self) -> None:
        """Store the pending steps' outputs."""
        if not self.pending:
            return
        if len(self.pending) == 1:
            base, written, ahead, t, h, y, hk, y_end, t_end = self.pending[0]
        else:
            parts = list(zip(*self.pending, strict=True))
            base, written, ahead, t, h, y, y_end, t_end = (
                torch.cat(parts[i]) for i in (0, 1, 2, 3, 4, 5, 7, 8))
            hk = torch.cat(parts[6], 1)
        batch = self.batch
        slot = torch.add(base, written, alpha=batch)
        discard = base + (self.n_out - 1) * batch  # row b's slot of block T
        ys = self.ys
        for i in range(self.most):
            stores = ahead > i
            tq = self.times.take(slot)
            if hk.shape[0] < self.dense.shape[0]:  # only step ends: no dense stages computed
                val = y_end
            else:
                theta = ((tq - t) / h).clamp(0.0, 1.0)
                at_end = (tq == t_end).view(-1, *([1] * (y.ndim - 1)))
                val = torch.where(at_end, y_end, dense_per_sample(theta, y, hk, self.dense))
            target = torch.where(stores, slot, discard)
            ys = ys.index_copy(0, target, val) if ys.requires_grad or val.requires_grad else (
                ys.index_copy_(0, target, val))
            if i + 1 < self.most:
                slot = torch.add(slot, stores, alpha=batch)
        self.ys, self.pending, self.most = ys, [], 0


def outputs_passed(grid: torch.Tensor, stop_t: torch.Tensor, direction: float) -> torch.Tensor:
    """How many of its output times after the first each row reached at ``stop_t`` (``grid``
    those times, increasing, ``(n, T - 1)``): less the row's count before the step, the
    outputs its step passed (0 where no step was accepted: a row's outputs up to its time
    ``t`` are written when it gets there)."""
    end = stop_t.detach() if stop_t.requires_grad else stop_t
    end = (end if direction > 0 else -end).unsqueeze(1)
    return torch.searchsorted(grid, end, right=True).squeeze(1)


def assemble_outputs(ys: torch.Tensor | None, y0: torch.Tensor, y_stop: torch.Tensor,
                     failed: torch.Tensor | None, written: torch.Tensor, n_out: int, batch: int
                     ) -> torch.Tensor:
    """``(T, B, ...)`` outputs: those reached (``ys[:written[b] + 1, b]``; ``None``: only
    ``y0``, two output times), then a stopped sample's last state (its event state), NaN for
    a sample that failed (``failed``, ``(B,)``; None: none did)."""
    held = y_stop
    if failed is not None:
        held = torch.where(_rows(failed, y_stop), torch.full_like(y_stop, float("nan")), y_stop)
    if ys is None:
        return torch.stack([y0, held])
    out = ys[: n_out * batch].view(n_out, *y_stop.shape)
    index = torch.arange(n_out, device=ys.device).unsqueeze(1)
    missing = (index > written.unsqueeze(0)).view(n_out, batch, *([1] * (y_stop.ndim - 1)))
    return torch.where(missing, held.unsqueeze(0), out)
