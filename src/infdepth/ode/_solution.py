"""``solve``: the per-sample solve, returning a :class:`Solution` with statistics and a status.

``odeint(..., per_sample_steps=True)`` is ``solve(...).ys`` (with ``throw=True``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from infdepth.errors import InputError
from infdepth.ode._adjoint import (
    Adjoint,
    Backprop,
    Checkpointed,
    GradientMethod,
    check_params_visible,
    find_params,
)
from infdepth.ode._adjoint_evaluate import AdjointEvaluation
from infdepth.ode._adjoint_events import check_events_for_adjoint, event_params
from infdepth.ode._controller import DEFAULT_ATOL, DEFAULT_RTOL, ConstantStepSize, PIController
from infdepth.ode._errors import NonFiniteStateError, SolverError
from infdepth.ode._events import EventSpec, as_events
from infdepth.ode._per_sample import Raw, Record, Status, integrate_per_sample
from infdepth.ode._per_sample_adjoint import adjoint_per_sample, backward_controller
from infdepth.ode._per_sample_step import dense_per_sample
from infdepth.ode._solvers import Dopri5, RungeKutta
from infdepth.ode._stepping import VectorField


class _Calls:
    """``f``, counting the calls made after the forward solve returned (in backward), and
    naming ``compact`` when ``f`` fails on a subset of the batch's rows."""

    def __init__(self, f: VectorField, batch: int) -> None:
        self.f = f
        self.batch = batch
        self.forward_done = False
        self.backward = 0

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.forward_done:
            self.backward += 1
        if y.shape[0] == self.batch:
            return self.f(t, y)
        try:
            out = self.f(t, y)
        except RuntimeError as exc:
            raise InputError(_SUBSET.format(n=y.shape[0], batch=self.batch, why=exc)) from exc
        if not isinstance(out, torch.Tensor) or out.shape != y.shape:
            shown = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InputError(_SUBSET.format(n=y.shape[0], batch=self.batch,
                                            why=f"it returned {shown} for y of {tuple(y.shape)}"))
        return out


_SUBSET = ("f failed on {n} of the batch's {batch} rows ({why}): compact=True hands f only "
           "the samples still running, so f must treat rows independently; pass compact=False "
           "if f holds per-sample data indexed by row (or carry that data in the state)")


@dataclass(frozen=True)
class SampleStats:
    """Counters per sample, ``(batch,)`` long tensors.

    ``nfe`` counts the evaluations of ``f`` each sample needed (a batched call counts once
    per sample in it; with ``compact=False`` finished samples ride along uncounted).
    """

    nfe: torch.Tensor
    n_accepted: torch.Tensor
    n_rejected: torch.Tensor


