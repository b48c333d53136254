"""``ODEBlock``: a layer of continuous depth, ``h(0) -> h(t1)``."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from infdepth.errors import InputError
from infdepth.ode._adjoint import Adjoint, Checkpointed, GradientMethod
from infdepth.ode._controller import DEFAULT_ATOL, DEFAULT_RTOL
from infdepth.ode._events import Event, SteadyState, as_events
from infdepth.ode._odeint import solve
from infdepth.ode._per_sample import Status
from infdepth.ode._regularisers import Regulariser, augment, check_regularisers, split
from infdepth.ode._solution import SampleStats
from infdepth.ode._solution import solve as solve_per_sample
from infdepth.ode._solvers import Dopri5, RungeKutta


@dataclass(frozen=True)
class Depths:
    """Where each sample of an ``ODEBlock(..., until=...)`` forward stopped: a record of
    statistics (detached, like the NFE counters), not part of the graph.

    Attributes:
        t: ``(batch,)`` the time each sample stopped at: its depth.
        converged: ``(batch,)`` bool, whether its ``until`` condition held before ``t1``
            (``False``: it ran to ``t1``).
        stats: per-sample evaluations and accepted / rejected steps.
        event: ``(batch,)`` long: which ``until`` condition stopped each sample (its position
            in the ``until`` list, ``0`` for a single one), ``-1`` where it ran to ``t1``.
    """

    t: torch.Tensor
    converged: torch.Tensor
    stats: SampleStats
    event: torch.Tensor


class ODEBlock(nn.Module):
    """Map ``h(0)`` to ``h(t1)`` where ``dh/dt = func(t, h)``: a residual stack of infinite depth.

    ``t1`` plays the role of depth. With ``learn_t1=True`` it is a trainable parameter
    (learned continuous depth, the continuous twin of the g-infinity layer's ``w``),
    regularised by :meth:`penalty` ``= t1_l2 * t1**2`` which the training loss adds.

    Function evaluations are counted (in eager mode; not inside ``torch.compile``):
    ``nfe_forward`` during the forward solve,
    ``nfe_backward`` during the backward solve of the adjoint or checkpointed
    methods (backprop through the solver evaluates ``func`` in backward zero times).
    The solve is handed two entry points to ``func``, one per counter, so which pass
    an evaluation belongs to is explicit (no global "in backward" state); a solve nested
    inside ``func`` counts in its own block.

    ``t1`` is created in the dtype of ``func``'s floating-point parameters (the default
    dtype if it has none), so a float64 field integrates to the float64 ``t1``; like any
    buffer or parameter it follows ``.to(dtype)``, ``.double()`` and ``.float()`` of the block.

    Args:
        func: the vector field, an ``nn.Module`` called as ``func(t, h)``.
        t1: integration end time (depth), > 0.
        learn_t1: make ``t1`` a parameter.
        t1_l2: weight of the ``t1**2`` penalty.
        t1_min: ``t1`` is clamped to at least this during the forward pass.
        solver, rtol, atol, step_size, adjoint, max_steps: as in :func:`odeint`, with the
            same default tolerances ``rtol=1e-6, atol=1e-8``; training that prefers speed
            to accuracy passes looser ones (e.g. ``rtol=atol=1e-3``).
        regularisers: ``KineticEnergy(w)`` and/or ``JacobianFrobenius(w)``: in training mode
            their integrals along the trajectory are solved alongside ``h`` and
            :meth:`penalty` adds them (weighted, averaged over the batch); in eval mode the
            block solves for ``h`` alone.
        control_integrals: whether the regularisers' integral channels join the error norm
            of the training solve. ``False`` (the default): the error norm (and the initial
            step) measures ``h`` alone and the integrals are integrated on ``h``'s steps, so
            the training solve takes the steps of the learned dynamics, and a regulariser
            that makes them easier to solve makes training cheaper too, not only inference.
            The integrals are quadratures that never feed back into ``h``: their error does
            not spoil the trajectory. Under control they start at 0, where ``rtol`` gives them
            no room, so their large integrands shrink the first step and their error estimate
            (the Hutchinson channel's above all) slows the step growth: on the digits ODE-Net
            the training solve took 5 steps on average where ``h`` needed 3. Left out, their
            accuracy is that of a quadrature on ``h``'s steps (kinetic energy: as accurate as
            ``h``; the Hutchinson integral of that ODE-Net at ``rtol=atol=1e-3``: within
            0.6 %, against a 2.5 % spread of its batch mean over draws of ``eps``, the
            estimator's own noise). ``True``: every component steers the
            steps (the behaviour before this option), the integrals then meet ``rtol`` and
            ``atol`` themselves. The adjoint's backward solve follows the same choice for its
            state and adjoint parts.
        until: depth until converged. ``SteadyState(atol, rtol)`` stops each sample at the
            end of its first accepted step where ``rms(func(t, h)) < atol + rtol * rms(h)``;
            a terminal ``Event(fn, ...)`` stops it where ``fn`` changes sign, located by root
            finding (time and state differentiable); a list of them stops each sample at the
            earliest (``last_depths.event`` says which). ``t1`` is then the largest depth. The
            block solves with a step size per sample (:func:`infdepth.ode.solve`), so a
            sample's output does not depend on its batch, and returns each sample's state
            where it stopped; :attr:`last_depths` records the stopping times. ``func`` is
            then called with ``t`` of shape ``(n,)`` on the ``n`` samples still running and
            must treat rows independently (no BatchNorm). It needs an explicit adaptive
            solver, ``step_size=None`` and no regularisers; every gradient method works
            (``Adjoint()``: each sample's backward solve starts at its own stop). The
            parameters of event functions that are modules join the block's.
    """

    def __init__(
        self,
        func: nn.Module,
        t1: float = 1.0,
        *,
        learn_t1: bool = False,
        t1_l2: float = 0.0,
        t1_min: float = 1e-3,
        solver: RungeKutta | None = None,
        rtol: float = DEFAULT_RTOL,
        atol: float = DEFAULT_ATOL,
        step_size: float | None = None,
        adjoint: GradientMethod | None = None,
        max_steps: int = 10_000,
        regularisers: Sequence[Regulariser] = (),
        control_integrals: bool = False,
        until: SteadyState | Event | Sequence[SteadyState | Event] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(func, nn.Module):
            raise InputError(
                f"func={func!r} is not accepted; ODEBlock needs an nn.Module called as func(t, h) "
                "(its parameters are trained with the block): wrap the function in a module, "
                "or call odeint with adjoint=Adjoint(params=...)"
            )
        if not (isinstance(t1, (int, float)) and t1 > 0 and math.isfinite(t1)):
            raise InputError(f"t1={t1!r} is not accepted; expected a finite number > 0")
        if not (t1_l2 >= 0 and math.isfinite(t1_l2)):
            raise InputError(f"t1_l2={t1_l2!r} is not accepted; expected a finite number >= 0")
        if not 0 < t1_min <= t1:
            raise InputError(f"t1_min={t1_min!r} is not accepted; expected 0 < t1_min <= t1")
        self.func = func
        dtype = next((q.dtype for q in func.parameters() if q.is_floating_point()),
                     torch.get_default_dtype())
        end = torch.tensor(float(t1), dtype=dtype)
        if learn_t1:
            self.t1 = nn.Parameter(end)
        else:
            self.register_buffer("t1", end)
        self.t1_l2 = float(t1_l2)
        self.t1_min = float(t1_min)
        self.solver = Dopri5() if solver is None else solver
        self.rtol, self.atol, self.step_size = rtol, atol, step_size
        if isinstance(adjoint, (Adjoint, Checkpointed)) and adjoint.params is None:
            # the parameters of func only: t1 receives its gradient through the times
            adjoint = dataclasses.replace(adjoint, params=tuple(func.parameters()))
        self.adjoint = adjoint
        self.max_steps = max_steps
        self.regularisers = check_regularisers(regularisers)
        if not isinstance(control_integrals, bool):
            raise InputError(f"control_integrals={control_integrals!r} is not accepted; expected "
                             "True or False")
        self.control_integrals = control_integrals
        self.until = _check_until(until, self.solver, step_size, self.regularisers)
        if isinstance(until, Event) and isinstance(until.fn, nn.Module):
            self.until_fn = until.fn  # its parameters train and move with the block
        elif self.until is not None and not isinstance(self.until, (Event, SteadyState)):
            fns: list[nn.Module] = []
            for ev in self.until:
                if isinstance(ev, Event) and isinstance(ev.fn, nn.Module) and all(
                        ev.fn is not m for m in fns):
                    fns.append(ev.fn)
            if fns:
                self.until_fns = nn.ModuleList(fns)
        self._regularisation: torch.Tensor | None = None  # of the last training forward
        self.last_depths: Depths | None = None
        """Where each sample stopped in the last forward with ``until`` (``None`` before)."""
        self.nfe_forward = 0
        self.nfe_backward = 0

    def _field(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        # inside torch.compile the counters stay still: a Python int attribute that changes
        # would be a guard, and every step would recompile
        if not torch.compiler.is_compiling():
            self.nfe_forward += 1
        out: torch.Tensor = self.func(t, h)
        return out

    def _field_backward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling():
            self.nfe_backward += 1
        out: torch.Tensor = self.func(t, h)
        return out

    def reset_nfe(self) -> None:
        """Set both evaluation counters to zero."""
        self.nfe_forward = 0
        self.nfe_backward = 0

    def forward(self, h0: torch.Tensor) -> torch.Tensor:
        t1 = self.t1.clamp(min=self.t1_min).to(h0.device)
        t = torch.stack([torch.zeros_like(t1), t1])
        self._regularisation = None
        if self.until is not None:
            return self._until_converged(h0, t)
        if self.regularisers and self.training:  # integrated alongside h
            field, z0 = augment(self._field, h0, self.regularisers)
            zs = solve(field, z0, t, solver=self.solver, rtol=self.rtol, atol=self.atol,
                       step_size=self.step_size, controller=None, adjoint=self.adjoint,
                       max_steps=self.max_steps, f_backward=field.over(self._field_backward),
                       norm=None if self.control_integrals else field.state_norm)
            h1, self._regularisation = split(zs[-1], h0, self.regularisers)
            return h1
        ys = solve(self._field, h0, t, solver=self.solver, rtol=self.rtol, atol=self.atol,
                   step_size=self.step_size, controller=None, adjoint=self.adjoint,
                   max_steps=self.max_steps, f_backward=self._field_backward)
        return ys[-1]

    def _until_converged(self, h0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # one entry point whose counter changes once the forward solve has returned: the
        # evaluations Checkpointed retakes in backward count as backward ones
        entry = [self._field]

        def field(s: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
            return entry[0](s, h)

        sol = solve_per_sample(field, h0, t, solver=self.solver, rtol=self.rtol, atol=self.atol,
                               event=self.until, adjoint=self.adjoint, max_steps=self.max_steps,
                               dense=False)
        entry[0] = self._field_backward
        if not torch.compiler.is_compiling():
            stopped = sol.status == Status.EVENT
            depth = torch.where(stopped, sol.event_t.detach(), sol.ts[-1].detach())
            self.last_depths = Depths(depth, stopped, sol.stats,
                                      torch.where(stopped, sol.event_index, -1))
        # after its stop a sample's outputs hold the state it stopped in
        return sol.ys[-1]

    def penalty(self) -> torch.Tensor:
        """``t1_l2 * t1**2`` plus the regularisers' integrals of the last training forward
        pass (weighted, averaged over its samples): the penalty to add to the training loss."""
        depth = self.t1_l2 * self.t1.square()
        if self._regularisation is None:
            return depth
        return depth + self._regularisation.to(depth.dtype)

    def extra_repr(self) -> str:
        until = "" if self.until is None else f", until={self.until!r}"
        return (f"t1={float(self.t1.detach()):.4g}, learn_t1={isinstance(self.t1, nn.Parameter)}, "
                f"solver={type(self.solver).__name__}(){until}")


def _check_until(until: object, solver: RungeKutta, step_size: float | None,
                 regularisers: Sequence[Regulariser]
                 ) -> SteadyState | Event | tuple[SteadyState | Event, ...] | None:
    if until is None:
        return None
    if not isinstance(until, (SteadyState, Event, list, tuple)):
        raise InputError(f"until={until!r} is not accepted; expected SteadyState(atol, rtol), "
                         "a terminal Event(fn, ...) or a list of them")
    try:
        events = as_events(until)
    except InputError as exc:
        raise InputError(str(exc).replace("event", "until", 1)) from exc
    for j, ev in enumerate(events):
        if isinstance(ev, Event) and not ev.terminal:
            where = "" if isinstance(until, Event) else f"[{j}]"
            raise InputError(f"until{where}=Event(..., terminal=False) is not accepted: it "
                             "would not stop a sample; pass a terminal Event")
    if (not isinstance(solver, RungeKutta) or type(solver).tensors is not RungeKutta.tensors
            or not solver.adaptive or not solver.fsal):  # implicit solvers have their own
        raise InputError(f"solver={solver!r} is not accepted with until=: each sample stops on "
                         "its own steps, which needs an explicit adaptive solver (Bosh3, "
                         "Dopri5, Tsit5, Dopri8)")
    if step_size is not None:
        raise InputError(f"step_size={step_size!r} is not accepted with until=: the steps are "
                         "adaptive, one sequence per sample")
    if regularisers:
        raise InputError("regularisers are not accepted with until=: their integrals would "
                         "join the state whose slope decides convergence")
    return until if isinstance(until, (SteadyState, Event)) else events
