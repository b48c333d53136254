"""Events: functions of ``(t, y)`` whose sign changes stop a sample, and steady states.

An :class:`Event`'s function is sampled after each accepted step of each sample at
``samples_per_step`` equally spaced points of the step (the last at its end, the others on
the step's dense output, one batched call); in the first sub-interval whose ends changed
sign (in the requested direction) the crossing is found on the dense output by
Anderson-Bjorck regula falsi, to ``tol`` in time (a bracket at most ``tol`` wide). A
non-terminal event records the crossing of every such sub-interval.
The event time and state are then made differentiable by the implicit function theorem:
with ``g(t*, y(t*; p); p) = 0``, ``dt*/dp = -(dg/dp) / (dg/dt + dg/dy . f(t*, y*))``, so
gradients reach the solution's inputs and any parameters ``fn`` holds (a module's
parameters need not sit in the state). A solve may have several events
(:func:`as_events`); each sample stops at the earliest terminal one. Under the continuous
adjoint the same gradient enters as the start of each stopped sample's backward solve
(:mod:`._adjoint_events`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from infdepth.errors import InputError
from infdepth.ode._per_sample_step import dense_per_sample, rms_rows
from infdepth.ode._stepping import VectorField

EventFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``fn(t, y) -> (n,)``: ``t`` the ``(n,)`` times of ``n`` samples, ``y`` their states."""

MAX_ROOT_ITERATIONS = 100
"""Root-finding iterations before the bracket found so far is taken as the event (the bracket
shrinks superlinearly; 100 iterations are reached only for a tolerance below rounding)."""

SAMPLES_PER_STEP = 4
"""Default points per step at which an event function is sampled (the last the step's end)."""


@dataclass(frozen=True)
class Event:
    """An event: where ``fn(t, y)[b]`` changes sign, sample ``b`` stops (``terminal``) or the
    crossing is recorded and the solve goes on.

    Args:
        fn: ``fn(t, y) -> (n,)`` for ``n`` samples with times ``t`` of shape ``(n,)``
            and states ``y`` of shape ``(n, ...)``; rows must not mix (a sample's value
            depends on its own row only). It may hold parameters (an ``nn.Module``):
            the event time and state are differentiable in them (under backprop,
            checkpointing and, for terminal events, ``Adjoint()``).
        direction: ``1`` stops where ``fn`` goes from negative to ``>= 0``, ``-1`` from
            positive to ``<= 0``, ``0`` either.
        tol: the crossing is located to this width in time (absolute, > 0); the event
            state is the dense output there, so it is accurate to the solver's tolerance.
        terminal: stop the sample at its first crossing (``Solution.event_t``,
            ``event_y``); ``False`` records every crossing (``Solution.crossings``).
        samples_per_step: ``n >= 1``: ``fn`` is evaluated after each accepted step at the
            fractions ``1/n, 2/n, ..., 1`` of the step (the interior ones on the dense
            output, all in one batched call of ``n`` times the rows), and a crossing is
            looked for in each sub-interval whose ends changed sign. Guaranteed: every
            crossing of the dense output that is alone in its sub-interval (the next
            crossing, in either direction, more than ``h / n`` away in time) is found, several
            in one step included. Still missed: an even number of crossings inside one
            sub-interval (two roots closer than ``h / n``, a tangency), and of an odd number
            only one is found. ``n = 1`` tests the step's ends only (the cheapest). With
            ``Dopri8`` the interior samples are taken on the cubic Hermite interpolant of
            the step and re-taken on the dense output where they showed a crossing (its
            extra stages cost 3 evaluations of ``f``, spent on those steps only).
    """

    fn: EventFn
    direction: int = 0
    tol: float = 1e-10
    terminal: bool = True
    samples_per_step: int = SAMPLES_PER_STEP

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
        n = self.samples_per_step
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InputError(f"samples_per_step={n!r} is not accepted; expected an integer >= 1 "
                             "(1 samples each step's end only)")

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
        if self.direction > 0:
            return (g0 < 0) & (g1 >= 0)
        if self.direction < 0:
            return (g0 > 0) & (g1 <= 0)
        return ((g0 < 0) & (g1 >= 0)) | ((g0 > 0) & (g1 <= 0))


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


EventSpec = Event | SteadyState | Sequence[Event | SteadyState] | None
"""What ``solve(..., event=...)`` accepts: one event, several (each sample stops at the
earliest terminal one), or none."""


