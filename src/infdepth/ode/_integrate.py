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
OnAccept = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, int, int], None]


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


def _store(
    outs: list[torch.Tensor],
    grid: OutputGrid,
    lo: int,
    mid: int,
    hi: int,
    t: torch.Tensor,
    h: torch.Tensor,
    y: torch.Tensor,
    y1: torch.Tensor,
    stages: torch.Tensor,
    dense: torch.Tensor,
) -> None:
    """Outputs ``lo:mid`` lie inside the step (dense output); ``mid:hi`` at its end."""
    if mid > lo:
        theta = (grid.times[lo:mid] - t) / h
        rows = None if grid.rows is None else grid.rows[lo:mid]
        outs.append(dense_eval(theta, y, h.to(y.dtype), stages, dense, rows))
    if hi > mid:
        if grid.rows is None:
            outs.append(y1.unsqueeze(0).expand(hi - mid, *y1.shape))
        else:
            outs.append(y1[grid.rows[mid:hi]])


def _at_start(outs: list[torch.Tensor], grid: OutputGrid, y0: torch.Tensor) -> int:
    n = bisect_right(grid.keys, grid.keys[0])
    if grid.rows is None:
        outs.append(y0.unsqueeze(0).expand(n, *y0.shape))
    else:
        outs.append(y0[grid.rows[:n]])
    return n


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
    enabled (the step-size control itself is never differentiated). ``on_accept``
    is called after each accepted step with ``(t, h, y, lo, mid, hi)``: the start of
    the step, its size, the state at its start; outputs ``lo:mid`` lie inside the step
    and ``mid:hi`` at its end.
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
    tabs = solver.tensors(y0.dtype, y0.device)
    t0 = grid.times[0]
    c_time = solver.tensors(t0.dtype, t0.device).c
    t_end = grid.times[-1]
    t_py, t_end_py = grid.keys[0] * direction, grid.keys[-1] * direction
    outs: list[torch.Tensor] = []
    n_done = _at_start(outs, grid, y0)
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
    t, y = t0, y0
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
        if direction * (t_end_py - t_py) <= hm_py:  # last step: end exactly on t_end
            h = t_end - t
            h_py, t_cand, tc_py = t_end_py - t_py, t_end, t_end_py
        else:
            h_py = direction * hm_py
            h, t_cand, tc_py = h_py, t + h_py, t_py + h_py
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
        if accepted:
            stats.accepted += 1
            prev_r = max(r, 1e-10)
            key = direction * tc_py
            mid = bisect_left(grid.keys, key, lo=n_done)
            hi = bisect_right(grid.keys, key, lo=n_done)
            if on_accept is not None or hi > n_done:
                ht = h if isinstance(h, torch.Tensor) else torch.full_like(t, h)
                if on_accept is not None:
                    on_accept(t, ht, y, n_done, mid, hi)
                if hi > n_done:
                    _store(outs, grid, n_done, mid, hi, t, ht, y, y1, k, tabs.dense)
                    n_done = hi
            t, y, t_py, y_abs = t_cand, y1, tc_py, y1_abs
            if not solver.fsal:
                k1 = _call(f, t, y, stats)
            elif buf is None:
                k1 = k[-1]
            else:  # keep f(t1, y1) out of the rows the next attempt overwrites
                buf[0] = buf[-1]
                k1 = buf[0].view(y.shape)
        else:
            stats.rejected += 1
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
    tabs = solver.tensors(y0.dtype, y0.device)
    t0 = grid.times[0]
    c_time = solver.tensors(t0.dtype, t0.device).c
    outs: list[torch.Tensor] = []
    n_done = _at_start(outs, grid, y0)
    m = len(grid.keys)
    # Step ends: either the distinct output times, or a uniform grid ending on the last one.
    if ctrl.dt is None:
        ends_idx = [j for j in range(n_done, m) if j == m - 1 or grid.keys[j + 1] > grid.keys[j]]
        ends = [grid.times[j] for j in ends_idx]
        ends_key = [grid.keys[j] for j in ends_idx]
    else:
        span = grid.keys[-1] - grid.keys[0]
        n = max(1, math.ceil(span / ctrl.dt - 1e-9))
        ends = [t0 + direction * ctrl.dt * i for i in range(1, n)] + [grid.times[-1]]
        ends_key = [grid.keys[0] + ctrl.dt * i for i in range(1, n)] + [grid.keys[-1]]
    if len(ends) > max_steps:
        raise SolverError(
            f"max_steps={max_steps} reached at t={(grid.keys[0] + 0.0) * direction:.6g}: "
            f"the fixed grid needs {len(ends)} steps (step size {ctrl.dt}); raise max_steps"
        )
    grad = torch.is_grad_enabled()
    buf = None if grad else y0.new_zeros(solver.stages, y0.numel())
    hermite = solver.dense_needs_end_derivative
    checks: list[torch.Tensor] = []
    t, y = t0, y0
    k1: torch.Tensor | None = _first_eval(f, t0, y0, stats)
    for t_next, key in zip(ends, ends_key, strict=True):
        h = t_next - t
        if k1 is None:
            k1 = _call(f, t, y, stats)
        y1, k, _ = _stages(f, t, h, y, k1, solver, tabs, c_time, stats, buf)
        stats.steps += 1
        stats.accepted += 1
        checks.append(y1.detach().sum())
        mid = bisect_left(grid.keys, key, lo=n_done)
        hi = bisect_right(grid.keys, key, lo=n_done)
        k1 = k[-1] if solver.fsal else None
        stages = k
        if mid > n_done and hermite:
            k1 = _call(f, t_next, y1, stats)
            stages = torch.cat([k, k1.unsqueeze(0)])
        if on_accept is not None:
            on_accept(t, h, y, n_done, mid, hi)
        if hi > n_done:
            _store(outs, grid, n_done, mid, hi, t, h, y, y1, stages, tabs.dense)
            n_done = hi
        t, y = t_next, y1
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
    t: torch.Tensor,
    h: torch.Tensor,
    y: torch.Tensor,
    grid: OutputGrid,
    lo: int,
    mid: int,
    hi: int,
    solver: RungeKutta,
    stats: Stats,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Retake one recorded step (under the caller's grad mode): ``(y1, outputs lo:hi)``."""
    tabs = solver.tensors(y.dtype, y.device)
    k1 = _call(f, t, y, stats)
    c_time = solver.tensors(t.dtype, t.device).c
    y1, k, _ = _stages(f, t, h, y, k1, solver, tabs, c_time, stats, None)
    stages = k
    if mid > lo and solver.dense_needs_end_derivative:
        stages = torch.cat([k, _call(f, t + h, y1, stats).unsqueeze(0)])
    outs: list[torch.Tensor] = []
    _store(outs, grid, lo, mid, hi, t, h, y, y1, stages, tabs.dense)
    return y1, (torch.cat(outs) if outs else None)