@dataclass(frozen=True)
class Solution:
    """The result of :func:`solve`.

    Attributes:
        ts: the output times, ``(T, batch)``.
        ys: ``(T, *y0.shape)``; ``ys[i, b]`` is sample ``b`` at ``ts[i, b]``. After a
            sample's terminal event its outputs hold the event state; after a failure
            (``throw=False``) its outputs not reached are NaN.
        status: ``(batch,)`` long tensor of :class:`Status` values.
        event_t: ``(batch,)`` event times (NaN where none), differentiable.
        event_y: ``(batch, ...)`` the state where each sample stopped (its event state,
            its last state otherwise), differentiable.
        event_index: ``(batch,)`` long tensor: which event stopped each sample (its
            position in the ``event`` list, ``0`` for a single event), ``-1`` where none.
        stats: per-sample :class:`SampleStats`.
        crossings: ``(sample, time)``, two ``(K,)`` tensors: the crossings of the
            non-terminal events, grouped by sample and in the order of integration within
            one (empty otherwise); the times are differentiable.
        crossing_event: ``(K,)`` long tensor: the event (position in the ``event`` list)
            of each crossing.
    """

    ts: torch.Tensor
    ys: torch.Tensor
    status: torch.Tensor
    event_t: torch.Tensor
    event_y: torch.Tensor
    event_index: torch.Tensor
    stats: SampleStats
    crossings: tuple[torch.Tensor, torch.Tensor]
    crossing_event: torch.Tensor
    _calls: _Calls
    _records: tuple[Record, ...]
    _dense: torch.Tensor
    _direction: float
    _adjoint: AdjointEvaluation | None = None

    @property
    def backward_nfe(self) -> int:
        """Calls of ``f`` made by backward passes so far (those of ``Checkpointed``, which
        retakes every step, and of ``Adjoint``'s backward solves; zero for ``Backprop``).
        Each call is one batched evaluation."""
        return self._calls.backward

    def evaluate(self, t: torch.Tensor | float) -> torch.Tensor:
        """The dense interpolant: every sample at time ``t`` (a number or ``(batch,)`` times).

        Times outside a sample's accepted steps (before its start, after it stopped) give NaN.
        Raises :class:`InputError` when the solve ran with ``dense=False``.

        Differentiable with every gradient method: under ``Backprop()`` and ``Checkpointed()``
        through the interpolant; under ``Adjoint()`` by the continuous adjoint (``y0``,
        ``f``'s parameters, ``t`` and the start times), at the cost of one backward solve
        from ``t`` to the start per call whose result is differentiated.
        """
        if not self._records:
            raise InputError("Solution.evaluate needs solve(..., dense=True) (the default)")
        batch = self.status.shape[0]
        tq = torch.as_tensor(t, dtype=self.ts.dtype, device=self.ts.device)
        tq = tq.expand(batch) if tq.ndim == 0 else tq
        if tq.shape != (batch,):
            raise InputError(f"t of shape {tuple(tq.shape)} is not accepted; expected a number "
                             f"or ({batch},) times")
        y_like = self.event_y
        out = torch.full_like(y_like, float("nan"))
        d = self._direction
        for rec in self._records:  # later steps overwrite a shared boundary: same value
            q = tq[rec.rows]
            inside = (d * (q - rec.t) >= 0) & (d * (rec.t + rec.h - q) >= 0)
            if not bool(inside.any()):
                continue
            sel = inside.nonzero().squeeze(1)
            theta = (q[sel] - rec.t[sel]) / rec.h[sel]
            val = dense_per_sample(theta, rec.y[sel], rec.hk[:, sel], self._dense)
            out = out.index_copy(0, rec.rows[sel], val)
        return out if self._adjoint is None else self._adjoint.attach(tq, out)