def as_events(event: object) -> tuple[Event | SteadyState, ...]:
    """``event`` (``None``, one :class:`Event` / :class:`SteadyState`, or a list or tuple
    of them) as a tuple; raises :class:`InputError` for anything else."""
    if event is None:
        return ()
    if isinstance(event, (Event, SteadyState)):
        return (event,)
    if isinstance(event, Sequence) and not isinstance(event, (str, bytes)):
        if not event:
            raise InputError("event=[] is not accepted; pass None for no event, or a list of "
                             "Event(fn, ...) / SteadyState(...)")
        for i, ev in enumerate(event):
            if not isinstance(ev, (Event, SteadyState)):
                raise InputError(f"event[{i}]={ev!r} is not accepted; expected Event(fn, ...) "
                                 "or SteadyState(...)")
        return tuple(event)
    raise InputError(f"event={event!r} is not accepted; expected Event(fn, ...), "
                     "SteadyState(...) or a list of them")


def locate(event: Event, t: torch.Tensor, h: torch.Tensor, y: torch.Tensor, hk: torch.Tensor,
           dense: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, glo: torch.Tensor,
           ghi: torch.Tensor, guess: torch.Tensor | None = None) -> torch.Tensor:
    """Fractions ``theta`` ``(k,)`` of ``k`` steps where ``event`` crosses zero (no grad).

    Each step's crossing is bracketed by the fractions ``lo < hi`` (the ends of a
    sub-interval of the step where the samples changed sign), with the event's values there:
    ``glo`` on the side before the crossing (nonzero), ``ghi`` after it (or zero). ``hk``
    ``(R, k, F)`` are the steps' scaled stages (with the dense output's); ``guess`` an
    optional first guess (used where it lies inside the bracket).

    Each iteration evaluates ``fn`` once, batched, at the two points ``guess -+ tol / 2``:
    where they bracket the root, the bracket is at most ``tol`` wide and the search ends;
    otherwise the bracket shrinks to one side of them, and their difference quotient gives
    the next guess by Newton's step (quadratic convergence), or, where that leaves the
    bracket, the Anderson-Bjorck regula falsi step. The result is the secant point of a
    bracket at most ``tol`` wide (in time).
    """
    with torch.no_grad():
        k = t.shape[0]
        dt = t.dtype
        lo, hi, glo, ghi = lo.to(dt), hi.to(dt), glo.to(dt), ghi.to(dt)
        width = event.tol / h.abs()
        half = 0.5 * width
        before = torch.sign(glo)
        y2, hk2 = torch.cat([y, y]), torch.cat([hk, hk], 1)
        side = torch.zeros_like(t)  # -1: the last move was lo's, +1: hi's
        open_ = (hi - lo > width) & (ghi != 0)
        nxt = torch.full_like(t, math.nan) if guess is None else guess.to(dt)
        for iteration in range(MAX_ROOT_ITERATIONS):
            if iteration > 0 and not bool(open_.any()):
                break
            low, high = lo + half, hi - half
            inside = (nxt > low) & (nxt < high)  # False for NaN
            secant = (lo * ghi - hi * glo) / (ghi - glo)
            c = torch.where(inside, nxt, secant.clamp(low, high))
            p = torch.stack([c - half, c + half])  # (2, k): both points of every step
            g = event.value((t + p * h).view(-1), dense_per_sample(p.view(-1), y2, hk2, dense))
            g = (g.detach() if g.requires_grad else g).to(dt).view(2, k)
            after = g * before <= 0
            (a1, a2), (g1, g2), (p1, p2) = after.unbind(), g.unbind(), p.unbind()
            pair = open_ & a2 & ~a1  # the root lies between p1 and p2: done
            if bool((pair | ~open_).all()):  # the usual end: every open guess was within tol/2
                lo, hi = torch.where(pair, p1, lo), torch.where(pair, p2, hi)
                glo, ghi = torch.where(pair, g1, glo), torch.where(pair, g2, ghi)
                break
            move_hi = open_ & a1  # the root lies before p1
            move_lo = open_ & ~a1 & ~a2  # ... after p2
            # Anderson-Bjorck: an end retained twice in a row has its value scaled by
            # 1 - g(new) / g(replaced end) (halved, Illinois, where that is not positive)
            m_lo, m_hi = 1 - g1 / ghi, 1 - g2 / glo
            glo = torch.where(move_hi & (side > 0), glo * torch.where(m_lo > 0, m_lo, 0.5), glo)
            ghi = torch.where(move_lo & (side < 0), ghi * torch.where(m_hi > 0, m_hi, 0.5), ghi)
            lo, glo = (torch.where(move_lo, p2, torch.where(pair, p1, lo)),
                       torch.where(move_lo, g2, torch.where(pair, g1, glo)))
            hi, ghi = (torch.where(move_hi | pair, torch.where(pair, p2, p1), hi),
                       torch.where(move_hi | pair, torch.where(pair, g2, g1), ghi))
            side = torch.where(move_lo, -1.0, torch.where(move_hi, 1.0, side))
            open_ = open_ & ~pair & (hi - lo > width) & (ghi != 0)
            nxt = c - 0.5 * (g1 + g2) * (p2 - p1) / (g2 - g1)  # Newton (NaN/inf: unused)
        denom = ghi - glo
        theta = torch.where(denom != 0, (lo * ghi - hi * glo) / denom, hi)
        theta = torch.where(ghi == 0, hi, theta)
        return torch.clamp(theta, lo, hi).clamp(0.0, 1.0)


