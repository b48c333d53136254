"""Step-size control, all of it: initial step, error ratio, accept/reject, next step, last step.

:class:`PIController` (adaptive solvers) and :class:`ConstantStepSize` (fixed steps) are the
user-facing configuration; :meth:`PIController.start` returns the :class:`AdaptiveSteps` that
one solve asks, step after step, where to go next and whether the step just taken stands.
The integration loop (:mod:`infdepth.ode._integrate`) only takes the steps it is told to.

Default tolerances: ``rtol = 1e-6``, ``atol = 1e-8`` for :func:`~infdepth.ode.odeint`,
:class:`PIController` and :class:`~infdepth.ode.ODEBlock` alike. 1e-6 is the tightest
relative tolerance that still means something for a float32 state (machine epsilon 1.2e-7:
torchdiffeq's and torchode's 1e-7 is one rounding of the state, so the controller would
chase rounding noise); scipy's 1e-3 gives errors that are visible in gradients and in
comparisons between gradient methods. Training runs that want speed over accuracy pass a
looser tolerance explicitly (the ODE-Net experiment uses 1e-3).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from infdepth.errors import InputError, check_float
from infdepth.ode._errors import NonFiniteStateError, SolverError

DEFAULT_RTOL = 1e-6
"""Default relative tolerance of ``odeint``, ``PIController`` and ``ODEBlock``."""
DEFAULT_ATOL = 1e-8
"""Default absolute tolerance of ``odeint``, ``PIController`` and ``ODEBlock``."""

SLACK = 1e-4
"""A last step is taken up to ``(1 + SLACK)`` times the step size (fixed, or proposed by
the controller) rather than followed by a step shorter than ``SLACK`` of it: the step
count is then constant under small changes of a span that ends on a step, so time
gradients are derivatives there (that finite differences reproduce), and no step is
wasted on rounding."""

Norm = Callable[[torch.Tensor], torch.Tensor]
"""Maps a scaled error (error / tolerance) to its mean square; accept when <= 1."""
Evaluate = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``f(t, y)``, counted by the caller."""


def rms2(x: torch.Tensor) -> torch.Tensor:
    """Mean square of all entries: the default error norm (squared RMS)."""
    return x.square().mean()


