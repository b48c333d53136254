"""``ODEBlock``: a layer of continuous depth, ``h(0) -> h(t1)``."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import nn

from infdepth.errors import InputError
from infdepth.ode._adjoint import Adjoint, Checkpointed, GradientMethod
from infdepth.ode._controller import DEFAULT_ATOL, DEFAULT_RTOL
from infdepth.ode._odeint import solve
from infdepth.ode._regularisers import Regulariser, augment, check_regularisers, split
from infdepth.ode._solvers import Dopri5, RungeKutta


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
        self._regularisation: torch.Tensor | None = None  # of the last training forward
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
        if self.regularisers and self.training:  # integrated alongside h
            field, z0 = augment(self._field, h0, self.regularisers)
            zs = solve(field, z0, t, solver=self.solver, rtol=self.rtol, atol=self.atol,
                       step_size=self.step_size, controller=None, adjoint=self.adjoint,
                       max_steps=self.max_steps, f_backward=field.over(self._field_backward))
            h1, self._regularisation = split(zs[-1], h0, self.regularisers)
            return h1
        ys = solve(self._field, h0, t, solver=self.solver, rtol=self.rtol, atol=self.atol,
                   step_size=self.step_size, controller=None, adjoint=self.adjoint,
                   max_steps=self.max_steps, f_backward=self._field_backward)
        return ys[-1]

    def penalty(self) -> torch.Tensor:
        """``t1_l2 * t1**2`` plus the regularisers' integrals of the last training forward
        pass (weighted, averaged over its samples): the penalty to add to the training loss."""
        depth = self.t1_l2 * self.t1.square()
        if self._regularisation is None:
            return depth
        return depth + self._regularisation.to(depth.dtype)

    def extra_repr(self) -> str:
        return (f"t1={float(self.t1.detach()):.4g}, learn_t1={isinstance(self.t1, nn.Parameter)}, "
                f"solver={type(self.solver).__name__}()")
