"""The integration loop with a step size per sample: every sample has its own time, step
size, accept/reject decision, error norm, step count, event and status.

Each pass of the loop attempts one step for every sample still running. Samples that
finished (reached their last output time, hit their event, or failed) cost nothing more
with ``compact=True``: ``f`` is called on the running rows only (it must then treat rows
independently, as any batched network does). With ``compact=False`` ``f`` always sees the
whole batch (finished rows are frozen): use it when ``f`` holds per-sample data indexed by
row. Host synchronisation: one read per pass (whether any sample is still running) and one
per output time or event inside a step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import torch

from infdepth.ode._controller import PIController
from infdepth.ode._events import Event, SteadyState, differentiable_event, locate
from infdepth.ode._per_sample_step import (
    PerSampleSteps,
    _rows,
    dense_per_sample,
    dense_stages_per_sample,
    step_per_sample,
)
from infdepth.ode._solvers import RungeKutta
from infdepth.ode._stepping import Stats, VectorField, first_eval


class Status(IntEnum):
    """How each sample's solve ended."""

    OK = 0
    """Reached its last output time."""
    EVENT = 1
    """Stopped at its event (or steady state)."""
    MAX_STEPS = 2
    """Attempted ``max_steps`` steps first."""
    DT_UNDERFLOW = 3
    """Its step size fell below ``dtmin`` or no longer changed ``t``."""
    NONFINITE = 4
    """Its state or error estimate became NaN or infinite."""


@dataclass
class Record:
    """Accepted steps of one pass, for the dense interpolant: rows, starts, sizes, states, stages."""

    rows: torch.Tensor
    t: torch.Tensor
    h: torch.Tensor
    y: torch.Tensor
    k: torch.Tensor


@dataclass
class Raw:
    """What the loop returns: outputs ``(T, B, ...)``, per-sample end time, state and counters."""

    ys: torch.Tensor
    status: torch.Tensor
    t_stop: torch.Tensor
    y_stop: torch.Tensor
    event_t: torch.Tensor
    nfe: torch.Tensor
    accepted: torch.Tensor
    rejected: torch.Tensor
    records: list[Record] = field(default_factory=list)


