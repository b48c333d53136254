"""The continuous adjoint with a step size per sample: ``solve(..., adjoint=Adjoint())``.

The forward pass is the per-sample solve (:func:`integrate_per_sample`) without autograd.
The backward pass solves the adjoint system of each sample backwards with the same
per-sample integrator, between consecutive output times (restarting at each, where
``dL/dy`` jumps), every sample on its own steps, with its own error norm: the largest RMS of
the scaled error over the two halves of its state ``(y, a = dL/dy)``, torchdiffeq's mixed
norm per sample, with the tolerances of the :class:`Adjoint` object (those of the forward
where it gives none). A sample's gradient therefore does not depend on the batch it is in.

Parameter gradients are a sum over samples, so they are not carried in the state (which
would take ``batch x n_params`` numbers): the parameter integral ``-int a^T df/dp dt`` is
independent of the rest of the state, and the Runge-Kutta method integrates it with the
same stages as ``(y, a)``: a step of sample ``b`` adds ``h_b sum_i b_i (-a_i^T df/dp(t_i,
y_i))``. After every pass of the backward loop, the stages of the accepted steps are
rebuilt from their scaled slopes and ``f`` is evaluated once more on them (stages with
``b_i = 0`` skipped, several stages stacked into one call of at most about a batch of rows),
followed by one vector-Jacobian product with the rows' cotangents ``-h_b b_i a_i``: autograd
sums over the rows, which gives the sum over samples. The adjoint's own derivative
``-a^T df/dy`` needs only the ``y`` half of the product. Cost: the extra evaluations of the
accepted stages with ``b_i != 0`` (Dopri5: 5 per step) and their products with respect to
the parameters; memory: one such stacked evaluation, independent of the number of steps.
Hence the error is measured on ``(y, a)`` only, as ``Adjoint(seminorm=True)`` does in the
shared case (``seminorm`` changes nothing here).

Gradients with respect to the output times are those of the continuous problem, per
sample: ``dL/dt_i = dL/dy(t_i) . f(t_i, y(t_i))`` and ``-a(t_0) . f(t_0, y0)`` for the start
(with ``a(t_0)`` the adjoint without the cotangent of the output at ``t_0``).

Terminal events (one or several, and ``SteadyState``): the forward solve stops each sample
at its event; the backward solve of a stopped sample starts at its own stopping time ``t*``
with the adjoint given by the implicit function theorem (:mod:`._adjoint_events`), its
outputs at and after ``t*`` (which hold ``y(t*)``) adding their cotangents there.
Non-terminal events: the backward solve of a sample stops at each of its crossings whose
time has a cotangent and adds the implicit function theorem's jump to its adjoint there
(:mod:`._adjoint_crossings`). A sample that failed under ``throw=False`` gets the gradient
of the outputs it reached (its outputs not reached, NaN, are skipped; a crossing after them
raises). ``Solution.evaluate`` is differentiated by :mod:`._adjoint_evaluate`, which runs
:func:`_backward` on the grid ``(t_0, t_q)``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from infdepth.ode._adjoint import Adjoint
from infdepth.ode._adjoint_crossings import crossing_jump, plan_crossings
from infdepth.ode._adjoint_events import event_adjoint
from infdepth.ode._controller import PIController
from infdepth.ode._errors import SolverError
from infdepth.ode._events import Event, SteadyState
from infdepth.ode._per_sample import Raw, Record, Status, integrate_per_sample
from infdepth.ode._per_sample_step import _rows
from infdepth.ode._solvers import RungeKutta
from infdepth.ode._stepping import VectorField


@dataclass
class _Setup:
    """What the backward pass needs besides the saved tensors; ``raw`` is the forward's."""

    f: VectorField
    solver: RungeKutta
    ctrl: PIController
    back: PIController
    direction: float
    max_steps: int
    compact: bool
    keep_dense: bool
    events: tuple[Event | SteadyState, ...] = ()
    raw: Raw | None = None


