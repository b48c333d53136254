"""Non-terminal events under the per-sample continuous adjoint (``solve(..., event=Event(...,
terminal=False), adjoint=Adjoint())``).

A crossing ``k`` of sample ``b`` at ``tau`` where ``g(tau, y(tau); p_g) = 0`` is recorded in
``Solution.crossings`` with a differentiable time. By the implicit function theorem, with
``D = dg/dt + dg/dy . f(tau, y(tau))``,

    dtau = -(dg/dy . dy(tau) + dg/dp_g . dp_g) / D,

so a cotangent ``G`` of ``tau`` gives ``dL = w dg/dy . dy(tau) + w dg/dp_g . dp_g`` with ``w
= -G / D``: to the adjoint it is an output at ``tau`` whose cotangent is ``w dg/dy``, and
the event function's parameters get ``w dg/dp_g``. The backward solve of the sample
therefore stops at each of its crossings (those with a nonzero cotangent), adds that jump to
its adjoint there and goes on from the state it re-integrated backwards (no state is kept
from the forward solve). The dependence of ``y(tau)`` on ``y0``, ``f``'s parameters and the
start time is then carried by the adjoint as for any output. A tangent crossing (``D =
0``) takes ``D = 1``, as under backprop (:func:`~infdepth.ode._events.differentiable_event`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from infdepth.ode._adjoint_events import event_slope
from infdepth.ode._errors import SolverError
from infdepth.ode._events import Event, SteadyState
from infdepth.ode._stepping import VectorField


@dataclass(frozen=True)
class CrossingJumps:
    """The crossings with a nonzero cotangent, each placed in its output segment.

    ``segment[k] = i``: the crossing lies in ``(t_{i-1}, t_i]`` of its sample (``i >= 1``);
    ``rank[k]``: its position among its sample's crossings in that segment counted from the
    last (the backward solve meets rank 0 first).
    """

    events: tuple[Event | SteadyState, ...]
    sample: torch.Tensor
    time: torch.Tensor
    event: torch.Tensor
    cot: torch.Tensor
    segment: torch.Tensor
    rank: torch.Tensor

    def steps(self, i: int, bottom: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """For segment ``i``: the targets ``(batch,)`` of each stop of the backward solve (a
        sample's next crossing, ``bottom`` for a sample with none left) and the crossings
        ``(k,)`` met there, in the order the backward solve meets them."""
        here = (self.segment == i).nonzero().squeeze(1)
        if here.numel() == 0:
            return
        for j in range(int(self.rank[here].max()) + 1):
            ks = here[self.rank[here] == j]
            yield bottom.index_put((self.sample[ks],), self.time[ks].to(bottom.dtype)), ks


def plan_crossings(
    events: Sequence[Event | SteadyState], sample: torch.Tensor, time: torch.Tensor,
    event: torch.Tensor | None, cot: torch.Tensor | None, tgrid: torch.Tensor,
    reached: torch.Tensor, direction: float,
) -> CrossingJumps | None:
    """The crossings ``(sample, time, event)`` (grouped by sample, in the order of
    integration, as :meth:`EventCheck.crossings` gives them) whose cotangent ``cot`` is
    nonzero, placed in the output segments of ``tgrid`` ``(T, batch)``; ``None`` when there is
    none. A crossing of a failed sample after its last output reached (``reached`` ``(T,
    batch)`` false there) has no state to start the backward solve from: it raises."""
    if cot is None or time.numel() == 0:
        return None
    keep = (cot != 0).nonzero().squeeze(1)
    if keep.numel() == 0:
        return None
    n_out = tgrid.shape[0]
    sample, time, cot = sample[keep], time[keep].detach(), cot[keep].to(time.dtype)
    event = torch.zeros_like(sample) if event is None else event[keep]
    before = direction * (tgrid[:, sample] - time.to(tgrid.dtype)) < 0  # outputs before tau
    segment = before.sum(0).clamp(1, n_out - 1)
    lost = ~reached[segment, sample]
    if bool(lost.any()):
        k = int(lost.nonzero()[0, 0])
        raise SolverError(
            f"the crossing of sample {int(sample[k])} at t={float(time[k]):.6g} comes after "
            "the last output that sample reached (it failed, throw=False): Adjoint() has no "
            "state there to differentiate its time from; use Backprop() or Checkpointed()")
    key = sample * n_out + segment
    _, inverse, counts = torch.unique_consecutive(key, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts
    pos = torch.arange(key.shape[0], device=key.device) - first[inverse]
    rank = counts[inverse] - 1 - pos
    return CrossingJumps(tuple(events), sample, time, event, cot, segment, rank)


def crossing_jump(
    f: VectorField, plan: CrossingJumps, ks: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
    compact: bool, params: tuple[torch.Tensor, ...], pg: list[torch.Tensor],
) -> torch.Tensor:
    """The jumps ``w dg/dy`` ``(batch, F)`` of the adjoint at the crossings ``ks`` (zero in
    the other rows), the event functions' parameter gradients ``w dg/dp_g`` added to
    ``pg``. ``t`` ``(batch,)`` and ``y`` ``(batch, ...)``: every sample's time and
    re-integrated state, those of the crossing's sample at its crossing."""
    batch = y.shape[0]
    rows = plan.sample[ks]
    if compact:  # rows independent
        slope = f(t[rows], y[rows]).detach().reshape(rows.shape[0], -1)
    else:  # f sees the whole batch
        slope = f(t, y).detach().reshape(batch, -1)[rows]
    jump = torch.zeros(batch, slope.shape[1], dtype=y.dtype, device=y.device)
    for j in plan.event[ks].unique().tolist():
        ev = plan.events[j]
        assert isinstance(ev, Event)
        mine = (plan.event[ks] == j).nonzero().squeeze(1)
        r = rows[mine]
        with torch.enable_grad():
            tt = plan.time[ks[mine]].requires_grad_(True)
            g, gy_, denom = event_slope(ev, tt, y[r], slope[mine])
            w = -plan.cot[ks[mine]] / denom  # (k,) in float64
            jump = jump.index_copy(0, r, w.to(y.dtype).unsqueeze(1) * gy_)
            if params and g.requires_grad:
                grads = torch.autograd.grad(g, params, grad_outputs=w.to(g.dtype),
                                            allow_unused=True)
                for acc, gq in zip(pg, grads, strict=True):
                    if gq is not None:
                        acc.add_(gq)
    return jump