def integrate_per_sample(
    f: VectorField,
    y0: torch.Tensor,
    tgrid: torch.Tensor,
    direction: float,
    solver: RungeKutta,
    ctrl: PIController,
    *,
    max_steps: int,
    event: Event | SteadyState | None,
    compact: bool,
    keep_dense: bool,
) -> Raw:
    """Solve each sample of ``y0`` ``(B, ...)`` over its own output times ``tgrid[:, b]``."""
    n_out, batch = tgrid.shape
    dev, long = y0.device, torch.long
    tabs = solver.tensors(y0.dtype, y0.device)
    c = torch.tensor(solver.tableau.c, dtype=tgrid.dtype, device=dev)
    dense = tabs.dense
    control = PerSampleSteps(ctrl, solver.order)
    t, t_end = tgrid[0].clone(), tgrid[-1]
    k1 = first_eval(f, t, y0, Stats())
    h = PerSampleSteps.initial(ctrl, f, t, y0, k1, solver.order, direction)
    prev_r = torch.ones_like(h)
    y = y0
    done = torch.zeros(batch, dtype=torch.bool, device=dev)
    status = torch.zeros(batch, dtype=long, device=dev)
    steps = torch.zeros(batch, dtype=long, device=dev)
    nfe = torch.full((batch,), 2 if ctrl.dt0 is None else 1, dtype=long, device=dev)
    accepted = torch.zeros(batch, dtype=long, device=dev)
    next_out = torch.ones(batch, dtype=long, device=dev)
    event_t = torch.full((batch,), float("nan"), dtype=tgrid.dtype, device=dev)
    g_prev = event.value(t, y0).detach() if isinstance(event, Event) else None
    out_idx: list[torch.Tensor] = [torch.arange(batch, device=dev)]
    out_val: list[torch.Tensor] = [y0]
    records: list[Record] = []
    all_rows = torch.arange(batch, device=dev)
    while True:
        running = ~done
        if not bool(running.any()):
            break
        rows = running.nonzero().squeeze(1) if compact else all_rows
        live = running[rows]

        def take(x: torch.Tensor) -> torch.Tensor:
            return x if not compact else x[rows]

        tw, hw, yw, kw, endw = take(t), take(h), take(y), take(k1), take(t_end)
        signed, last, under = control.next_step(tw, endw, hw, direction)
        stop_max = live & (take(steps) >= max_steps)
        stop_under = live & ~stop_max & under
        live = live & ~stop_max & ~stop_under
        signed = torch.where(live, signed, torch.zeros_like(signed))
        y1, k, err = step_per_sample(f, tw, signed, yw, kw, solver, tabs, c)
        r = control.ratio(err, yw, y1)
        bad = live & ~torch.isfinite(r)
        live = live & ~bad
        ok, h_next, prev_next = control.judge(torch.where(live, r, 0.0), signed, take(prev_r))
        acc = live & ok
        t_new = torch.where(last, endw, tw + signed)
        stop_t = torch.where(acc, t_new, tw)
        finish = acc & last
        event_here = torch.zeros_like(acc)
        y_new = torch.where(_rows(acc, y1), y1, yw)
        if isinstance(event, Event):
            g1 = event.value(t_new, y1).detach()
            event_here = acc & event.crossed(take(g_prev), g1)
        j = take(next_out)
        need_dense = torch.zeros_like(acc)
        if solver.tableau.dense_c:  # DOP853's extra stages, only for steps that use them
            tq = tgrid[j.clamp(max=n_out - 1), rows]
            need_dense = acc & (keep_dense | event_here | (
                (j < n_out) & (direction * (t_new - tq) > 0)))
        k_full = _with_dense_stages(f, tw, signed, yw, k, solver, need_dense, compact)
        if isinstance(event, Event):
            if bool(event_here.any()):
                sel = event_here.nonzero().squeeze(1)
                theta = locate(event, tw[sel], signed[sel], yw[sel], k_full[:, sel], dense,
                               take(g_prev)[sel], g1[sel])
                t_star = tw[sel] + theta * signed[sel]
                y_star = dense_per_sample(theta, yw[sel], signed[sel], k_full[:, sel], dense)
                t_ev, y_ev, _ = differentiable_event(event, f, t_star, y_star)
                stop_t = stop_t.index_put((sel,), t_star)
                y_new = y_new.index_put((sel,), y_ev)
                ev_rows = rows[sel] if compact else sel
                event_t = event_t.index_put((ev_rows,), t_ev)
                nfe = nfe.index_add(0, ev_rows, torch.ones_like(ev_rows))
            g_prev = _put(g_prev, rows, torch.where(acc, g1, take(g_prev)), compact)
        elif isinstance(event, SteadyState):
            event_here = acc & ~last & event.reached(k[-1].view(y1.shape), y1)
            event_t = _put(event_t, rows, torch.where(event_here, t_new, take(event_t)), compact)
        # outputs inside (or at the end of) the accepted steps, up to where each stopped
        while True:
            tq = tgrid[j.clamp(max=n_out - 1), rows]
            inside = acc & (j < n_out) & (direction * (stop_t - tq) >= 0)
            if not bool(inside.any()):
                break
            sel = inside.nonzero().squeeze(1)
            at_end = (tq[sel] == t_new[sel]) & ~event_here[sel]
            theta = (tq[sel] - tw[sel]) / signed[sel]
            if k_full.shape[0] < dense.shape[0]:  # only step ends: no dense stages computed
                val = y1[sel]
            else:
                val = dense_per_sample(theta, yw[sel], signed[sel], k_full[:, sel], dense)
                val = torch.where(_rows(at_end, val), y1[sel], val)
            rsel = rows[sel] if compact else sel
            out_idx.append(j[sel] * batch + rsel)
            out_val.append(val)
            j = j + inside.long()
        if keep_dense and bool(acc.any()):
            sel = acc.nonzero().squeeze(1)
            records.append(Record(rows[sel], tw[sel], signed[sel], yw[sel], k_full[:, sel]))
        stat = torch.where(stop_max, int(Status.MAX_STEPS), torch.where(
            stop_under, int(Status.DT_UNDERFLOW), torch.where(
                bad, int(Status.NONFINITE), torch.where(event_here, int(Status.EVENT), 0))))
        ended = finish | event_here | stop_max | stop_under | bad
        attempted = live | bad
        t = _put(t, rows, stop_t, compact)
        y = _put(y, rows, y_new, compact)
        k1 = _put(k1, rows, torch.where(_rows(acc, y1), k[-1].view(y1.shape), kw), compact)
        h = _put(h, rows, torch.where(live, h_next, hw), compact)
        prev_r = _put(prev_r, rows, torch.where(live, prev_next, take(prev_r)), compact)
        next_out = _put(next_out, rows, j, compact)
        status = _put(status, rows, torch.where(ended, stat, take(status)), compact)
        done = _put(done, rows, take(done) | ended, compact)
        steps = _put(steps, rows, take(steps) + attempted.long(), compact)
        accepted = _put(accepted, rows, take(accepted) + acc.long(), compact)
        extra = len(solver.tableau.dense_c) * need_dense.long()
        nfe = _put(nfe, rows, take(nfe) + attempted.long() * (solver.stages - 1) + extra, compact)
    ys = _assemble(y, status, out_idx, out_val, n_out, batch)
    return Raw(ys=ys, status=status, t_stop=t, y_stop=y, event_t=event_t, nfe=nfe,
               accepted=accepted, rejected=steps - accepted, records=records)


