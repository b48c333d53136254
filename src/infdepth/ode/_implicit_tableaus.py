"""ESDIRK tableaus: singly diagonally implicit Runge-Kutta methods with an explicit first stage.

Stage ``i > 1`` solves ``Y_i = y0 + h sum_{j<i} a_ij k_j + h gamma k_i`` with
``k_i = f(t0 + c_i h, Y_i)``; the explicit part ``a`` is stored exactly as for an explicit
tableau (row ``i - 1`` holds the ``i`` weights of the earlier stages) and the diagonal is the
one number ``gamma``, so every Newton iteration of every stage uses the same matrix
``I - h gamma J``. All methods here are stiffly accurate (the last row of ``a`` plus ``gamma``
is ``b``, ``c[-1] = 1``): ``y1`` is the last stage and ``k_s = f(t1, y1)`` is the next step's
first stage, and ``R(infinity) = 0`` (L-stable).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from infdepth.ode._esdirk_dense import continuous_extension
from infdepth.ode._tableaus import ButcherTableau


@dataclass(frozen=True)
class ESDIRKTableau(ButcherTableau):
    """An ESDIRK method: an explicit tableau's layout plus the diagonal ``gamma`` > 0.

    ``c[i] = sum(a[i - 1]) + gamma`` for the implicit stages; dense output is ``dense`` where
    given (KenCarp4 and Kvaerno5: an order-4 continuous extension,
    :mod:`~infdepth.ode._esdirk_dense`), else the cubic Hermite interpolant (``f(t1, y1)`` is
    the last stage).
    """

    gamma: float = 0.0

    def _validate(self) -> None:
        s = len(self.c)
        if not self.gamma > 0:
            raise ValueError("an ESDIRK tableau needs a diagonal gamma > 0")
        if len(self.a) != s - 1 or any(len(row) != i + 1 for i, row in enumerate(self.a)):
            raise ValueError("a must have len(c) - 1 rows, row i holding i + 1 entries")
        if len(self.b) != s or (self.b_error is not None and len(self.b_error) != s):
            raise ValueError("b and b_error must have one weight per stage")
        for ci, row in zip(self.c[1:], self.a, strict=True):
            if abs(ci - sum(row) - self.gamma) > 1e-12:
                raise ValueError("each implicit c[i] must equal sum(a[i - 1]) + gamma")

    def _is_fsal(self) -> bool:
        """Stiffly accurate: the last stage is ``(t1, y1)``, so ``k_s = f(t1, y1)``."""
        last = (*self.a[-1], self.gamma)
        return self.c[-1] == 1.0 and all(
            abs(x - y) < 1e-15 for x, y in zip(last, self.b, strict=True)
        )


def _with_dense(tab: ESDIRKTableau, order: int, degree: int, *, end_slope: bool = True,
                stiff_degree: int = 0) -> ESDIRKTableau:
    """``tab`` with its continuous extension of ``order`` as dense output (plain numbers)."""
    return dataclasses.replace(tab, dense=continuous_extension(
        tab, order, degree, end_slope=end_slope, stiff_degree=stiff_degree))


def _with_error(b: tuple[float, ...], embedded: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(x - y for x, y in zip(b, embedded, strict=True))


# Kennedy & Carpenter (2003), ARK4(3)6L[2]SA, the implicit tableau ("KenCarp4"): order 4,
# embedded order 3, L-stable, stiffly accurate, stage order 2, gamma = 1/4. Dense output: the
# order-4 continuous extension of degree 4 (one free parameter, spent on order 5).
_KC4_B = (82889 / 524892, 0.0, 15625 / 83664, 69875 / 102672, -2260 / 8211, 1 / 4)
_KC4_EMBEDDED = (4586570599 / 29645900160, 0.0, 178811875 / 945068544,
                 814220225 / 1159782912, -3700637 / 11593932, 61727 / 225920)
KENCARP4 = _with_dense(ESDIRKTableau(
    c=(0.0, 1 / 2, 83 / 250, 31 / 50, 17 / 20, 1.0),
    a=(
        (1 / 4,),
        (8611 / 62500, -1743 / 31250),
        (5012029 / 34652500, -654441 / 2922500, 174375 / 388108),
        (15267082809 / 155376265600, -71443401 / 120774400, 730878875 / 902184768,
         2285395 / 8070912),
        _KC4_B[:-1],
    ),
    b=_KC4_B,
    b_error=_with_error(_KC4_B, _KC4_EMBEDDED),
    gamma=1 / 4,
), order=4, degree=4)

# TR-BDF2 (Bank et al. 1985; Hosea & Shampine 1996) as an ESDIRK: a trapezoidal stage to
# t0 + gamma h, then BDF2; order 2 with an order-3 embedded solution, gamma = 1 - 1/sqrt(2).
_TR_G = 2 - math.sqrt(2)  # the trapezoid's share of the step
_TR_D = _TR_G / 2
_TR_W = math.sqrt(2) / 4
_TR_B = (_TR_W, _TR_W, _TR_D)
TRBDF2 = ESDIRKTableau(
    c=(0.0, _TR_G, 1.0),
    a=((_TR_D,), (_TR_W, _TR_W)),
    b=_TR_B,
    b_error=_with_error(_TR_B, ((1 - _TR_W) / 3, (3 * _TR_W + 1) / 3, _TR_D / 3)),
    gamma=_TR_D,
)

# Kvaerno (2004), "Singly diagonally implicit Runge-Kutta methods with an explicit first
# stage", the ESDIRK 5(4) of 7 stages (constants as in diffrax's Kvaerno5): order 5, embedded
# order 4 (stage 6, itself stiffly accurate), L-stable, gamma = 0.26. Stage 3 lies past the
# step (c = 1.23): f is evaluated slightly beyond the end time. Dense output: the order-4
# continuous extension of degree 4, exact in the stiff limit on a cubic slow solution
# (stiff_degree=3, which leaves no room for y'(t1) = f(t1, y1)): without that condition,
# stiff components inside steps had 1.5-10x larger errors on Robertson and HIRES. There is no
# order-5 extension with 7 stages of stage order 2.
_KV_G = 0.26
_KV_A = (
    (_KV_G,),
    (0.13, 0.84033320996790809),
    (0.22371961478320505, 0.47675532319799699, -0.06470895363112615),
    (0.16648564323248321, 0.10450018841591720, 0.03631482272098715, -0.13090704451073998),
    (0.13855640231268224, 0.0, -0.04245337201752043, 0.02446657898003141,
     0.61943039072480676),
    (0.13659751177640291, 0.0, -0.05496908796538376, -0.04118626728321046,
     0.62993304899016403, 0.06962479448202728),
)
_KV_B = (*_KV_A[-1], _KV_G)
KVAERNO5 = _with_dense(ESDIRKTableau(
    c=(0.0, *(sum(row) + _KV_G for row in _KV_A)),
    a=_KV_A,
    b=_KV_B,
    b_error=_with_error(_KV_B, (*_KV_A[-2], _KV_G, 0.0)),
    gamma=_KV_G,
), order=4, degree=4, end_slope=False, stiff_degree=3)
