"""Butcher tableaus: every explicit Runge-Kutta method here is data, not code.

A tableau holds the stage nodes ``c``, the strictly lower-triangular ``a``, the
solution weights ``b``, optionally the error weights ``b_error`` (solution minus
embedded solution) of an adaptive pair, and the dense output: a matrix ``dense``
with one row per stage and one column per power ``theta**1 .. theta**d`` so that

    y(t0 + theta * h) = y0 + h * sum_i (sum_d dense[i, d] * theta**(d + 1)) * k_i.

Methods without their own continuous extension get a cubic Hermite interpolant
built from ``b``; when the last stage is not ``f(t1, y1)`` (no FSAL) that
interpolant needs one extra row, for the derivative at the end of the step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.polynomial import polynomial as npoly


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge-Kutta method.

    Attributes:
        c: stage times as fractions of the step, ``c[0] == 0``.
        a: rows of the lower-triangular stage matrix; ``a[i]`` has ``i + 1`` entries
           and defines stage ``i + 1``.
        b: weights of the propagated solution.
        b_error: weights of the local error estimate (``b`` minus the embedded
            weights), or ``None`` for a fixed-step method.
        dense: dense-output coefficients (see module docstring); ``None`` means a
            cubic Hermite interpolant.
        b_error_low: a second, lower-order error estimate; with it the error of a component
            is ``e |e| / sqrt(e**2 + 0.01 e_low**2)`` (Hairer's DOP853 estimator).
        dense_c, dense_a: stages that only the dense output needs, evaluated for steps with
            an output strictly inside them; ``dense_a[j]`` weighs all earlier stages.
    """

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    b_error: tuple[float, ...] | None = None
    dense: np.ndarray | None = field(default=None, compare=False)
    b_error_low: tuple[float, ...] | None = None
    dense_c: tuple[float, ...] = ()
    dense_a: tuple[tuple[float, ...], ...] = ()
    # derived from the fields above once, in __post_init__ (the tableau is immutable), as
    # plain Python numbers: a solve builds its tensors from them, which torch.compile traces
    fsal: bool = field(init=False, compare=False, repr=False)
    """First same as last: the last stage is evaluated at ``(t1, y1)``."""
    weight_rows: tuple[tuple[float, ...], ...] = field(init=False, compare=False, repr=False)
    """Rows ``a[1:]`` (zero-padded to ``s`` columns), ``b``, ``b_error``, ``b_error_low``."""
    dense_rows: tuple[tuple[float, ...], ...] = field(init=False, compare=False, repr=False)
    """:meth:`dense_matrix` as tuples."""

    def __post_init__(self) -> None:
        self._validate()
        s = len(self.c)
        object.__setattr__(self, "fsal", self._is_fsal())
        rows = [(*row, *[0.0] * (s - len(row))) for row in self.a]
        rows += [v for v in (self.b, self.b_error, self.b_error_low) if v is not None]
        object.__setattr__(self, "weight_rows", tuple(tuple(float(x) for x in r) for r in rows))
        dense = self._dense_matrix()
        object.__setattr__(self, "dense_rows", tuple(tuple(float(x) for x in r) for r in dense))

    def _validate(self) -> None:
        s = len(self.c)
        if len(self.a) != s - 1 or any(len(row) != i + 1 for i, row in enumerate(self.a)):
            raise ValueError("a must have len(c) - 1 rows, row i holding i + 1 entries")
        if len(self.b) != s or (self.b_error is not None and len(self.b_error) != s):
            raise ValueError("b and b_error must have one weight per stage")
        if self.b_error_low is not None and (self.b_error is None or len(self.b_error_low) != s):
            raise ValueError("b_error_low needs b_error and one weight per stage")
        if len(self.dense_a) != len(self.dense_c) or any(
            len(row) != s + j for j, row in enumerate(self.dense_a)
        ):
            raise ValueError("dense_a must have one row per dense_c, row j holding s + j entries")
        for ci, row in zip(self.c[1:], self.a, strict=True):
            if abs(ci - sum(row)) > 1e-12:
                raise ValueError("each c[i] must equal the sum of a[i - 1]")

    def _is_fsal(self) -> bool:
        return (
            len(self.c) > 1
            and self.c[-1] == 1.0
            and self.b[-1] == 0.0
            and all(abs(x - y) < 1e-15 for x, y in zip(self.a[-1], self.b[:-1], strict=True))
        )

    @property
    def stages(self) -> int:
        return len(self.c)

    def dense_matrix(self) -> np.ndarray:
        """Dense-output coefficients, shape ``(rows, degree)``.

        ``rows`` is the number of stages, plus one for ``f(t1, y1)`` when the method
        is not FSAL and has no interpolant of its own.
        """
        return np.asarray(self.dense_rows, dtype=np.float64)

    def _dense_matrix(self) -> np.ndarray:
        if self.dense is not None:
            return np.asarray(self.dense, dtype=np.float64)
        b = np.asarray(self.b, dtype=np.float64)
        # cubic Hermite basis in powers theta, theta^2, theta^3
        h10 = np.array([1.0, -2.0, 1.0])  # weight of h * f0
        h01 = np.array([0.0, 3.0, -2.0])  # weight of y1 - y0
        h11 = np.array([0.0, -1.0, 1.0])  # weight of h * f1
        rows = self.stages if self.fsal else self.stages + 1
        m = np.zeros((rows, 3))
        m[: self.stages] += b[:, None] * h01[None, :]
        m[0] += h10
        m[rows - 1] += h11
        return m