def backward_controller(ctrl: PIController, method: Adjoint) -> PIController:
    """``ctrl`` with the tolerances of ``method`` (those of ``ctrl`` where it gives none)."""
    return dataclasses.replace(
        ctrl,
        rtol=ctrl.rtol if method.rtol is None else method.rtol,
        atol=ctrl.atol if method.atol is None else method.atol,
    )


def adjoint_per_sample(
    f: VectorField, y0: torch.Tensor, tgrid: torch.Tensor, direction: float,
    solver: RungeKutta, ctrl: PIController, *, method: Adjoint,
    params: tuple[torch.Tensor, ...], max_steps: int, compact: bool, keep_dense: bool,
    events: tuple[Event | SteadyState, ...] = (),
) -> Raw:
    """The per-sample solve of ``f`` from ``y0`` over ``tgrid`` ``(T, batch)`` (stopping each
    sample at its first terminal event of ``events``) whose outputs, final states and event
    times carry the per-sample continuous adjoint's gradients with respect to ``y0``,
    ``tgrid`` and ``params`` (those of ``f`` and of the event functions)."""
    s = _Setup(f, solver, ctrl, backward_controller(ctrl, method), direction, max_steps,
               compact, keep_dense, events)
    ys, event_t, cross_t = _PerSampleAdjointFn.apply(s, y0, tgrid, *params)
    assert s.raw is not None
    raw = s.raw
    s.raw = dataclasses.replace(raw, records=[])  # backward reads the status and stops only
    ok = (raw.status == int(Status.OK)) | (raw.status == int(Status.EVENT))
    # its end state (an event state is held by the outputs after the event): differentiable
    y_stop = torch.where(_rows(ok, ys[-1]), ys[-1], raw.y_stop)
    return dataclasses.replace(raw, ys=ys, y_stop=y_stop, event_t=event_t,
                               crossings=(raw.crossings[0], cross_t))


