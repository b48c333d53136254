"""One Runge-Kutta step: its stages, its new state and its error estimate.

The step size is given (by the controller, :mod:`infdepth.ode._controller`); this module only
evaluates ``f`` at the stages and combines them, counting evaluations in :class:`Stats`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from infdepth.errors import InputError
from infdepth.ode._solvers import RungeKutta, StepTensors

VectorField = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Stats:
    """Counters of one solve: function evaluations and steps."""

    nfe: int = 0
    steps: int = 0
    accepted: int = 0
    rejected: int = 0
    jacobians: int = 0  # implicit solvers: Jacobians of f, LU factorisations, Newton iterations
    factorizations: int = 0
    newton_iters: int = 0
    newton_failures: int = 0


def call(f: VectorField, t: torch.Tensor, y: torch.Tensor, stats: Stats) -> torch.Tensor:
    """``f(t, y)``, counted."""
    stats.nfe += 1
    return f(t, y)


def first_eval(f: VectorField, t0: torch.Tensor, y0: torch.Tensor, stats: Stats) -> torch.Tensor:
    """``f(t0, y0)``, checked to be a tensor of ``y0``'s shape and dtype."""
    k1 = call(f, t0, y0, stats)
    if not isinstance(k1, torch.Tensor):
        raise InputError(f"f(t, y) returned {type(k1).__name__}; expected a tensor shaped like y0")
    if k1.shape != y0.shape:
        raise InputError(
            f"f(t, y) returned shape {tuple(k1.shape)}; expected y0's shape {tuple(y0.shape)}"
        )
    if k1.dtype != y0.dtype:
        raise InputError(f"f(t, y) returned dtype {k1.dtype}; expected y0's dtype {y0.dtype}")
    return k1


def stage_times(solver: RungeKutta, tabs: StepTensors, times: torch.Tensor) -> torch.Tensor:
    """The nodes ``c`` in the dtype of the times (float64 where the state is float32)."""
    if tabs.c.dtype == times.dtype and tabs.c.device == times.device:
        return tabs.c
    return torch.tensor(solver.tableau.c, dtype=times.dtype, device=times.device)


def rk_step(
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
    if tabs.workspace is not None:  # an implicit method: Newton's iteration per stage
        y1_, k_, err_ = tabs.workspace.step(f, t, h, y, k1, c_time, stats, buf)
        return y1_, k_, err_
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
            buf[i] = call(f, ts[i], yi, stats).reshape(-1)
        y1 = yi if solver.fsal else torch.addmm(yf, rows[s - 1], buf).view(shape)
        err = error_estimate(hw[s:], buf, shape) if solver.adaptive else None
        return y1, buf.view(s, *shape), err
    ks = [k1.reshape(1, -1)]
    for i in range(1, s):
        kst = ks[0] if i == 1 else torch.cat(ks)
        yi = torch.addmm(yf, hw[i - 1 : i, :i], kst).view(shape)
        ks.append(call(f, ts[i], yi, stats).reshape(1, -1))
    kall = torch.cat(ks) if s > 1 else ks[0]
    y1 = yi if solver.fsal else torch.addmm(yf, hw[s - 1 : s], kall).view(shape)
    err = None
    if solver.adaptive:
        with torch.no_grad():
            err = error_estimate(hw[s:], kall, shape)
    return y1, kall.view(s, *shape), err


def error_estimate(rows: torch.Tensor, k: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The local error from the error rows (scaled by ``h``) of the weights and the stages.

    With a second, lower-order row (DOP853) the two estimates are combined per component as
    ``e |e| / sqrt(e**2 + 0.01 e_low**2)``: homogeneous of degree one, so scaling by the
    tolerance afterwards is the same as before.
    """
    e = torch.mm(rows, k)
    if rows.shape[0] == 1:
        return e.view(shape)
    high, low = e[0], e[1]
    size = torch.sqrt(high * high + 0.01 * (low * low))
    safe = torch.where(size > 0, size, torch.ones_like(size))
    return torch.where(size > 0, high * high.abs() / safe, torch.zeros_like(high)).view(shape)


def dense_stages(
    f: VectorField,
    t: torch.Tensor,
    h: torch.Tensor | float,
    y: torch.Tensor,
    k: torch.Tensor,
    solver: RungeKutta,
    stats: Stats,
) -> torch.Tensor:
    """The step's stages followed by those only the dense output needs (none for most)."""
    tab = solver.tableau
    if not tab.dense_c:
        return k
    hy = h.to(y.dtype) if isinstance(h, torch.Tensor) else h
    yf = y.reshape(1, -1)
    for c_j, row in zip(tab.dense_c, tab.dense_a, strict=True):
        w = torch.tensor(row, dtype=y.dtype, device=y.device).unsqueeze(0) * hy
        y_j = torch.addmm(yf, w, k.reshape(k.shape[0], -1)).view(y.shape)
        k = torch.cat([k, call(f, t + c_j * h, y_j, stats).unsqueeze(0)])
    return k
