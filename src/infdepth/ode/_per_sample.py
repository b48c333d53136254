"""The integration loop with a step size per sample: every sample has its own time, step
size, accept/reject decision, error norm, step count, event and status.

Each pass of the loop attempts one step for every sample still running. Samples that
finished (reached their last output time, hit their event, or failed) cost nothing more
with ``compact=True``: ``f`` is called on the running rows only (it must then treat rows
independently, as any batched network does). With ``compact=False`` ``f`` always sees the
whole batch (finished rows are frozen): use it when ``f`` holds per-sample data indexed by
row. The working set's state is kept from pass to pass and written back to the batch's
tensors only when a sample finished (then its rows are selected again: one ``nonzero``).

Host synchronisation: **one read per pass**, a stacked tensor of counts (rows that failed,
rows that reached their end, rows whose step may hold an event, the most output times a
step passed: a ``searchsorted`` of each row's grid, so the outputs are stored without
asking again); a pass in which an event fires reads a few more (the root finding's), and
DOP853 one more (whether any step needs its dense stages). The controller, the failures'
bookkeeping and the outputs are tensor operations on ``(n,)`` vectors without a branch on
the host. The outputs inside steps are stored up to 16 steps at a time
(:class:`~infdepth.ode._outputs.SampleOutputs`), the last output time at the end (each
sample's stopping state), and a step's stage states are written into buffers kept from
pass to pass: about 61 aten operations per pass for Dopri5 besides the field's, pinned
by ``tests/ode/test_per_sample_syncs.py`` (with those per bounce of a falling ball).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

import torch
import torch.utils.checkpoint

from infdepth.ode._controller import PIController
from infdepth.ode._event_check import EventCheck
from infdepth.ode._events import EventSpec, as_events
from infdepth.ode._outputs import SampleOutputs
from infdepth.ode._outputs import assemble_outputs as _assemble
from infdepth.ode._outputs import outputs_passed as _outputs_passed
from infdepth.ode._per_sample_step import (
    PassRead,
    PerSampleSteps,
    RowNorm,
    StageBuffer,
    StagePlan,
    _rows,
    rms_rows,
    step_per_sample,
    with_dense_stages,
)
from infdepth.ode._solvers import RungeKutta
from infdepth.ode._stepping import Stats, VectorField, first_eval

COMPACT_AT = 8
"""With ``compact=True`` the working set is compacted once ``1 / COMPACT_AT`` of its rows
finished (until then they take empty steps): a compaction costs a ``nonzero`` and a gather
and scatter of every per-row tensor, an empty row a share of ``f``."""


class Status(IntEnum):
    """How each sample's solve ended.

    The failures come last (``MAX_STEPS`` and after), so ``status > Status.EVENT`` marks a
    failed sample in one comparison; a new code goes before ``MAX_STEPS`` if it is not a
    failure (``tests/ode/test_solution.py`` pins the order).
    """

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
    """Accepted steps of one pass, for the dense interpolant: rows, starts, sizes, states and
    stages scaled by the step."""

    rows: torch.Tensor
    t: torch.Tensor
    h: torch.Tensor
    y: torch.Tensor
    hk: torch.Tensor


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
    dense: torch.Tensor
    crossings: tuple[torch.Tensor, torch.Tensor]
    records: list[Record] = field(default_factory=list)
    event_index: torch.Tensor | None = None  # (B,) which event stopped each sample, -1: none
    crossing_event: torch.Tensor | None = None  # (K,) the event of each crossing
    failed: int | None = None  # samples that failed, counted on the host (None: not counted)


def integrate_per_sample(
    f: VectorField,
    y0: torch.Tensor,
    tgrid: torch.Tensor,
    direction: float,
    solver: RungeKutta,
    ctrl: PIController,
    *,
    max_steps: int,
    event: EventSpec,
    compact: bool,
    keep_dense: bool,
    checkpoint: bool = False,
    norm: RowNorm = rms_rows,
    on_accept: Callable[[Record], None] | None = None,
) -> Raw:
    """Solve each sample of ``y0`` ``(B, ...)`` over its own output times ``tgrid[:, b]``.

    With ``checkpoint`` (and autograd) each pass's step keeps only its inputs and is
    retaken during backward (``torch.utils.checkpoint``), so the activations inside ``f``
    are not stored. ``norm`` is each row's error norm; ``on_accept`` is called with every
    pass's accepted steps (as kept for the dense output) when any was accepted.
    """
    n_out, batch = tgrid.shape
    dev, long = y0.device, torch.long
    plan, dense = _stage_plan(solver, y0, tgrid.dtype)
    control = PerSampleSteps(ctrl, solver.order, norm, direction)
    grad = torch.is_grad_enabled()
    # without autograd the loop updates its tensors in place, but only those it made: the
    # batch's t, y and k1 are replaced by new tensors in every pass before the first
    # compaction writes into them, so y0 and tgrid are never written
    t, t_end = tgrid[0], tgrid[-1]
    k1 = first_eval(f, t, y0, Stats())
    h = PerSampleSteps.initial(ctrl, f, t, y0, k1, solver.order, direction, norm)
    prev_r = torch.ones_like(h) if control.pi else h  # h: a placeholder, never read
    y = y0
    done = torch.zeros(batch, dtype=torch.bool, device=dev)
    status, steps, accepted, extra_nfe, written = torch.zeros(
        5, batch, dtype=long, device=dev).unbind()
    # outputs are addressed by slot j * B + b (sample b's output j); slots T * B + b, past the
    # last output time (+-inf), are discarded. Output 0 is y0 and the last one is filled by
    # _assemble (with the state where the sample stopped: its end, or its event); `written[b]`
    # counts the others sample b passed, so its next slot is base[b] + written[b] * B (base
    # = b + B). The steps that passed output times are kept and their outputs stored a few
    # steps at a time (SampleOutputs); a slot never reached (or the last) is filled by
    # _assemble.
    inner = n_out > 2  # with two output times there is none to store in the loop
    times = base = grid = outputs = None
    if inner:
        times = torch.nn.functional.pad(tgrid, (0, 0, 0, 1), value=direction * math.inf
                                        ).view(-1)
        base = torch.arange(batch, 2 * batch, device=dev)
        # each row's output times between the first and the last, increasing (negated
        # backwards): how many a step passed is one searchsorted, so the pass knows how
        # many outputs to store before it reads anything
        grid = (tgrid[1:-1] if direction > 0 else -tgrid[1:-1]).detach().t().contiguous()
        outputs = SampleOutputs(torch.cat([y0, y0.new_zeros(n_out * batch, *y0.shape[1:])]),
                                times, batch, n_out, dense)
    events = as_events(event)
    check = (EventCheck(events, f, t, y0, dense, compact)
             if events else None)
    records: list[Record] = []
    n_dense = len(solver.tableau.dense_c)
    buffer = StageBuffer()
    read = PassRead()
    want_acc = keep_dense or on_accept is not None
    passes, n_running, n_set, rows, grid_w, end_w = 0, batch, batch, None, grid, t_end
    n_failed = 0
    # the working set: its rows (all of the batch while rows is None) and their state, kept
    # from pass to pass; its finished rows take empty steps until it is compacted
    tw, hw, yw, kw, out_w, steps_w, acc_w, prev_w = (t, h, y, k1, written, steps, accepted,
                                                     prev_r)
    base_w, done_w = base, done  # done_w: the working set's finished rows

    def write_back() -> None:  # the working set's rows go back to the batch's tensors
        nonlocal t, h, y, k1, written, steps, accepted, prev_r, done
        assert rows is not None
        done = done.index_copy_(0, rows, done_w)
        t, h, y, k1, written, steps, accepted = (_scatter(full, part, rows, grad) for full, part in (
            (t, tw), (h, hw), (y, yw), (k1, kw), (written, out_w), (steps, steps_w),
            (accepted, acc_w)))
        if control.pi:
            prev_r = _scatter(prev_r, prev_w, rows, grad)

    while n_running:
        if compact and (n_set - n_running) * COMPACT_AT >= n_set > n_running:
            if outputs is not None:
                outputs.flush()  # its steps are rows of this working set
            if rows is not None:
                write_back()
            rows = (~done).nonzero().squeeze(1)
            n_set = n_running
            end_w, tw, hw, yw, kw, out_w, steps_w, acc_w = (
                x.index_select(0, rows) for x in (
                    t_end, t, h, y, k1, written, steps, accepted))
            if inner:
                assert grid is not None
                grid_w, base_w = grid.index_select(0, rows), rows + batch
            done_w = torch.zeros_like(rows, dtype=torch.bool)  # the rows still running
            if control.pi:
                prev_w = prev_r.index_select(0, rows)
        dead = done_w if n_set > n_running else None  # finished rows in the working set

        def take(x: torch.Tensor, rows: torch.Tensor | None = rows) -> torch.Tensor:
            return x if rows is None else x.index_select(0, rows)

        def put(full: torch.Tensor, vals: torch.Tensor, rows: torch.Tensor | None = rows
                ) -> torch.Tensor:
            return vals if rows is None else _scatter(full, vals, rows, grad)

        signed, last, under, ahead_t = control.next_step(tw, end_w, hw, direction)
        passes += 1
        # a running row attempted a step in every pass so far: passes - 1 steps
        if passes > max_steps:  # every running row attempted max_steps steps
            under = torch.ones_like(under)
        if dead is not None and n_failed:  # masked: finished rows take empty steps (those
            signed = signed.masked_fill(dead, 0.0)  # at their end or event do: left = 0)
        if checkpoint and grad:  # keep the step's inputs, retake it in backward
            y1, hk, err, k_last = torch.utils.checkpoint.checkpoint(
                step_per_sample, f, tw, signed, yw, kw, plan, use_reentrant=False)
        else:
            y1, hk, err, k_last = step_per_sample(f, tw, signed, yw, kw, plan, buffer)
        r = control.ratio(err, yw, y1)
        ok, h_next, prev_next = control.judge(r, signed, prev_w)
        # failed rows (underflow, max_steps, a non-finite r) stop where they are; `ok`
        # (r <= 1) is false for a non-finite r, and booleans order False < True:
        read.size(tw.shape[0], 2 + inner + (check is not None) + want_acc, check is not None,
                  dev)
        trouble = torch.le(r < math.inf, under, out=read.trouble)  # under, or r not finite
        acc = ok > under  # accepted and not failed
        if dead is not None:
            live = ~dead
            trouble, acc = torch.bitwise_and(trouble, live, out=read.trouble), acc & live
        t_new = torch.where(last, end_w, ahead_t)  # ahead_t = t + signed where not last
        stop_t = torch.where(acc, t_new, tw)
        acc_rows = _rows(acc, y1)
        y_new = torch.where(acc_rows, y1, yw)
        ended = torch.bitwise_and(acc, last, out=read.ended)
        cand = event_here = None
        if check is not None:  # the event functions sampled inside the steps
            cand = check.detect(rows, acc, last, tw, signed, yw, y1, t_new, k_last, hk,
                                out=read.cand)
        need = None
        if n_dense:  # DOP853's extra stages, only for steps whose inside is used
            need = torch.zeros_like(acc)  # no output inside a step (but the last: an end)
            if inner:
                assert times is not None and base_w is not None
                next_t = times.take(torch.add(base_w, out_w, alpha=batch))  # next output
                need = acc & (direction * (t_new - next_t) > 0)
            if cand is not None:
                need = need | cand
            if keep_dense:
                need = acc
            hk = with_dense_stages(f, tw, signed, yw, hk, solver, need, compact)
        # the pass's one host read: failed rows, rows that may fire an event, rows that
        # reached their end, the most outputs one step passed, accepted steps
        passed, ahead = out_w, None
        # failed rows, rows at their end, rows whose step may hold an event
        torch.sum(read.masks, 1, out=read.head)
        k = read.head.shape[0]
        if inner:
            assert grid_w is not None
            passed = _outputs_passed(grid_w, stop_t, direction)
            ahead = passed - out_w
            torch.amax(ahead, out=read.values[k])
            k += 1
        if want_acc:
            torch.sum(acc, 0, out=read.values[k])
            k += 1
        got = read.counts.tolist()
        n_trouble, n_ended = got[0], got[1]
        n_cand = got[2] if cand is not None else 0
        n_ahead = got[2 + (cand is not None)] if inner else 0
        empty = dead
        halted = None
        if n_trouble:  # such a row stops; its state stays at its last value
            halted = under if dead is None else under & live  # its step not attempted
            empty = trouble if dead is None else dead | trouble
            code = int(Status.MAX_STEPS) if passes > max_steps else torch.where(
                under, int(Status.DT_UNDERFLOW), int(Status.NONFINITE))
            status = put(status, torch.where(trouble, code, take(status)))
        if check is not None and cand is not None and n_cand:
            stop_t, y_new, event_here, extra = check.resolve(rows, acc, cand, tw, signed, yw, hk,
                                                             t_new, stop_t, y_new, n_cand)
            if extra is not None:  # evaluations of f the event's gradient took
                extra_nfe = put(extra_nfe, take(extra_nfe) + extra)
            status = put(status, torch.where(event_here, int(Status.EVENT), take(status)))
            ended = ended | event_here
            if inner:
                assert grid_w is not None
                passed = _outputs_passed(grid_w, stop_t, direction)
                ahead = passed - out_w
                n_ended, n_ahead = torch.stack([ended.sum(), ahead.amax()]).tolist()
            else:
                n_ended = int(ended.sum())
            if n_ended + n_trouble < n_running:  # a next pass: the stopped rows' steps empty
                end_w = torch.where(event_here, stop_t, end_w)
        if n_ahead:  # the step's outputs, stored with those of later steps
            assert ahead is not None and outputs is not None and base_w is not None
            size = signed  # a row that took no step stores nothing: any size but a finite one
            if grad and empty is not None:  # ... for autograd
                size = torch.where(empty, 1.0, signed)
            outputs.add(base_w, out_w, ahead, n_ahead, tw, size, yw,
                        hk if grad or hk.shape[0] > solver.stages else hk.clone(), y_new,
                        t_new if event_here is None else t_new.masked_fill(event_here, math.nan))
        if want_acc and got[-1]:
            sel = acc.nonzero().squeeze(1)
            rec = Record(sel if rows is None else rows[sel], tw[sel], signed[sel], yw[sel],
                         hk[:, sel])
            if keep_dense:
                records.append(rec)
            if on_accept is not None:
                on_accept(rec)
        tw, yw, kw, out_w = stop_t, y_new, torch.where(acc_rows, k_last, kw), passed
        hw, prev_w = h_next, prev_next  # a finished row's h is never used (its steps are empty)
        acc_w = acc_w.add_(acc)
        if rows is None:
            t, h, y, k1, written, steps, accepted, prev_r = (tw, hw, yw, kw, out_w, steps_w,
                                                             acc_w, prev_w)
        if n_ended or n_trouble:  # a finished row attempted a step in every pass but
            finished = ended | trouble  # this one when it halted; its count stays
            steps_w = steps_w.masked_fill_(finished, passes)
            if halted is not None:
                steps_w = steps_w.masked_fill_(halted, passes - 1)
            if rows is None:
                steps = steps_w
            done_w = done_w | finished
            if rows is None:
                done = done_w
            n_running -= n_ended + n_trouble
            n_failed += n_trouble
        if need is not None:
            extra_nfe = _count(extra_nfe, rows, n_dense * need.long())
    if outputs is not None:
        outputs.flush()
    if rows is not None:
        write_back()
    failed = status > Status.EVENT if n_failed else None  # MAX_STEPS, DT_UNDERFLOW, NONFINITE
    ys = _assemble(None if outputs is None else outputs.ys, y0, y, failed, written, n_out, batch)
    nfe = torch.add(extra_nfe, steps, alpha=solver.stages - 1).add_(
        2 if ctrl.dt0 is None else 1)
    if check is None:
        check = EventCheck((), f, tgrid[0], y0, dense, compact)
    rows_c, times_c, index_c = check.crossings(direction)
    return Raw(ys=ys, status=status, t_stop=t, y_stop=y, event_t=check.event_t, nfe=nfe,
               accepted=accepted, rejected=steps - accepted, dense=dense, records=records,
               crossings=(rows_c, times_c), event_index=check.event_index,
               crossing_event=index_c, failed=n_failed)


def _stage_plan(solver: RungeKutta, y0: torch.Tensor, t_dtype: torch.dtype
                ) -> tuple[StagePlan, torch.Tensor]:
    """The solver's stage plan and dense-output matrix in ``y0``'s dtype and device (built
    per solve from the tableau's numbers: a few small tensors, nothing kept between solves)."""
    tab = solver.tableau  # RungeKutta.tensors without the nodes c (the plan makes its own)
    weights = torch.tensor(tab.weight_rows, dtype=y0.dtype, device=y0.device)
    dense = torch.tensor(tab.dense_rows, dtype=y0.dtype, device=y0.device)
    return StagePlan.of(solver, weights, t_dtype), dense


def _scatter(full: torch.Tensor, vals: torch.Tensor, rows: torch.Tensor, grad: bool
             ) -> torch.Tensor:
    """``full`` with ``vals`` at ``rows``: in place unless autograd records either."""
    if grad and (full.requires_grad or vals.requires_grad):
        return full.index_copy(0, rows, vals)
    return full.index_copy_(0, rows, vals)


def _count(counter: torch.Tensor, rows: torch.Tensor | None, add: torch.Tensor) -> torch.Tensor:
    """``counter`` (never differentiated) plus ``add`` at ``rows``, in place."""
    return counter.add_(add) if rows is None else counter.index_add_(0, rows, add.long())