class _PerSampleAdjointFn(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, s: _Setup, y0: torch.Tensor, tgrid: torch.Tensor, *params: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            raw = integrate_per_sample(s.f, y0, tgrid, s.direction, s.solver, s.ctrl,
                                       max_steps=s.max_steps, event=s.events or None,
                                       compact=s.compact, keep_dense=s.keep_dense)
        s.raw = raw
        ctx.s = s
        ctx.save_for_backward(raw.ys, tgrid, raw.y_stop, *params)
        return raw.ys, raw.event_t, raw.crossings[1]

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor, g_t: torch.Tensor | None,
                 g_c: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        s: _Setup = ctx.s
        ys, tgrid, y_stop, *params_l = ctx.saved_tensors
        with torch.no_grad():
            a, t_grad, pg = _backward(s, ys, tgrid.detach(), y_stop, tuple(params_l), g, g_t,
                                      bool(ctx.needs_input_grad[2]), g_c)
        return (None, a, t_grad, *pg)


def _backward(
    s: _Setup, ys: torch.Tensor, tgrid: torch.Tensor, y_stop: torch.Tensor,
    params: tuple[torch.Tensor, ...], g: torch.Tensor, g_t: torch.Tensor | None, need_t: bool,
    g_c: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor]]:
    """``dL/dy0``, ``dL/dtgrid`` (``need_t``) and ``dL/dparams`` from the cotangents of the
    outputs ``g``, of the event times ``g_t`` and of the crossing times ``g_c``; ``s.raw``
    (``None``: no events) gives the stops and crossings."""
    n_out, batch = tgrid.shape
    raw = s.raw
    shape = ys.shape[2:]
    width = math.prod(shape)
    # outputs a failed sample (throw=False) did not reach are NaN: no cotangent, no solve
    reached = torch.isfinite(ys.reshape(n_out, batch, -1)).all(2)
    g = torch.where(reached.unsqueeze(2), g.reshape(n_out, batch, -1), 0.0)
    safe = torch.where(reached.unsqueeze(2), ys.reshape(n_out, batch, -1),
                       y_stop.reshape(1, batch, -1))  # finite states for f
    a = torch.zeros(batch, width, dtype=ys.dtype, device=ys.device)
    pg = [torch.zeros_like(q) for q in params]
    quad = _Quadrature(s, params, pg, width, shape)
    start = _event_starts(s, tgrid, y_stop, params, pg, g, g_t, safe, reached)
    jumps = None if raw is None else plan_crossings(
        s.events, raw.crossings[0], raw.crossings[1], raw.crossing_event, g_c, tgrid, reached,
        s.direction)
    d = s.direction
    for i in range(n_out - 1, 0, -1):
        a = a + g[i]
        here = reached[i]
        t_i = tgrid[i]
        if start is not None:  # a stopped sample starts at its stop with its event adjoint
            first, t_stop, a_stop = start
            at = first == i
            a = torch.where(at.unsqueeze(1), a + a_stop, a)
            here = here & (first >= i)
            t_i = torch.where(at, t_stop, t_i)
        z = torch.cat([safe[i], a], 1)
        spare = torch.where(d * (tgrid[i] - tgrid[i - 1]) > 0, tgrid[i], tgrid[i - 1] + d)
        if jumps is not None:  # stop at each crossing, add its jump (_adjoint_crossings)
            for target, ks in jumps.steps(i, tgrid[i - 1]):
                z = _carry(s, quad, z, t_i, target, here, spare, shape, width)
                t_i = torch.where(here, target, t_i)  # at its crossing, or at t_{i-1}
                jump = crossing_jump(s.f, jumps, ks, t_i, z[:, :width].view(batch, *shape),
                                     s.compact, params, pg)
                z = z + torch.cat([torch.zeros_like(a), jump], 1)
        a = _carry(s, quad, z, t_i, tgrid[i - 1], here, spare, shape, width)[:, width:]
    a = a + g[0]
    t_grad = None
    if need_t:
        t_grad = torch.zeros_like(tgrid)
        for i in range(1, n_out):
            slope = s.f(tgrid[i], safe[i].view(batch, *shape)).reshape(batch, -1)
            dot = (g[i] * slope).sum(1).to(tgrid.dtype)
            t_grad[i] = torch.where(reached[i], dot, 0.0)
        slope = s.f(tgrid[0], safe[0].view(batch, *shape)).reshape(batch, -1)
        t_grad[0] = -((a - g[0]) * slope).sum(1).to(tgrid.dtype)
    return a.view(batch, *shape), t_grad, pg


def _carry(
    s: _Setup, quad: _Quadrature, z: torch.Tensor, top: torch.Tensor, bottom: torch.Tensor,
    here: torch.Tensor, spare: torch.Tensor, shape: torch.Size, width: int,
) -> torch.Tensor:
    """``z`` ``(batch, 2F)`` with the rows ``here`` that lie strictly before ``bottom``
    (``top``: their times) carried back to ``bottom``; the other rows unchanged. Masked
    (``compact=False``), those take empty steps over ``(spare, bottom)`` with a zero adjoint,
    so that they add nothing to the parameter integral."""
    move = here & (s.direction * (top - bottom) > 0)
    tseg = torch.stack([top, bottom])
    if bool(move.all()):
        return _segment(s, quad, z, tseg, None, shape, width)
    if s.compact:  # only the rows that move
        sel = move.nonzero().squeeze(1)
        if sel.numel():
            z1 = _segment(s, quad, z[sel], tseg[:, sel], None, shape, width, sel)
            z = z.index_copy(0, sel, z1)
        return z
    if not bool(move.any()):
        return z
    # f sees the whole batch: the others are frozen (their field is zero)
    rest = _rows(~move, z)
    z_in = torch.where(rest & (torch.arange(z.shape[1], device=z.device) >= width), 0.0, z)
    tseg = torch.where(move, tseg, torch.stack([spare, bottom]))
    return torch.where(rest, z, _segment(s, quad, z_in, tseg, ~move, shape, width))