@dataclass(frozen=True)
class PIController:
    """Proportional-integral step-size controller for embedded Runge-Kutta pairs.

    A step is accepted when the root-mean-square of ``error / (atol + rtol * max(|y0|, |y1|))``
    is at most 1. The next step is ``h * safety * r_n**(-(icoeff + pcoeff) / k) *
    r_{n-1}**(pcoeff / k)`` with ``k`` the solver's order and ``r`` the error ratios of this
    and the last accepted step, clipped to ``[1, factor_max]`` after an accepted step (an
    accepted step never shrinks the next one, as in torchdiffeq) and to
    ``[factor_min, 1]`` after a rejection. ``pcoeff=0, icoeff=1`` (the default) is the
    classical integral controller; ``pcoeff=0.4, icoeff=0.3`` is a common PI choice.

    Args:
        rtol, atol: relative and absolute tolerances, >= 0 and not both 0; by default
            ``DEFAULT_RTOL = 1e-6`` and ``DEFAULT_ATOL = 1e-8``, shared with ``odeint`` and
            ``ODEBlock`` (the tightest pair that is still meaningful in float32).
        pcoeff, icoeff: proportional and integral coefficients.
        safety: factor < 1 applied to the optimal step.
        factor_min, factor_max: bounds on the change of step size.
        dt0: first step size; ``None`` picks one from two evaluations of ``f``
            (Hairer, Norsett & Wanner, Solving ODEs I, II.4).
        dtmin: a step size below this (in magnitude) raises an error naming ``t`` and ``h``.
        dtmax: steps never exceed this magnitude.
        shrink_after_accept: clip the factor after an accepted step to
            ``[factor_min, factor_max]`` (as torchode and diffrax do) instead of
            ``[1, factor_max]``.
    """

    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL
    pcoeff: float = 0.0
    icoeff: float = 1.0
    safety: float = 0.9
    factor_min: float = 0.2
    factor_max: float = 10.0
    dt0: float | None = None
    dtmin: float = 0.0
    dtmax: float = math.inf
    shrink_after_accept: bool = False

    def __post_init__(self) -> None:
        check_float("rtol", self.rtol, low=0.0)
        check_float("atol", self.atol, low=0.0)
        if self.rtol == 0 and self.atol == 0:
            raise InputError("rtol=0 and atol=0 are not accepted together; set at least one > 0")
        check_float("pcoeff", self.pcoeff, low=0.0)
        if not self.icoeff > 0:
            raise InputError(f"icoeff={self.icoeff!r} is not accepted; expected a number > 0")
        if not 0 < self.safety <= 1:
            raise InputError(f"safety={self.safety!r} is not accepted; expected 0 < safety <= 1")
        if not 0 < self.factor_min < 1:
            raise InputError(f"factor_min={self.factor_min!r} is not accepted; expected (0, 1)")
        if not self.factor_max > 1:
            raise InputError(f"factor_max={self.factor_max!r} is not accepted; expected > 1")
        if self.dt0 is not None and not (self.dt0 > 0 and math.isfinite(self.dt0)):
            raise InputError(f"dt0={self.dt0!r} is not accepted; expected None or a number > 0")
        check_float("dtmin", self.dtmin, low=0.0)
        if not self.dtmax > self.dtmin:
            raise InputError(f"dtmax={self.dtmax!r} is not accepted; expected dtmax > dtmin")

    def initial_step(self, f: Evaluate, t0: torch.Tensor, y0: torch.Tensor, k1: torch.Tensor,
                     order: int, norm: Norm, direction: float) -> float:
        """Step-size magnitude from ``k1 = f(t0, y0)`` and one more evaluation of ``f``.

        Hairer, Norsett & Wanner, Solving ODEs I, II.4; ``dt0`` when it is set.
        """
        if self.dt0 is not None:
            return self.dt0
        with torch.no_grad():
            scale = y0.abs().mul(self.rtol).add_(self.atol)
            d0 = norm(y0 / scale).sqrt()
            d1 = norm(k1 / scale).sqrt()
            small = (d0 < 1e-5) | (d1 < 1e-5)
            h0 = torch.where(small, torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
            f1 = f(t0 + direction * h0.to(t0.dtype), y0 + (direction * h0) * k1)
            d2 = norm((f1 - k1) / scale).sqrt() / h0
            dmax = torch.maximum(d1, d2)
            h1 = torch.where(
                dmax <= 1e-15,
                torch.clamp(h0 * 1e-3, min=1e-6),
                (0.01 / dmax) ** (1.0 / order),
            )
            return float(torch.minimum(100 * h0, h1).to(t0.dtype))

    def start(self, f: Evaluate, t0: torch.Tensor, y0: torch.Tensor, k1: torch.Tensor,
              order: int, norm: Norm | None, direction: float, *,
              predictive: bool = False) -> AdaptiveSteps:
        """The controller's state for one solve from ``(t0, y0)`` with ``k1 = f(t0, y0)``
        (``predictive``: see :class:`AdaptiveSteps`)."""
        h = self.initial_step(f, t0, y0, k1, order, norm or rms2, direction)
        return AdaptiveSteps(self, order, y0, h, norm, predictive=predictive)


class AdaptiveSteps:
    """The state of a :class:`PIController` during one solve (host floats only).

    ``h`` is the magnitude of the next step to attempt. Per attempt the loop asks
    :meth:`next_step` for the signed step, computes the error estimate, and hands it to
    :meth:`error_ratio` and then :meth:`judge`, which accepts or rejects and sets ``h``.

    ``predictive`` (the stiff solvers ask for it, with the integral controller only):
    Gustafsson's predictive controller after an accepted step that follows another, as in
    Hairer & Wanner's RADAU5 and scipy's Radau: the factor is at most
    ``safety (h / h_prev) (r_prev / r^2)^(1/order)``, and may shrink the step (to
    ``factor_min``), which cuts the rejections where the error grows from step to step; and
    the step accepted right after a rejection (or a failed Newton iteration) does not grow
    the next one (RADAU5's rule).
    """

    def __init__(self, ctrl: PIController, order: int, y0: torch.Tensor, h: float,
                 norm: Norm | None, *, predictive: bool = False) -> None:
        self.ctrl = ctrl
        self.h = min(h, ctrl.dtmax)
        self._norm = norm
        self._exponent = -(ctrl.icoeff + ctrl.pcoeff) / order
        self._order = order
        self._p_exponent = ctrl.pcoeff / order
        self._prev_r = 1.0
        self._predictive = predictive and ctrl.pcoeff == 0
        self._last_accepted: tuple[float, float] | None = None  # (|h|, r) of the last accept
        self._after_rejection = False  # a step was rejected since the last accept
        self._inv_sqrt_n = 1.0 / math.sqrt(max(y0.numel(), 1))
        self._atol = torch.tensor(ctrl.atol, dtype=y0.dtype, device=y0.device)

    def next_step(self, t: float, t_end: float, direction: float) -> tuple[float, bool]:
        """Signed size of the next attempt from ``t``, and whether it ends on ``t_end``.

        Within ``(1 + SLACK)`` of ``h`` of ``t_end`` the step is clipped (or stretched) to end
        exactly there. Raises :class:`SolverError` when ``h`` fell below ``dtmin`` or no longer
        changes ``t``.
        """
        h = self.h
        if h < self.ctrl.dtmin or t + direction * h == t:
            raise SolverError(
                f"step size {h:.3g} at t={t:.6g} is below the minimum "
                f"(dtmin={self.ctrl.dtmin:g}, or too small to change t); the problem may be "
                "stiff, f discontinuous, or the tolerances too tight"
            )
        if direction * (t_end - t) <= h * (1 + SLACK):
            return t_end - t, True
        return direction * h, False

    def error_ratio(self, err: torch.Tensor, y_abs: torch.Tensor, y1_abs: torch.Tensor) -> float:
        """RMS of ``err / (atol + rtol * max(|y0|, |y1|))`` (or the custom norm's root)."""
        with torch.no_grad():
            scale = torch.add(self._atol, torch.maximum(y_abs, y1_abs), alpha=self.ctrl.rtol)
            if self._norm is None:
                return float(torch.linalg.vector_norm(err / scale)) * self._inv_sqrt_n
            return math.sqrt(float(self._norm(err / scale)))

    def judge(self, r: float, h: float, t: float) -> bool:
        """Accept (``r <= 1``) or reject the step of signed size ``h`` from ``t``; set ``h``.

        Raises :class:`NonFiniteStateError` for a NaN or infinite ``r``.
        """
        ctrl = self.ctrl
        if not math.isfinite(r):
            raise NonFiniteStateError(
                f"non-finite state or error estimate at t={t:.6g} with step size {abs(h):.3g}"
            )
        accepted = r <= 1.0
        if r == 0.0:
            factor = ctrl.factor_max
        else:
            factor = ctrl.safety * r**self._exponent * self._prev_r**self._p_exponent
        if accepted:
            low = ctrl.factor_min if ctrl.shrink_after_accept else 1.0
            if self._predictive:
                last, self._last_accepted = self._last_accepted, (abs(h), max(r, 1e-2))
                if last is not None and r > 0:
                    factor = min(factor, ctrl.safety * abs(h) / last[0]
                                 * (last[1] / (r * r)) ** (1 / self._order))
                    low = ctrl.factor_min
            factor = min(max(factor, low), ctrl.factor_max)
            if self._predictive and self._after_rejection:  # no growth right after a rejection
                factor = min(factor, 1.0)
            self._after_rejection = False
            self._prev_r = max(r, 1e-10)
        else:
            factor = min(max(factor, ctrl.factor_min), 1.0)
            self._after_rejection = True
        self.h = min(abs(h) * factor, ctrl.dtmax)
        return accepted


    def shrink_after_failure(self, h: float) -> None:
        """The step of signed size ``h`` could not be computed (an implicit stage's Newton
        iteration failed): retry with half of it."""
        self.h = min(abs(h) * NEWTON_FAILURE_FACTOR, self.ctrl.dtmax)
        self._after_rejection = True


NEWTON_FAILURE_FACTOR = 0.5
"""After an implicit step whose Newton iteration failed, the next attempt is this fraction of
it (Hairer & Wanner, Solving ODEs II, IV.8)."""


@dataclass(frozen=True)
class ConstantStepSize:
    """Fixed steps of size ``dt`` from the first time; ``None`` steps from output to output.

    With ``dt`` given, outputs between steps come from the solver's dense output; the
    last step is shortened to end exactly on the last output time (or lengthened by at
    most ``1e-4 dt`` rather than followed by a step shorter than that).
    """

    dt: float | None = None

    def __post_init__(self) -> None:
        if self.dt is not None and not (self.dt > 0 and math.isfinite(self.dt)):
            raise InputError(f"step_size={self.dt!r} is not accepted; expected None or a number > 0")

    def step_ends(self, first: float, last: float) -> list[float] | None:
        """Ends of the steps from ``first`` to ``last`` (ascending, ``last`` included).

        ``None`` when ``dt`` is ``None``: the steps then end on the output times.
        """
        if self.dt is None:
            return None
        n = max(1, math.ceil((last - first) / self.dt - SLACK))
        return [first + self.dt * i for i in range(1, n)] + [last]
