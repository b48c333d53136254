"""Events: a function of ``(t, y)`` whose sign change stops a sample, and steady states.

An :class:`Event` is checked after each accepted step of each sample; where its sign
changed (in the requested direction), the crossing is found on the step's dense output by
the Illinois method (regula falsi that halves a stale end's value), to ``tol`` in time:
until the bracket is narrower than ``tol`` or two successive guesses differ by less than
``tol / 10``.
The event time and state are then made differentiable by the implicit function theorem:
with ``g(t*, y(t*; p); p) = 0``, ``dt*/dp = -(dg/dp) / (dg/dt + dg/dy . f(t*, y*))``, so
gradients reach the solution's inputs and any parameters ``fn`` holds (a module's
parameters need not sit in the state).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from infdepth.errors import InputError
from infdepth.ode._per_sample_step import dense_per_sample, rms_rows
from infdepth.ode._stepping import VectorField

EventFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``fn(t, y) -> (n,)``: ``t`` the ``(n,)`` times of ``n`` samples, ``y`` their states."""

MAX_ROOT_ITERATIONS = 100
"""Illinois iterations before the bracket found so far is taken as the event (the bracket
shrinks superlinearly; 100 iterations are reached only for a tolerance below rounding)."""


@dataclass(frozen=True)
class Event:
    """An event: where ``fn(t, y)[b]`` changes sign, sample ``b`` stops (``terminal``) or the
    crossing is recorded and the solve goes on.

    Args:
        fn: ``fn(t, y) -> (n,)`` for ``n`` samples with times ``t`` of shape ``(n,)``
            and states ``y`` of shape ``(n, ...)``; rows must not mix (a sample's value
            depends on its own row only). It may hold parameters (an ``nn.Module``):
            the event time and state are differentiable in them.
        direction: ``1`` stops where ``fn`` goes from negative to ``>= 0``, ``-1`` from
            positive to ``<= 0``, ``0`` either.
        tol: the crossing is located to this width in time (absolute, > 0); the event
            state is the dense output there, so it is accurate to the solver's tolerance.
        terminal: stop the sample at its first crossing (``Solution.event_t``,
            ``event_y``); ``False`` records every crossing (``Solution.crossings``; two
            crossings inside one step, with no sign change between its ends, are missed).
    """

    fn: EventFn
    direction: int = 0
    tol: float = 1e-10
    terminal: bool = True

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise InputError(f"event fn={self.fn!r} is not accepted; expected a callable "
                             "fn(t, y) -> (batch,)")
        if self.direction not in (-1, 0, 1):
            raise InputError(f"direction={self.direction!r} is not accepted; expected -1, 0 or 1")
        if isinstance(self.tol, bool) or not isinstance(self.tol, (int, float)) or not (
                math.isfinite(self.tol) and self.tol > 0):
            raise InputError(f"tol={self.tol!r} is not accepted; expected a finite number > 0")
        if not isinstance(self.terminal, bool):
            raise InputError(f"terminal={self.terminal!r} is not accepted; expected True or False")

    def value(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``fn(t, y)``, checked to be ``(n,)`` and finite-typed."""
        g = self.fn(t, y)
        if not isinstance(g, torch.Tensor) or g.shape != (y.shape[0],):
            shown = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
            raise InputError(f"event fn returned {shown}; expected a tensor of shape "
                             f"(batch,) = ({y.shape[0]},), one value per sample")
        return g

    def crossed(self, g0: torch.Tensor, g1: torch.Tensor) -> torch.Tensor:
        """Which samples' event function crossed zero from ``g0`` to ``g1``."""
        up = (g0 < 0) & (g1 >= 0)
        down = (g0 > 0) & (g1 <= 0)
        return up if self.direction > 0 else down if self.direction < 0 else up | down


@dataclass(frozen=True)
class SteadyState:
    """Stop a sample once ``rms(f(t, y)) < atol + rtol * rms(y)`` after an accepted step.

    The stopping time is the end of that step (no root finding, no gradient in time):
    "depth until converged". Args: ``atol``, ``rtol`` >= 0, not both 0.
    """

    atol: float = 1e-6
    rtol: float = 0.0

    def __post_init__(self) -> None:
        for name, v in (("atol", self.atol), ("rtol", self.rtol)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (
                    math.isfinite(v) and v >= 0):
                raise InputError(f"{name}={v!r} is not accepted; expected a finite number >= 0")
        if self.atol == 0 and self.rtol == 0:
            raise InputError("atol=0 and rtol=0 are not accepted together; set one > 0")

    def reached(self, slope: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Which samples are steady, from ``slope = f(t1, y1)`` and ``y1``."""
        with torch.no_grad():
            return rms_rows(slope) < self.atol + self.rtol * rms_rows(y)


def locate(event: Event, t: torch.Tensor, h: torch.Tensor, y: torch.Tensor, hk: torch.Tensor,
           dense: torch.Tensor, g0: torch.Tensor, g1: torch.Tensor) -> torch.Tensor:
    """Fractions ``theta`` ``(m,)`` of the steps where ``event`` crosses zero (no grad).

    ``hk`` are the steps' scaled stages; ``g0, g1`` the event's values at their two ends,
    of opposite sign (or zero at the end).
    """
    with torch.no_grad():
        lo, hi = torch.zeros_like(t), torch.ones_like(t)
        glo, ghi = g0.to(t.dtype), g1.to(t.dtype)
        side = torch.zeros_like(t)  # -1: last move was lo, +1: hi
        width = event.tol / h.abs()
        theta = torch.full_like(t, float("nan"))
        open_ = ghi != 0
        for _ in range(MAX_ROOT_ITERATIONS):
            open_ = open_ & (hi - lo > width)
            if not bool(open_.any()):
                break
            denom = ghi - glo
            guess = torch.where(denom != 0, (lo * ghi - hi * glo) / denom, 0.5 * (lo + hi))
            guess = torch.where((guess > lo) & (guess < hi), guess, 0.5 * (lo + hi))
            yq = dense_per_sample(guess, y, hk, dense)
            g = event.value(t + guess * h, yq).detach().to(t.dtype)
            move_lo = open_ & (torch.sign(g) == torch.sign(glo)) & (g != 0)
            move_hi = open_ & ~move_lo
            # Anderson-Bjorck: a retained end's value is scaled by 1 - g / g(replaced end)
            # (or halved, Illinois, where that is not positive)
            m_lo = 1 - g / glo
            m_hi = 1 - g / ghi
            ghi = torch.where(move_lo & (side < 0), ghi * torch.where(m_lo > 0, m_lo, 0.5), ghi)
            glo = torch.where(move_hi & (side > 0), glo * torch.where(m_hi > 0, m_hi, 0.5), glo)
            lo, glo = torch.where(move_lo, guess, lo), torch.where(move_lo, g, glo)
            hi, ghi = torch.where(move_hi, guess, hi), torch.where(move_hi, g, ghi)
            side = torch.where(move_lo, -1.0, torch.where(move_hi, 1.0, side))
            # settled: the guesses moved by less than a tenth of the tolerance (superlinear
            # convergence: the root is then within it), or the guess is a root
            settled = ((guess - theta).abs() < 0.1 * width) | (g == 0)
            theta = torch.where(open_, guess, theta)
            open_ = open_ & ~settled
        theta = torch.where(torch.isnan(theta) | (ghi == 0), hi, theta)
        return theta.clamp(0.0, 1.0)


def differentiable_event(event: Event, f: VectorField, t_star: torch.Tensor, y_star: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(t*, y*)`` carrying the implicit-function-theorem gradients.

    ``t_star`` and ``y_star`` (the dense output at ``t_star``, with the graph of the solve)
    are where ``fn`` vanishes. The returned time has the value of ``t_star`` and the
    gradient ``-(dg/dp) / (dg/dt + dg/dy . f)``; the state adds ``f * dt*``. ``f`` is
    evaluated (once) only under autograd.
    """
    if not torch.is_grad_enabled():
        return t_star, y_star
    slope = f(t_star, y_star.detach()).detach()
    with torch.enable_grad():
        tt = t_star.detach().clone().requires_grad_(True)
        yy = y_star.detach().clone().requires_grad_(True)
        gt, gy = torch.autograd.grad(event.value(tt, yy).sum(), (tt, yy), allow_unused=True)
    denom = (gy * slope).reshape(slope.shape[0], -1).sum(1) if gy is not None else 0.0
    denom = denom + (gt.to(slope.dtype) if gt is not None else 0.0)
    g = event.value(t_star, y_star)
    if not g.requires_grad:
        return t_star, y_star
    denom = denom.detach()
    denom = torch.where(denom == 0, torch.ones_like(denom), denom)  # tangent: no gradient
    dt = -(g - g.detach()) / denom
    t_out = t_star + dt.to(t_star.dtype)
    y_out = y_star + slope * dt.reshape(-1, *([1] * (y_star.ndim - 1)))
    return t_out, y_out
