"""The integration loop: the one place where steps are taken, accepted and stored.

Host synchronisation: an adaptive solve reads back one number per attempted step
(the error ratio), which the loop needs to decide whether to continue; the step-size
controller then runs on the host on that number, and everything else (stages, error
estimate, dense output) stays on the device. A fixed-step solve reads back nothing
until its end, where one check for non-finite states is made.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass

import torch

from infdepth.errors import InputError
from infdepth.ode._controller import ConstantStepSize, PIController
from infdepth.ode._errors import NonFiniteStateError, SolverError
from infdepth.ode._interp import dense_eval
from infdepth.ode._solvers import RungeKutta, StepTensors

VectorField = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Norm = Callable[[torch.Tensor], torch.Tensor]
"""Maps a scaled error (error / tolerance) to its mean square; accept when <= 1."""


def rms2(x: torch.Tensor) -> torch.Tensor:
    """Mean square of all entries: the default error norm (squared RMS)."""
    return x.square().mean()


@dataclass
class Stats:
    """Counters of one solve: function evaluations and steps."""

    nfe: int = 0
    steps: int = 0
    accepted: int = 0
    rejected: int = 0


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


def _call(f: VectorField, t: torch.Tensor, y: torch.Tensor, stats: Stats) -> torch.Tensor:
    stats.nfe += 1
    return f(t, y)


def stage_times(solver: RungeKutta, tabs: StepTensors, times: torch.Tensor) -> torch.Tensor:
    """The nodes ``c`` in the dtype of the times (float64 where the state is float32)."""
    if tabs.c.dtype == times.dtype and tabs.c.device == times.device:
        return tabs.c
    return torch.tensor(solver.tableau.c, dtype=times.dtype, device=times.device)


def _first_eval(f: VectorField, t0: torch.Tensor, y0: torch.Tensor, stats: Stats) -> torch.Tensor:
    k1 = _call(f, t0, y0, stats)
    if not isinstance(k1, torch.Tensor):
        raise InputError(f"f(t, y) returned {type(k1).__name__}; expected a tensor shaped like y0")
    if k1.shape != y0.shape:
        raise InputError(
            f"f(t, y) returned shape {tuple(k1.shape)}; expected y0's shape {tuple(y0.shape)}"
        )
    if k1.dtype != y0.dtype:
        raise InputError(f"f(t, y) returned dtype {k1.dtype}; expected y0's dtype {y0.dtype}")
    return k1


def _stages(
    f: VectorField,
    t: torch.Tensor,
    h: torch.Tensor | float,
    y: torch.Tensor,
    k1: torch.Tensor,
    solver: RungeKutta,
    tabs: StepTensors,
    c_time: torch.Tensor,
    stats: Stats,
    buf: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One Runge-Kutta step of size ``h``: returns ``(y1, stages, error estimate)``.

    ``h`` is a Python float when the step size is known on the host, or a tensor when
    it must carry gradients (a step clipped to an end time that requires grad).
    With ``buf`` (no autograd) the stages are written into a preallocated ``(S, N)``
    buffer and each stage is one ``addmm`` over all rows (``a`` is strictly lower
    triangular, and rows not yet written hold finite values from an earlier step, so
    their zero weights add nothing). Without it the stages are concatenated, so
    autograd sees plain out-of-place operations.
    """
    s = solver.stages
    shape = y.shape
    if isinstance(h, torch.Tensor):
        hw = tabs.weights * h.to(y.dtype)  # rows: a[1:], b, b_error
        ts = torch.addcmul(t, c_time, h).unbind()
    else:
        hw = tabs.weights * h
        ts = torch.add(t, c_time, alpha=h).unbind()
    yf = y.reshape(1, -1)
    yi = y
    if buf is not None:
        rows = hw.split(1)
        buf[0] = k1.reshape(-1)
        for i in range(1, s):
            yi = torch.addmm(yf, rows[i - 1], buf).view(shape)
            buf[i] = _call(f, ts[i], yi, stats).reshape(-1)
        y1 = yi if solver.fsal else torch.addmm(yf, rows[s - 1], buf).view(shape)
        err = torch.mm(rows[s], buf).view(shape) if solver.adaptive else None
        return y1, buf.view(s, *shape), err
    ks = [k1.reshape(1, -1)]
    for i in range(1, s):
        kst = ks[0] if i == 1 else torch.cat(ks)
        yi = torch.addmm(yf, hw[i - 1 : i, :i], kst).view(shape)
        ks.append(_call(f, ts[i], yi, stats).reshape(1, -1))
    kall = torch.cat(ks) if s > 1 else ks[0]
    y1 = yi if solver.fsal else torch.addmm(yf, hw[s - 1 : s], kall).view(shape)
    err = None
    if solver.adaptive:
        with torch.no_grad():
            err = torch.mm(hw[s : s + 1], kall).view(shape)
    return y1, kall.view(s, *shape), err


