"""Terminal events under the per-sample continuous adjoint (``solve(..., event=...,
adjoint=Adjoint())``).

A sample ``b`` stopped by a terminal :class:`Event` at ``t*`` where ``g(t*, y(t*); p_g) =
0``. Its outputs at and after ``t*`` hold ``y* = y(t*)``, so the cotangents there add up to
``G_y`` (with that of ``Solution.event_y``), and ``Solution.event_t`` brings ``G_t``. With
``f* = f(t*, y*)``, ``dy* = dy(t*) + f* dt*`` and, by the implicit function theorem on ``g =
0``, ``dt* = -(dg/dy . dy(t*) + dg/dp_g dp_g) / D`` where ``D = dg/dt + dg/dy . f*``, so

    dL = G_y . dy(t*) + c dt*,   c = G_y . f* + G_t,
       = (G_y - (c / D) dg/dy) . dy(t*) - (c / D) dg/dp_g . dp_g.

The backward pass of the sample therefore starts at ``t*`` with the adjoint ``a(t*) = G_y -
(c / D) dg/dy`` and integrates the adjoint system from there on its own steps; the event
function's parameters get ``-(c / D) dg/dp_g`` (one vector-Jacobian product per event over
the rows it stopped; autograd sums over the samples). A tangent crossing (``D = 0``) is
treated as ``D = 1``, as :func:`~infdepth.ode._events.differentiable_event` does under
backprop. A sample stopped by a :class:`SteadyState` (the end of a step, not
differentiated in time) starts at its stopping time with ``a = G_y``. The crossings of
non-terminal events are differentiated by :mod:`._adjoint_crossings`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from infdepth.errors import InputError
from infdepth.ode._events import Event, SteadyState
from infdepth.ode._stepping import VectorField


def event_params(events: Sequence[Event | SteadyState], params: tuple[torch.Tensor, ...]
                 ) -> tuple[torch.Tensor, ...]:
    """``params`` and the parameters of every event function that is an ``nn.Module`` (or a
    bound method of one), without repeats."""
    seen = {id(q) for q in params}
    out = list(params)
    for ev in events:
        if not isinstance(ev, Event):
            continue
        owner = ev.fn if isinstance(ev.fn, torch.nn.Module) else getattr(ev.fn, "__self__", None)
        if isinstance(owner, torch.nn.Module):
            for q in owner.parameters():
                if q.requires_grad and id(q) not in seen:
                    seen.add(id(q))
                    out.append(q)
    return tuple(out)


def check_events_for_adjoint(events: Sequence[Event | SteadyState], explicit: bool,
                             t0: torch.Tensor, y0: torch.Tensor) -> None:
    """Refuse what the adjoint would silently not differentiate: an event function that is
    no module and uses tensors that require grad (unless ``Adjoint(params=...)`` names the
    tensors to differentiate)."""
    for j, ev in enumerate(events):
        if not isinstance(ev, Event):
            continue
        owner = ev.fn if isinstance(ev.fn, torch.nn.Module) else getattr(ev.fn, "__self__", None)
        if explicit or isinstance(owner, torch.nn.Module) or not torch.is_grad_enabled():
            continue
        with torch.enable_grad():
            g = ev.fn(t0.detach(), y0.detach())
        if isinstance(g, torch.Tensor) and g.requires_grad:
            raise InputError(
                f"event[{j}]'s fn uses tensors that require grad, which Adjoint() cannot see "
                "(fn is not an nn.Module): their gradients would be None; make fn an "
                "nn.Module or pass them with adjoint=Adjoint(params=...)")


def event_adjoint(
    f: VectorField, events: Sequence[Event | SteadyState], index: torch.Tensor,
    t_star: torch.Tensor, y_star: torch.Tensor, g_y: torch.Tensor, g_t: torch.Tensor,
    params: tuple[torch.Tensor, ...], pg: list[torch.Tensor],
) -> torch.Tensor:
    """``a(t*)`` ``(batch, F)`` of every sample (``G_y`` where ``index`` names no
    :class:`Event`) and the event functions' parameter gradients added to ``pg``.

    ``index`` ``(batch,)``: the event that stopped each sample (``-1``: none); ``t_star``
    its stopping time (float64), ``y_star`` ``(batch, ...)`` its state there (finite for
    every row), ``g_y`` ``(batch, F)`` and ``g_t`` ``(batch,)`` the cotangents of ``y*`` and
    ``t*`` (zero where no event stopped the sample)."""
    a = g_y.clone()
    mine = [j for j, ev in enumerate(events) if isinstance(ev, Event)]
    hit = [(j, (index == j).nonzero().squeeze(1)) for j in mine]
    hit = [(j, r) for j, r in hit if r.numel()]
    if not hit:
        return a
    batch = y_star.shape[0]
    # f at every row (rows independent, or the whole batch under compact=False)
    slope = f(t_star, y_star).detach().reshape(batch, -1)
    for j, r in hit:
        ev = events[j]
        assert isinstance(ev, Event)
        with torch.enable_grad():
            tt = t_star[r].detach().requires_grad_(True)
            g, gy_, denom = event_slope(ev, tt, y_star[r], slope[r])
            c = (g_y[r] * slope[r]).sum(1).to(tt.dtype) + g_t[r]
            w = -c / denom  # (k,) in float64
            a = a.index_copy(0, r, g_y[r] + w.to(a.dtype).unsqueeze(1) * gy_)
            if params and g.requires_grad:
                grads = torch.autograd.grad(g, params, grad_outputs=w.to(g.dtype),
                                            allow_unused=True)
                for acc, gq in zip(pg, grads, strict=True):
                    if gq is not None:
                        acc.add_(gq)
    return a


def event_slope(ev: Event, tt: torch.Tensor, y: torch.Tensor,
                slope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(g, dg/dy, D)`` at the event rows: ``g = ev.value(tt, y)`` (graph kept for ``dg/dp``),
    ``dg/dy`` flattened per row, and ``D = dg/dt + dg/dy . f`` (1 where it is 0), in ``tt``'s dtype.

    Call under ``torch.enable_grad()`` with ``tt`` requiring grad.
    """
    yy = y.detach().requires_grad_(True)
    g = ev.value(tt, yy)
    gt, gy = torch.autograd.grad(g.sum(), (tt, yy), retain_graph=True, allow_unused=True)
    gy_ = (torch.zeros_like(yy) if gy is None else gy).reshape(yy.shape[0], -1)
    denom = (gy_ * slope).sum(1).to(tt.dtype)
    if gt is not None:
        denom = denom + gt
    return g, gy_, torch.where(denom == 0, torch.ones_like(denom), denom)
