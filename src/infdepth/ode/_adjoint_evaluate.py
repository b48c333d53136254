"""``Solution.evaluate(t)`` differentiated under the per-sample continuous adjoint.

The forward solve of ``solve(..., adjoint=Adjoint())`` keeps no graph, so the dense
interpolant's values carry none either. Each call of ``evaluate`` whose result needs a
gradient is one more node of autograd: its backward pass solves the adjoint system of every
sample backwards from the sample's query time ``t_q`` (with the value of the interpolant
there as the state and the cotangent of the value as the adjoint) to the sample's start
time, on the sample's own steps with the tolerances of the :class:`Adjoint`, exactly as the
solve's backward pass does between two output times (``_per_sample_adjoint._backward`` on
the grid ``(t_0, t_q)``). Gradients: ``y0``, the parameters of ``f``, the query times
(``dL/dt_q = G . f(t_q, y(t_q))``, those of the continuous problem) and the start times
(``-a(t_0) . f(t_0, y0)``). The cost: one backward solve from ``t_q`` to ``t_0`` per call of
``evaluate`` that is differentiated (so evaluate the times of one loss in one call, ``t`` of
shape ``(batch,)``, or as output times of the solve).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from infdepth.ode._controller import PIController
from infdepth.ode._per_sample_adjoint import _backward, _Setup
from infdepth.ode._solvers import RungeKutta
from infdepth.ode._stepping import VectorField


@dataclass(frozen=True)
class AdjointEvaluation:
    """What :meth:`Solution.evaluate` needs to differentiate its values under ``Adjoint()``:
    the field, the backward solve's solver and controller, and the solve's inputs (``y0``,
    the start times ``t0`` ``(batch,)``, the parameters)."""

    f: VectorField
    solver: RungeKutta
    back: PIController
    direction: float
    max_steps: int
    compact: bool
    y0: torch.Tensor
    t0: torch.Tensor
    params: tuple[torch.Tensor, ...]

    def attach(self, tq: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``values`` (the interpolant at ``tq`` ``(batch,)``, NaN where outside a sample's
        steps) carrying the continuous adjoint's gradients."""
        inputs = (tq, self.y0, self.t0, *self.params)
        if not torch.is_grad_enabled() or not any(x.requires_grad for x in inputs):
            return values
        out: torch.Tensor = _EvaluateFn.apply(self, values, *inputs)
        return out


class _EvaluateFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, ev: AdjointEvaluation, values: torch.Tensor, tq: torch.Tensor,
                y0: torch.Tensor, t0: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        ctx.ev = ev
        ctx.save_for_backward(values, tq, y0, t0, *params)
        return values.clone()

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        ev: AdjointEvaluation = ctx.ev
        values, tq, y0, t0, *params_l = ctx.saved_tensors
        batch = values.shape[0]
        need_tq, need_y0, need_t0 = ctx.needs_input_grad[2:5]
        s = _Setup(ev.f, ev.solver, ev.back, ev.back, ev.direction, ev.max_steps, ev.compact,
                   False)
        if not (need_y0 or need_t0 or any(ctx.needs_input_grad[5:])):
            return (None, None, _query_time_grad(ev, values, tq, y0, g), None, None,
                    *([None] * len(params_l)))
        with torch.no_grad():
            start = t0.detach()
            ok = torch.isfinite(values.reshape(batch, -1)).all(1)
            top = torch.where(ok, tq.detach().to(start.dtype), start)  # outside: no solve
            ys = torch.stack([y0.detach(), values])
            cot = torch.stack([torch.zeros_like(g), g])
            a, t_grad, pg = _backward(s, ys, torch.stack([start, top]), y0.detach(),
                                      tuple(params_l), cot, None, bool(need_tq or need_t0))
        return (None, None,
                t_grad[1].to(tq.dtype) if need_tq and t_grad is not None else None,
                a.to(y0.dtype) if need_y0 else None,
                t_grad[0].to(t0.dtype) if need_t0 and t_grad is not None else None,
                *pg)


def _query_time_grad(ev: AdjointEvaluation, values: torch.Tensor, tq: torch.Tensor,
                     y0: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``G . f(t_q, y(t_q))`` per sample (zero outside its steps): the query times' gradient
    alone needs no backward solve, one call of ``f`` (on the whole batch)."""
    batch = values.shape[0]
    with torch.no_grad():
        ok = torch.isfinite(values.reshape(batch, -1)).all(1)
        y = torch.where(ok.view(batch, *([1] * (values.ndim - 1))), values, y0.detach())
        slope = ev.f(tq.detach(), y).reshape(batch, -1)
        dot = (torch.where(ok.unsqueeze(1), g.reshape(batch, -1), 0.0) * slope).sum(1)
    return dot.to(tq.dtype)