def _from_factored(scale: float, roots: list[float], quadratics: list[tuple[float, float]], t_power: int
                   ) -> np.ndarray:
    """Coefficients (powers 1..) of ``scale * t**t_power * prod(t - r) * prod(t**2 + p t + q)``."""
    poly = np.array([scale])
    for r in roots:
        poly = npoly.polymul(poly, [-r, 1.0])
    for p, q in quadratics:
        poly = npoly.polymul(poly, [q, p, 1.0])
    poly = npoly.polymul(poly, [0.0] * t_power + [1.0])
    return np.asarray(poly[1:], dtype=np.float64)


EULER = ButcherTableau(c=(0.0,), a=(), b=(1.0,))

MIDPOINT = ButcherTableau(c=(0.0, 0.5), a=((0.5,),), b=(0.0, 1.0))

HEUN = ButcherTableau(c=(0.0, 1.0), a=((1.0,),), b=(0.5, 0.5))

RK4 = ButcherTableau(
    c=(0.0, 0.5, 0.5, 1.0),
    a=((0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
    b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
)

# Bogacki-Shampine 3(2), FSAL; cubic Hermite dense output.
BOSH3 = ButcherTableau(
    c=(0.0, 0.5, 0.75, 1.0),
    a=((0.5,), (0.0, 0.75), (2 / 9, 1 / 3, 4 / 9)),
    b=(2 / 9, 1 / 3, 4 / 9, 0.0),
    b_error=(2 / 9 - 7 / 24, 1 / 3 - 1 / 4, 4 / 9 - 1 / 3, -1 / 8),
)

# Dormand-Prince 5(4), FSAL; Shampine's quartic continuous extension.
DOPRI5 = ButcherTableau(
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=(
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
    ),
    b=(35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0),
    # Shampine's alternative embedded 4th-order weights (as in torchdiffeq and diffrax), so
    # that step sequences, and hence NFE, are comparable with those libraries.
    b_error=(
        35 / 384 - 1951 / 21600,
        0.0,
        500 / 1113 - 22642 / 50085,
        125 / 192 - 451 / 720,
        -2187 / 6784 + 12231 / 42400,
        11 / 84 - 649 / 6300,
        -1 / 60,
    ),
    dense=np.array(
        [
            [1, -8048581381 / 2820520608, 8663915743 / 2820520608, -12715105075 / 11282082432],
            [0, 0, 0, 0],
            [0, 131558114200 / 32700410799, -68118460800 / 10900136933,
             87487479700 / 32700410799],
            [0, -1754552775 / 470086768, 14199869525 / 1410260304, -10690763975 / 1880347072],
            [0, 127303824393 / 49829197408, -318862633887 / 49829197408,
             701980252875 / 199316789632],
            [0, -282668133 / 205662961, 2019193451 / 616988883, -1453857185 / 822651844],
            [0, 40617522 / 29380423, -110615467 / 29380423, 69997945 / 29380423],
        ],
        dtype=np.float64,
    ),
)

# Tsitouras 5(4), FSAL; its own quartic (order 4) continuous extension.
_TS_B = (
    0.09646076681806523,
    0.01,
    0.4798896504144996,
    1.379008574103742,
    -3.290069515436081,
    2.324710524099774,
    0.0,
)
_TS_B_EMBEDDED = (
    0.09468075576583945,
    0.009183565540343254,
    0.4877705284247616,
    1.234297566930479,
    -2.7077123499835256,
    1.866628418170587,
    1 / 66,
)
TSIT5 = ButcherTableau(
    c=(0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0),
    a=(
        (0.161,),
        (-0.008480655492356989, 0.335480655492357),
        (2.897153057105493, -6.359448489975075, 4.3622954328695815),
        (5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525),
        (5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401,
         -0.028269050394068383),
        _TS_B[:-1],
    ),
    b=_TS_B,
    b_error=tuple(x - y for x, y in zip(_TS_B, _TS_B_EMBEDDED, strict=True)),
    dense=np.stack(
        [
            _from_factored(-1.0530884977290216, [1.3299890189751412],
                           [(-1.4364028541716351, 0.7139816917074209)], 1),
            _from_factored(0.1017, [], [(-2.1966568338249754, 1.2949852507374631)], 2),
            _from_factored(2.490627285651252793, [], [(-2.38535645472061657, 1.57803468208092486)],
                           2),
            _from_factored(-16.54810288924490272, [1.21712927295533244, 0.61620406037800089], [],
                           2),
            _from_factored(47.37952196281928122, [1.203071208372362603, 0.658047292653547382], [],
                           2),
            _from_factored(-34.87065786149660974, [1.2, 2 / 3], [], 2),
            _from_factored(2.5, [1.0, 0.6], [], 2),
        ]
    ),
)