def _initial_step(
    f: VectorField,
    t0: torch.Tensor,
    y0: torch.Tensor,
    k1: torch.Tensor,
    order: int,
    ctrl: PIController,
    norm: Norm,
    direction: float,
    stats: Stats,
) -> torch.Tensor:
    """Step-size magnitude from two evaluations (Hairer, Norsett & Wanner, II.4)."""
    with torch.no_grad():
        scale = y0.abs().mul(ctrl.rtol).add_(ctrl.atol)
        d0 = norm(y0 / scale).sqrt()
        d1 = norm(k1 / scale).sqrt()
        small = (d0 < 1e-5) | (d1 < 1e-5)
        h0 = torch.where(small, torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
        f1 = _call(f, t0 + direction * h0.to(t0.dtype), y0 + (direction * h0) * k1, stats)
        d2 = norm((f1 - k1) / scale).sqrt() / h0
        dmax = torch.maximum(d1, d2)
        h1 = torch.where(
            dmax <= 1e-15,
            torch.clamp(h0 * 1e-3, min=1e-6),
            (0.01 / dmax) ** (1.0 / order),
        )
        return torch.minimum(100 * h0, h1).to(t0.dtype)


Group = tuple[int, int]
"""A tie group of output times: ``grid.times[lo:hi]``, all of one value."""

_SLACK = 1e-4
"""A last step is taken up to ``(1 + _SLACK)`` times the step size (fixed, or proposed by
the controller) rather than followed by a step shorter than ``_SLACK`` of it: the step
count is then constant under small changes of a span that ends on a step, so time
gradients are derivatives there (that finite differences reproduce), and no step is
wasted on rounding."""


@dataclass(frozen=True)
class Step:
    """One accepted step, as the loop took it and as :func:`replay_step` retakes it.

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


def _moves_with(times: torch.Tensor, group: Group) -> torch.Tensor:
    """Zero, with derivative ``1/K`` with respect to each of the ``K`` tied times of ``group``."""
    lo, hi = group
    anchor = times[lo] if hi - lo == 1 else times[lo:hi].mean()
    return anchor - anchor.detach()


def step_times(times: torch.Tensor, s: Step) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(t, h, end)`` of a step with the values recorded in ``s``, differentiable in ``times``.

    A step starts and ends either on the first time (its multiples of a fixed ``dt`` or of
    the adaptive steps are shifted with it) or on an output time. Tied output times (the
    same time in several samples' grids) share the gradient of the step end equally; each
    output additionally receives its own part through :func:`_store`. The values are
    exactly those recorded: the autograd links add zero.
    """
    a = _moves_with(times, s.start)
    if s.stop == s.start:
        return s.t + a, s.h, s.end + a
    b = _moves_with(times, s.stop)
    return s.t + a, s.h + (b - a), s.end + b


def _needs_end_slope(s: Step) -> bool:
    """Outputs at the step end whose own times are not the step end itself."""
    return s.hi > s.mid and not (s.stop == (s.mid, s.hi) and s.hi - s.mid == 1)


def _store(
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


def _at_start(outs: list[torch.Tensor], grid: OutputGrid, y0: torch.Tensor) -> int:
    n = bisect_right(grid.keys, grid.keys[0])
    if grid.rows is None:
        outs.append(y0.unsqueeze(0).expand(n, *y0.shape))
    else:
        outs.append(y0[grid.rows[:n]])
    return n


def _last_group(grid: OutputGrid) -> Group:
    return bisect_left(grid.keys, grid.keys[-1]), len(grid.keys)


def integrate(
    f: VectorField,
    y0: torch.Tensor,
    grid: OutputGrid,
    solver: RungeKutta,
    controller: PIController | ConstantStepSize,
    *,
    max_steps: int,
    norm: Norm | None = None,
    stats: Stats | None = None,
    on_accept: OnAccept | None = None,
) -> torch.Tensor:
    """Solve ``dy/dt = f(t, y)`` from ``(grid.times[0], y0)``; states at all grid times.

    Returns a tensor of shape ``(M, *y0.shape)`` (or ``(M, *y0.shape[1:])`` for
    per-sample outputs) in grid order. Autograd records the solve when grad is
    enabled (the step-size control itself is never differentiated); when ``grid.times``
    requires grad, every step's start, size and end are linked to the output times they
    depend on (:func:`step_times`). ``on_accept`` is called with each accepted
    :class:`Step`.
    """
    stats = Stats() if stats is None else stats
    if isinstance(controller, PIController):
        if not solver.adaptive:
            raise InputError(
                f"solver={type(solver).__name__}() has no error estimate; "
                "use step_size=... (a ConstantStepSize) or an adaptive solver"
            )
        return _integrate_adaptive(
            f, y0, grid, solver, controller, max_steps, norm, stats, on_accept
        )
    return _integrate_fixed(f, y0, grid, solver, controller, max_steps, stats, on_accept)


def _integrate_adaptive(
    f: VectorField,
    y0: torch.Tensor,
    grid: OutputGrid,
    solver: RungeKutta,
    ctrl: PIController,
    max_steps: int,
    norm: Norm | None,
    stats: Stats,
    on_accept: OnAccept | None,
) -> torch.Tensor:
    direction = grid.direction
    times = grid.times
    tabs = solver.tensors(y0.dtype, y0.device)
    c_time = stage_times(solver, tabs, times)
    track = torch.is_grad_enabled() and times.requires_grad
    t_val, t_end_val = times[0].detach(), times[-1].detach()
    t_py, t_end_py = grid.keys[0] * direction, grid.keys[-1] * direction
    outs: list[torch.Tensor] = []
    n_done = _at_start(outs, grid, y0)
    first, last = (0, n_done), _last_group(grid)
    shift = _moves_with(times, first) if track else None
    t0 = t_val if shift is None else t_val + shift
    k1 = _first_eval(f, t0, y0, stats)
    if ctrl.dt0 is None:
        hm_py = float(_initial_step(f, t0, y0, k1, solver.order, ctrl, norm or rms2, direction,
                                    stats))
    else:
        hm_py = ctrl.dt0
    hm_py = min(hm_py, ctrl.dtmax)
    buf = None if torch.is_grad_enabled() else y0.new_zeros(solver.stages, y0.numel())
    # the controller runs on the host, on the one number read back per step
    exponent = -(ctrl.icoeff + ctrl.pcoeff) / solver.order
    p_exponent = ctrl.pcoeff / solver.order
    prev_r = 1.0
    inv_sqrt_n = 1.0 / math.sqrt(max(y0.numel(), 1))
    atol = torch.tensor(ctrl.atol, dtype=y0.dtype, device=y0.device)
    y = y0
    y_abs = y0.abs()
    m = len(grid.keys)
    while n_done < m:
        if stats.steps >= max_steps:
            raise SolverError(
                f"max_steps={max_steps} reached at t={t_py:.6g} (step size {hm_py:.3g}) "
                f"before t={t_end_py:.6g}; raise max_steps or loosen rtol/atol"
            )
        if hm_py < ctrl.dtmin or t_py + direction * hm_py == t_py:
            raise SolverError(
                f"step size {hm_py:.3g} at t={t_py:.6g} is below the minimum "
                f"(dtmin={ctrl.dtmin:g}, or too small to change t); the problem may be stiff, "
                "f discontinuous, or the tolerances too tight"
            )
        h: torch.Tensor | float
        t = t_val if shift is None else t_val + shift
        if direction * (t_end_py - t_py) <= hm_py * (1 + _SLACK):  # last: end on t_end
            h_py, tc_py, e_val, stop = t_end_py - t_py, t_end_py, t_end_val, last
            h = t_end_val - t_val
            if track:
                h = h + (_moves_with(times, last) - shift)  # type: ignore[operator]
        else:
            h_py = direction * hm_py
            h, tc_py, e_val, stop = h_py, t_py + h_py, t_val + h_py, first
        y1, k, err = _stages(f, t, h, y, k1, solver, tabs, c_time, stats, buf)
        assert err is not None
        with torch.no_grad():
            y1_abs = y1.abs()
            scale = torch.add(atol, torch.maximum(y_abs, y1_abs), alpha=ctrl.rtol)
            if norm is None:
                r = float(torch.linalg.vector_norm(err / scale)) * inv_sqrt_n
            else:
                r = math.sqrt(float(norm(err / scale)))
        stats.steps += 1
        if not math.isfinite(r):
            raise NonFiniteStateError(
                f"non-finite state or error estimate at t={t_py:.6g} with step size {abs(h_py):.3g}"
            )
        accepted = r <= 1.0
        factor = ctrl.factor_max if r == 0.0 else ctrl.safety * r**exponent * prev_r**p_exponent
        if accepted:
            factor = min(max(factor, 1.0), ctrl.factor_max)
        else:
            factor = min(max(factor, ctrl.factor_min), 1.0)
        hm_py = min(abs(h_py) * factor, ctrl.dtmax)
        if not accepted:
            stats.rejected += 1
            continue
        stats.accepted += 1
        prev_r = max(r, 1e-10)
        key = direction * tc_py
        mid = bisect_left(grid.keys, key, lo=n_done)
        hi = bisect_right(grid.keys, key, lo=n_done)
        if not solver.fsal:
            e = e_val if shift is None else e_val + _moves_with(times, stop)
            k1 = _call(f, e, y1, stats)
        if on_accept is not None or hi > n_done:
            h_val = h.detach() if isinstance(h, torch.Tensor) else torch.full_like(t_val, h)
            s = Step(t_val, h_val, e_val, y, n_done, mid, hi, first, stop)
            if on_accept is not None:
                on_accept(s)
            if hi > n_done:
                ts, hs, es = step_times(times, s) if track else (t_val, h_val, e_val)
                slope = None
                if track and _needs_end_slope(s):
                    slope = k[-1] if solver.fsal else k1
                _store(outs, grid, s, ts, hs, es, y, y1, k, tabs.dense, slope)
                n_done = hi
        t_val, y, t_py, y_abs = e_val, y1, tc_py, y1_abs
        if solver.fsal:
            if buf is None:
                k1 = k[-1]
            else:  # keep f(t1, y1) out of the rows the next attempt overwrites
                buf[0] = buf[-1]
                k1 = buf[0].view(y.shape)
    return torch.cat(outs)


def _integrate_fixed(
    f: VectorField,
    y0: torch.Tensor,
    grid: OutputGrid,
    solver: RungeKutta,
    ctrl: ConstantStepSize,
    max_steps: int,
    stats: Stats,
    on_accept: OnAccept | None,
) -> torch.Tensor:
    direction = grid.direction
    times = grid.times
    tabs = solver.tensors(y0.dtype, y0.device)
    c_time = stage_times(solver, tabs, times)
    track = torch.is_grad_enabled() and times.requires_grad
    outs: list[torch.Tensor] = []
    n_done = _at_start(outs, grid, y0)
    m = len(grid.keys)
    first = (0, n_done)
    # Step ends: the distinct output times (each moving with its tie group), or a uniform
    # grid that moves with the first time and a last step ending on the last time.
    if ctrl.dt is None:
        ends_key, stops = [], []
        j = n_done
        while j < m:
            j_end = bisect_right(grid.keys, grid.keys[j], lo=j)
            ends_key.append(grid.keys[j])
            stops.append((j, j_end))
            j = j_end
    else:
        span = grid.keys[-1] - grid.keys[0]
        n = max(1, math.ceil(span / ctrl.dt - _SLACK))
        ends_key = [grid.keys[0] + ctrl.dt * i for i in range(1, n)] + [grid.keys[-1]]
        stops = [first] * (n - 1) + [_last_group(grid)]
    if len(ends_key) > max_steps:
        raise SolverError(
            f"max_steps={max_steps} reached at t={(grid.keys[0] + 0.0) * direction:.6g}: "
            f"the fixed grid needs {len(ends_key)} steps (step size {ctrl.dt}); raise max_steps"
        )
    end_vals = torch.tensor([direction * k for k in ends_key], dtype=times.dtype,
                            device=times.device)
    grad = torch.is_grad_enabled()
    buf = None if grad else y0.new_zeros(solver.stages, y0.numel())
    hermite = solver.dense_needs_end_derivative
    checks: list[torch.Tensor] = []
    t_val, start, y = times[0].detach(), first, y0
    t0 = t_val + _moves_with(times, first) if track else t_val
    k1: torch.Tensor | None = _first_eval(f, t0, y0, stats)
    for i, (key, stop) in enumerate(zip(ends_key, stops, strict=True)):
        e_val = end_vals[i]
        mid = bisect_left(grid.keys, key, lo=n_done)
        hi = bisect_right(grid.keys, key, lo=n_done)
        s = Step(t_val, e_val - t_val, e_val, y, n_done, mid, hi, start, stop)
        t, h, e = step_times(times, s) if track else (s.t, s.h, s.end)
        if k1 is None:
            k1 = _call(f, t, y, stats)
        y1, k, _ = _stages(f, t, h, y, k1, solver, tabs, c_time, stats, buf)
        stats.steps += 1
        stats.accepted += 1
        checks.append(y1.detach().sum())
        needs_slope = track and _needs_end_slope(s)
        dense_here = mid > n_done and hermite
        k1 = k[-1] if solver.fsal else None
        if not solver.fsal and (dense_here or needs_slope):
            k1 = _call(f, e, y1, stats)
        stages = torch.cat([k, k1.unsqueeze(0)]) if dense_here and k1 is not None else k
        if on_accept is not None:
            on_accept(s)
        if hi > n_done:
            _store(outs, grid, s, t, h, e, y, y1, stages, tabs.dense, k1 if needs_slope else None)
            n_done = hi
        t_val, start, y = e_val, stop, y1
    finite = torch.stack(checks).isfinite()
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0, 0])
        t_bad = grid.keys[0] * direction if bad == 0 else ends_key[bad - 1] * direction
        h_bad = abs(ends_key[bad] - (grid.keys[0] if bad == 0 else ends_key[bad - 1]))
        raise NonFiniteStateError(
            f"non-finite state after the step from t={t_bad:.6g} with step size {h_bad:.3g}"
        )
    return torch.cat(outs)