GRID = 64
"""Points per sub-interval at which :func:`polynomial_guess` evaluates the polynomial."""


PolynomialFit = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _fit_table(w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For samples at ``u = 0, ..., w - 1``: the matrices giving the coefficients of their
    interpolating polynomial (``u^0..u^(w-1)``) and of its derivative, and its values on
    ``GRID + 1`` points of each unit sub-interval ``[a, a + 1]`` (``(w - 1, w, GRID + 1)``,
    the Lagrange basis there), as read-only float64 arrays (contiguous: a tensor is one copy
    of each, where one from nested lists took 77 us a solve)."""
    u = np.arange(w, dtype=np.float64)
    inv = np.linalg.inv(u[:, None] ** np.arange(w))
    grid = u[:-1, None] + np.arange(GRID + 1) / GRID
    basis = (grid[:, :, None] ** np.arange(w)) @ inv  # (w - 1, GRID + 1, w)
    tables = (inv.T, (inv[1:] * np.arange(1, w)[:, None]).T, basis.transpose(0, 2, 1))
    out = tuple(np.ascontiguousarray(x, dtype=np.float64) for x in tables)
    for x in out:
        x.setflags(write=False)
    return out  # type: ignore[return-value]


POLYNOMIAL_FITS = {w: _fit_table(w) for w in range(2, 6)}
"""The interpolation tables of :func:`polynomial_guess` for its 2-5 samples: constants of
the method (as the Butcher tableaus are), computed once at import from numbers alone."""


def polynomial_fit(w: int, device: torch.device | str = "cpu") -> PolynomialFit:
    """:data:`POLYNOMIAL_FITS` ``[w]`` as float64 tensors on ``device`` (copies: nothing
    shares memory with the tables)."""
    return tuple(torch.tensor(x, dtype=torch.float64, device=device)  # type: ignore[return-value]
                 for x in POLYNOMIAL_FITS[w])


def polynomial_guess(samples: torch.Tensor, i: torch.Tensor, r: torch.Tensor | None, n: int,
                     fit_of: Callable[[int], PolynomialFit] = polynomial_fit,
                     newton: int = 2) -> torch.Tensor:
    """A first guess of the crossing in sub-interval ``i`` of rows ``r``: the first root in it
    of the polynomial through the (up to) five samples around it (``samples`` ``(n + 1, m)``
    at the fractions ``0, 1/n, ..., 1``): its first sign change on a grid of ``GRID`` cells,
    the secant point there, then ``newton`` Newton steps, kept inside the sub-interval (no
    host read). Exact for an event linear in the state with a dense output of degree <= 4
    (Dopri5, Tsit5, Bosh3) at ``n >= 4``. ``r`` None: every row, ``i`` one per row."""
    w = min(5, n + 1)
    rows = samples.T if r is None else samples.T[r]
    start = None  # w = n + 1: the polynomial goes through every sample (it starts at 0)
    local = i
    if w < n + 1:
        start = (i - (w - 2) // 2).clamp_(0, n + 1 - w)
        local = i - start
        rows = rows.gather(1, start.unsqueeze(1) + torch.arange(w, device=i.device))
    g = rows.to(torch.float64)
    fit, slope_fit, basis = (x.to(g.device) for x in fit_of(w))
    values = torch.bmm(g.unsqueeze(1), basis[local]).squeeze(1)  # (k, GRID + 1)
    after = values * values[:, :1].sign() <= 0
    q = after.to(torch.uint8).argmax(1).clamp_(min=1)  # the first grid point past the root
    end0, end1 = values.gather(1, torch.stack([q - 1, q], 1)).unbind(1)
    a = local.to(g.dtype)
    u = a + (q.to(g.dtype) - end1 / (end1 - end0)) / GRID
    coef, slope_coef = g @ fit, g @ slope_fit  # (k, w), (k, w - 1)
    b, one = a + 1, torch.ones_like(u)
    for _ in range(newton):  # powers 1, u, .., u^(w-1): torch.linalg.vander's products
        powers = torch.stack([one] + [u] * (w - 1), 1).cumprod(1)
        step = (powers * coef).sum(1) / (powers[:, :-1] * slope_coef).sum(1)
        u = torch.clamp(u - step, a, b)  # NaN stays NaN: unused
    return (u if start is None else start.to(g.dtype) + u) / n


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
