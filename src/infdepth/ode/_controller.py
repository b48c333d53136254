"""Step-size control: a PI controller for adaptive solvers, a constant step otherwise."""

from __future__ import annotations

import math
from dataclasses import dataclass

from infdepth.errors import InputError


def _check_nonneg(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not value >= 0 or math.isinf(value):
        raise InputError(f"{name}={value!r} is not accepted; expected a finite number >= 0")


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
        rtol, atol: relative and absolute tolerances, >= 0 and not both 0.
        pcoeff, icoeff: proportional and integral coefficients.
        safety: factor < 1 applied to the optimal step.
        factor_min, factor_max: bounds on the change of step size.
        dt0: first step size; ``None`` picks one from two evaluations of ``f``
            (Hairer, Norsett & Wanner, Solving ODEs I, II.4).
        dtmin: a step size below this (in magnitude) raises an error naming ``t`` and ``h``.
        dtmax: steps never exceed this magnitude.
    """

    rtol: float = 1e-6
    atol: float = 1e-8
    pcoeff: float = 0.0
    icoeff: float = 1.0
    safety: float = 0.9
    factor_min: float = 0.2
    factor_max: float = 10.0
    dt0: float | None = None
    dtmin: float = 0.0
    dtmax: float = math.inf

    def __post_init__(self) -> None:
        _check_nonneg("rtol", self.rtol)
        _check_nonneg("atol", self.atol)
        if self.rtol == 0 and self.atol == 0:
            raise InputError("rtol=0 and atol=0 are not accepted together; set at least one > 0")
        _check_nonneg("pcoeff", self.pcoeff)
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
        _check_nonneg("dtmin", self.dtmin)
        if not self.dtmax > self.dtmin:
            raise InputError(f"dtmax={self.dtmax!r} is not accepted; expected dtmax > dtmin")


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