def replay_step(
    f: VectorField,
    y: torch.Tensor,
    s: Step,
    grid: OutputGrid,
    solver: RungeKutta,
    tabs: StepTensors,
    c_time: torch.Tensor,
    stats: Stats,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Retake step ``s`` from ``y`` (under the caller's grad mode): ``(y1, outputs lo:hi)``.

    Its times are linked to ``grid.times`` as in :func:`integrate` when those require grad,
    so the gradients are those of backprop through the whole solve.
    """
    track = torch.is_grad_enabled() and grid.times.requires_grad
    t, h, e = step_times(grid.times, s) if track else (s.t, s.h, s.end)
    k1 = _call(f, t, y, stats)
    y1, k, _ = _stages(f, t, h, y, k1, solver, tabs, c_time, stats, None)
    needs_slope = track and _needs_end_slope(s)
    dense_here = s.mid > s.lo and solver.dense_needs_end_derivative
    slope = k[-1] if solver.fsal else None
    if not solver.fsal and (dense_here or needs_slope):
        slope = _call(f, e, y1, stats)
    stages = torch.cat([k, slope.unsqueeze(0)]) if dense_here and slope is not None else k
    outs: list[torch.Tensor] = []
    _store(outs, grid, s, t, h, e, y, y1, stages, tabs.dense, slope if needs_slope else None)
    return y1, (torch.cat(outs) if outs else None)