def _event_starts(
    s: _Setup, tgrid: torch.Tensor, y_stop: torch.Tensor, params: tuple[torch.Tensor, ...],
    pg: list[torch.Tensor], g: torch.Tensor, g_t: torch.Tensor | None, safe: torch.Tensor,
    reached: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """For samples stopped by an event: the index ``e`` of their first output at or after
    the stop (``n_out`` for the others), their stopping times and the adjoint there, with
    the cotangents of those outputs moved into it (``g``, ``safe`` and ``reached`` updated
    in place: the outputs after ``e`` take no solve, output ``e`` starts at the stop)."""
    raw = s.raw
    if raw is None or not s.events:
        return None
    stopped = raw.status == int(Status.EVENT)
    if not bool(stopped.any()):
        return None
    n_out, batch = tgrid.shape
    t_stop = torch.where(stopped, raw.t_stop.to(tgrid.dtype), tgrid[-1])
    before = s.direction * (tgrid - t_stop) < 0  # outputs strictly before the stop
    first = torch.where(stopped, before.sum(0), n_out)
    after = torch.arange(n_out, device=tgrid.device).unsqueeze(1) >= first  # (T, batch)
    g_y = (g * after.unsqueeze(2)).sum(0)
    g.masked_fill_(after.unsqueeze(2), 0.0)
    y_star = y_stop.reshape(batch, -1)
    rows = first.clamp(max=n_out - 1)
    safe[rows, torch.arange(batch, device=rows.device)] = torch.where(
        stopped.unsqueeze(1), y_star, safe[rows, torch.arange(batch, device=rows.device)])
    reached.masked_fill_(after & (torch.arange(n_out, device=tgrid.device).unsqueeze(1)
                                  > first), False)
    index = raw.event_index if raw.event_index is not None else torch.zeros_like(first)
    index = torch.where(stopped, index, -1)
    g_time = (torch.zeros_like(t_stop) if g_t is None else
              torch.where(stopped, g_t.to(t_stop.dtype), 0.0))
    a_stop = event_adjoint(s.f, s.events, index, t_stop, y_stop, g_y, g_time, params, pg)
    return first, t_stop, torch.where(stopped.unsqueeze(1), a_stop, 0.0)


def _segment(
    s: _Setup, quad: _Quadrature, z0: torch.Tensor, tseg: torch.Tensor,
    frozen: torch.Tensor | None, shape: torch.Size, width: int,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """The adjoint state ``(y, a)`` of every row of ``z0`` ``(n, 2F)`` carried from
    ``tseg[0]`` to ``tseg[1]``; the parameter integral goes to ``quad``."""
    f = s.f

    def field(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        n = z.shape[0]
        y = z[:, :width].reshape(n, *shape)
        cot = z[:, width:].reshape(n, *shape)
        with torch.enable_grad():
            y_ = y.detach().requires_grad_(True)
            fy = f(t, y_)
            vj = None
            if fy.requires_grad:
                (vj,) = torch.autograd.grad(torch.vdot(fy.reshape(-1), cot.reshape(-1)), y_,
                                            allow_unused=True)
        out = torch.cat([fy.detach().reshape(n, -1),
                         (torch.zeros_like(y) if vj is None else -vj).reshape(n, -1)], 1)
        return out if frozen is None else torch.where(_rows(frozen, out), 0.0, out)

    quad.start(z0[:, :width], tseg[0])
    raw = integrate_per_sample(field, z0, tseg, -s.direction, s.solver, s.back,
                               max_steps=s.max_steps, event=None, compact=s.compact,
                               keep_dense=False, norm=_y_and_adjoint_rms,
                               on_accept=quad if quad.needed else None)
    failed = (raw.status != int(Status.OK)).nonzero()
    if failed.numel():
        b = int(failed[0, 0])
        why = Status(int(raw.status[b])).name
        raise SolverError(
            f"the adjoint's backward solve failed ({why}) for sample "
            f"{b if rows is None else int(rows[b])} at t="
            f"{float(raw.t_stop[b]):.6g} between the output times {float(tseg[0, b]):.6g} and "
            f"{float(tseg[1, b]):.6g}; loosen Adjoint(rtol=..., atol=...) or raise max_steps")
    return raw.ys[-1]


def _y_and_adjoint_rms(x: torch.Tensor) -> torch.Tensor:
    """Each row's larger RMS of its two halves ``(y, a)`` (the mixed norm, per sample)."""
    halves = x.reshape(x.shape[0], 2, -1)
    return torch.linalg.vector_norm(halves, dim=2).amax(1) * (1.0 / math.sqrt(halves.shape[2]))


class _Quadrature:
    """Adds ``h_b sum_i b_i (-a_i^T df/dp(t_i, y_i))`` of every accepted step to the parameter
    gradients: one vector-Jacobian product over stacked stages (autograd sums the rows)."""

    def __init__(self, s: _Setup, params: tuple[torch.Tensor, ...], pg: list[torch.Tensor],
                 width: int, shape: torch.Size) -> None:
        self.f, self.compact, self.params, self.pg = s.f, s.compact, params, pg
        self.width, self.shape = width, shape
        tab = s.solver.tableau
        self.c = tab.c
        self.stages = [(i, bi) for i, bi in enumerate(tab.b) if bi != 0.0]
        self.a = [list(row) for row in tab.a]
        self.needed = bool(params)
        self.base_y: torch.Tensor | None = None
        self.base_t: torch.Tensor | None = None
        self.batch = 1

    def start(self, y: torch.Tensor, t: torch.Tensor) -> None:
        """A segment of ``y.shape[0]`` rows begins at states ``y`` and times ``t``: the rows
        ``f`` needs besides the accepted ones under ``compact=False``."""
        self.base_y, self.base_t, self.batch = y, t, y.shape[0]

    def __call__(self, rec: Record) -> None:
        m, w = rec.rows.shape[0], self.width
        z = rec.y.reshape(m, -1)
        hk = rec.hk.reshape(rec.hk.shape[0], m, -1)
        ys, ts, cots = [], [], []
        for i, bi in self.stages:
            zi = z
            if i > 0:
                coef = torch.tensor(self.a[i - 1], dtype=z.dtype, device=z.device)
                zi = z + torch.tensordot(coef, hk[:i], dims=1)
            ys.append(zi[:, :w])
            ts.append(rec.t + self.c[i] * rec.h)
            cots.append(zi[:, w:] * (-bi * rec.h).to(z.dtype).unsqueeze(1))
        if self.compact:  # rows are independent: stack stages, about a batch of rows per call
            per_call = max(1, self.batch // m)
            for j in range(0, len(ys), per_call):
                self._vjp(torch.cat(ts[j : j + per_call]), torch.cat(ys[j : j + per_call]),
                          torch.cat(cots[j : j + per_call]))
            return
        assert self.base_y is not None and self.base_t is not None
        for yi, ti, ci in zip(ys, ts, cots, strict=True):  # f needs the whole batch in order
            self._vjp(self.base_t.index_copy(0, rec.rows, ti),
                      self.base_y.index_copy(0, rec.rows, yi),
                      torch.zeros_like(self.base_y).index_copy(0, rec.rows, ci))

    def _vjp(self, t: torch.Tensor, y: torch.Tensor, cot: torch.Tensor) -> None:
        with torch.enable_grad():
            fy = self.f(t, y.view(y.shape[0], *self.shape))
            if not fy.requires_grad:
                return
            grads = torch.autograd.grad(torch.vdot(fy.reshape(-1), cot.reshape(-1)),
                                        self.params, allow_unused=True)
        for acc, gq in zip(self.pg, grads, strict=True):
            if gq is not None:
                acc.add_(gq)