def _with_dense_stages(f: VectorField, t: torch.Tensor, h: torch.Tensor, y: torch.Tensor,
                       k: torch.Tensor, solver: RungeKutta, need: torch.Tensor, compact: bool
                       ) -> torch.Tensor:
    """The stages plus those only the dense output needs, for the rows in ``need`` (the other
    rows' extra stages are zero, never read); the whole batch when not ``compact``."""
    if not solver.tableau.dense_c or not bool(need.any()):
        return k
    if not compact:
        return dense_stages_per_sample(f, t, h, y, k, solver)
    sel = need.nonzero().squeeze(1)
    part = dense_stages_per_sample(f, t[sel], h[sel], y[sel], k[:, sel], solver)
    extra = k.new_zeros(part.shape[0] - k.shape[0], *k.shape[1:])
    return torch.cat([k, extra.index_copy(1, sel, part[k.shape[0]:])])


def _put(full: torch.Tensor, rows: torch.Tensor, vals: torch.Tensor, compact: bool) -> torch.Tensor:
    """``full`` with ``vals`` at ``rows`` (out of place, so autograd sees it)."""
    return full.index_copy(0, rows, vals) if compact else vals


def _assemble(y_stop: torch.Tensor, status: torch.Tensor, idx: list[torch.Tensor],
              vals: list[torch.Tensor], n_out: int, batch: int) -> torch.Tensor:
    """``(T, B, ...)`` outputs: those reached, then a stopped sample's last state (its event
    state), NaN for a sample that failed."""
    failed = (status != Status.OK) & (status != Status.EVENT)
    held = torch.where(_rows(failed, y_stop), torch.full_like(y_stop, float("nan")), y_stop)
    base = held.unsqueeze(0).expand(n_out, *y_stop.shape).reshape(n_out * batch,
                                                                  *y_stop.shape[1:])
    ys = base.index_copy(0, torch.cat(idx), torch.cat(vals))
    return ys.view(n_out, *y_stop.shape)