def _problem_checks(solver: object, controller: object, rtol: float, atol: float,
                    adjoint: object, event: object, max_steps: object, y0: object) -> None:
    if not isinstance(solver, RungeKutta):
        raise InputError(f"solver={solver!r} is not accepted; pass an instance such as Dopri5()")
    implicit = type(solver).tensors is not RungeKutta.tensors  # a Newton workspace
    if not solver.adaptive or not solver.fsal or implicit:
        raise InputError(
            f"per_sample_steps=True is not accepted with solver={type(solver).__name__}(): it "
            "needs an explicit adaptive solver (Bosh3, Dopri5, Tsit5, Dopri8)")
    if isinstance(controller, ConstantStepSize):
        raise InputError("per_sample_steps=True is not accepted with controller="
                         "ConstantStepSize(): fixed steps are the same for every sample; "
                         "use a PIController")
    if controller is not None and not isinstance(controller, PIController):
        raise InputError(f"controller={controller!r} is not accepted; expected a PIController")
    for name, v in (("rtol", rtol), ("atol", atol)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (
                math.isfinite(v) and v >= 0):
            raise InputError(f"{name}={v!r} is not accepted; expected a finite number >= 0")
    if adjoint is not None and not isinstance(adjoint, (Backprop, Checkpointed, Adjoint)):
        raise InputError(f"adjoint={adjoint!r} is not accepted; expected Backprop(), "
                         "Checkpointed() or Adjoint()")
    as_events(event)  # raises for anything but events
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise InputError(f"max_steps={max_steps!r} is not accepted; expected an integer >= 1")
    if not isinstance(y0, torch.Tensor) or not y0.is_floating_point() or y0.ndim < 1:
        raise InputError("y0 must be a floating-point tensor of shape (batch, ...)")


def _times(t: torch.Tensor, y0: torch.Tensor, pending: InputError | None = None
           ) -> tuple[torch.Tensor, float]:
    """``(T, batch)`` output times in float64 and the direction of integration, after checking
    that ``y0`` is finite (that error first, then ``pending``, then those of ``t``): one host
    read for all."""
    batch = y0.shape[0]
    bad_t = None
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        bad_t = "t must be a floating-point tensor of times, shape (T,) or (T, batch)"
    elif t.ndim not in (1, 2) or t.shape[0] < 2 or (t.ndim == 2 and t.shape[1] != batch):
        bad_t = (f"t has shape {tuple(t.shape)}; expected (T,) or (T, batch={batch}) "
                 "with T >= 2")
    tt = None
    if bad_t is None:
        tt = t.to(device=y0.device, dtype=torch.float64)
        tt = tt.unsqueeze(1).expand(-1, batch).contiguous() if tt.ndim == 1 else tt.contiguous()
    with torch.no_grad():  # x * 0 sums to 0 exactly when every x is finite (NaN otherwise)
        flags = [y0.mul(0).sum()]
        if tt is not None:
            flags.append(t.to(device=y0.device, dtype=torch.float64).mul(0).sum())
            if batch:  # the steps between output times, at least one
                flags.extend(torch.aminmax(tt[1:] - tt[:-1]))
        got = torch.stack(flags).tolist()
    if got[0] != 0:
        raise InputError("y0 contains NaN or infinite values; expected a finite initial state")
    if pending is not None:
        raise pending
    if bad_t is not None:
        raise InputError(bad_t)
    assert tt is not None
    if got[1] != 0:
        raise InputError("t contains NaN or infinite times; expected finite times")
    if len(got) == 2 or got[2] > 0:  # no sample: increasing, as every step of none is
        return tt, 1.0
    if got[3] < 0:
        return tt, -1.0
    raise InputError("t must be strictly increasing or strictly decreasing along its first "
                     "axis, every sample in the same direction")


def solve(
    f: VectorField,
    y0: torch.Tensor,
    t: torch.Tensor,
    *,
    solver: RungeKutta | None = None,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    controller: PIController | None = None,
    event: EventSpec = None,
    adjoint: GradientMethod | None = None,
    max_steps: int = 10_000,
    compact: bool = True,
    dense: bool = True,
    throw: bool = True,
) -> Solution:
    """Solve ``dy/dt = f(t, y)`` with a step size per sample; optionally stop at events.

    Every sample ``y0[b]`` has its own time, step size, error norm, accept/reject decision
    and step count, so its solution does not depend on the batch it is solved in.

    Args:
        f: ``f(t, y)`` with ``t`` of shape ``(n,)``, one time per sample of ``y`` ``(n, ...)``:
            ``n`` is the number of samples still running when ``compact`` (then ``f`` must
            treat rows independently), the whole batch otherwise.
        y0: ``(batch, ...)`` initial states.
        t: output times ``(T,)`` for all samples or ``(T, batch)``, one grid per sample
            (samples may start at different times), strictly monotone in one direction.
        solver: an explicit adaptive solver (default ``Dopri5()``).
        rtol, atol: tolerances when no ``controller`` is given.
        controller: a :class:`PIController`, applied to each sample separately.
        event: an :class:`Event` (a sample stops where its function changes sign) or a
            :class:`SteadyState`, or a list of them (each sample stops at the earliest
            terminal one: ``Solution.event_index`` says which; the crossings of
            non-terminal ones are recorded with ``Solution.crossing_event``); ``None`` runs
            every sample to its last output time.
        adjoint: ``Backprop()`` (the default), ``Checkpointed()`` (each step keeps only its
            inputs and is retaken during backward: the same gradients, without the
            activations inside ``f``) or ``Adjoint()``: the continuous adjoint, solved
            backwards per sample (own steps, own error norm, the tolerances of the
            ``Adjoint``), memory independent of the step count; gradients with respect to
            ``y0``, the parameters of ``f`` (those of its module, or ``Adjoint(params=...)``)
            and the output times (those of the continuous problem); with terminal events
            also the event times and states, and the times of non-terminal crossings
            (implicit function theorem; the parameters of event functions that are
            modules); :meth:`Solution.evaluate` too (one backward solve per call).
        max_steps: attempted steps per sample before it stops with ``Status.MAX_STEPS``.
        compact: evaluate ``f`` on the running samples only (finished ones cost nothing).
        dense: keep the steps for :meth:`Solution.evaluate` (memory grows with the steps).
        throw: raise :class:`SolverError` / :class:`NonFiniteStateError` when a sample
            fails; ``False`` returns the status per sample instead.

    Raises:
        InputError: bad arguments (named), ``f`` or the event function returning a wrong shape.
    """
    solver = Dopri5() if solver is None else solver
    _problem_checks(solver, controller, rtol, atol, adjoint, event, max_steps, y0)
    for name, flag in (("compact", compact), ("dense", dense), ("throw", throw)):
        if not isinstance(flag, bool):
            raise InputError(f"{name}={flag!r} is not accepted; expected True or False")
    ctrl, pending = controller, None
    if ctrl is None:
        try:
            ctrl = PIController(rtol=rtol, atol=atol)
        except InputError as exc:  # raised after the check of y0, as it always was
            pending = exc
    tgrid, direction = _times(t, y0, pending)  # checks y0 too
    assert ctrl is not None
    calls = _Calls(f, y0.shape[0])
    evaluation = None
    if isinstance(adjoint, Adjoint):
        check_params_visible(f, adjoint, y0, tgrid[0])
        events = as_events(event)
        check_events_for_adjoint(events, adjoint.params is not None, tgrid[0], y0)
        params = find_params(f, adjoint)
        raw = adjoint_per_sample(calls, y0, tgrid, direction, solver, ctrl, method=adjoint,
                                 params=event_params(events, params),
                                 max_steps=max_steps, compact=compact, keep_dense=dense,
                                 events=events)
        evaluation = AdjointEvaluation(calls, solver, backward_controller(ctrl, adjoint),
                                       direction, max_steps, compact, y0, tgrid[0], params)
    else:
        raw = integrate_per_sample(calls, y0, tgrid, direction, solver, ctrl,
                                   max_steps=max_steps, event=event, compact=compact,
                                   keep_dense=dense, checkpoint=isinstance(adjoint, Checkpointed))
    calls.forward_done = True
    if throw:
        _raise_failures(raw)
    return Solution(
        ts=tgrid, ys=raw.ys, status=raw.status, event_t=raw.event_t, event_y=raw.y_stop,
        event_index=_or_none(raw.event_index, raw.status), crossing_event=_or_none(
            raw.crossing_event, raw.crossings[0]),
        stats=SampleStats(raw.nfe, raw.accepted, raw.rejected), crossings=raw.crossings,
        _calls=calls, _records=tuple(raw.records), _dense=raw.dense, _direction=direction,
        _adjoint=evaluation)


def _or_none(index: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """``index``, or ``-1`` everywhere (a solve without events)."""
    return index if index is not None else torch.full_like(like, -1, dtype=torch.long)


def _raise_failures(raw: Raw) -> None:
    if raw.failed == 0:  # counted by the loop: no read
        return
    failed = raw.status > Status.EVENT  # MAX_STEPS, DT_UNDERFLOW, NONFINITE
    if not bool(failed.any()):
        return
    b = int(failed.nonzero()[0, 0])
    code = Status(int(raw.status[b]))
    where = f"sample {b} at t={float(raw.t_stop[b]):.6g}"
    if code == Status.NONFINITE:
        raise NonFiniteStateError(f"non-finite state or error estimate for {where}; pass "
                                  "throw=False to keep the other samples")
    reason = ("max_steps reached" if code == Status.MAX_STEPS else
              "step size below the minimum (dtmin, or too small to change t)")
    raise SolverError(f"{reason} for {where} ({int(failed.sum())} samples failed); loosen "
                      "rtol/atol, raise max_steps, or pass throw=False for a status per sample")
