"""Solvers: a Butcher tableau plus an order, and the tensors one step needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch

from infdepth.ode import _tableaus as tab
from infdepth.ode._tableau_dopri8 import DOPRI8


class StepTensors(NamedTuple):
    """A tableau as tensors on one device in one dtype (built once per solve)."""

    weights: torch.Tensor  # (S - 1 + 1 [+ 1 [+ 1]], S): rows a[1:], b, b_error, b_error_low
    c: torch.Tensor  # (S,)
    dense: torch.Tensor  # (rows, degree) dense-output coefficients
    workspace: Any = None  # an implicit solver's per-solve Newton state (ImplicitSteps)


@dataclass(frozen=True)
class RungeKutta:
    """An explicit Runge-Kutta method; subclasses only set ``tableau`` and ``order``.

    Solvers carry no state and are compared by type, so ``Dopri5() == Dopri5()``.
    """

    tableau: ClassVar[tab.ButcherTableau]
    order: ClassVar[int]

    @property
    def adaptive(self) -> bool:
        """Whether the tableau has an embedded error estimate (needs a step-size controller)."""
        return self.tableau.b_error is not None

    @property
    def stages(self) -> int:
        return self.tableau.stages

    @property
    def fsal(self) -> bool:
        return self.tableau.fsal

    @property
    def dense_needs_end_derivative(self) -> bool:  # read once per solve
        """Dense output uses ``f(t1, y1)`` as an extra row (non-FSAL Hermite interpolant)."""
        return self.tableau.dense_matrix().shape[0] > self.stages + len(self.tableau.dense_c)

    def tensors(self, dtype: torch.dtype, device: torch.device) -> StepTensors:
        """The tableau as tensors of ``dtype`` on ``device``.

        Built from ``self.tableau`` on every call (a few small copies, once per solve): no
        cache that could answer for another solver.  From Python numbers, so that
        ``torch.compile`` traces them as constants.
        """
        t = self.tableau
        return StepTensors(torch.tensor(t.weight_rows, dtype=dtype, device=device),
                           torch.tensor(t.c, dtype=dtype, device=device),
                           torch.tensor(t.dense_rows, dtype=dtype, device=device))


@dataclass(frozen=True)
class Euler(RungeKutta):
    """Forward Euler, order 1: one step is one residual block ``h + dt * f(t, h)``."""

    tableau: ClassVar[tab.ButcherTableau] = tab.EULER
    order: ClassVar[int] = 1


@dataclass(frozen=True)
class Midpoint(RungeKutta):
    """Explicit midpoint rule, order 2."""

    tableau: ClassVar[tab.ButcherTableau] = tab.MIDPOINT
    order: ClassVar[int] = 2


@dataclass(frozen=True)
class Heun(RungeKutta):
    """Heun's method (explicit trapezoid), order 2."""

    tableau: ClassVar[tab.ButcherTableau] = tab.HEUN
    order: ClassVar[int] = 2


@dataclass(frozen=True)
class RK4(RungeKutta):
    """The classical Runge-Kutta method, order 4."""

    tableau: ClassVar[tab.ButcherTableau] = tab.RK4
    order: ClassVar[int] = 4


@dataclass(frozen=True)
class Bosh3(RungeKutta):
    """Bogacki-Shampine 3(2): adaptive, FSAL, cubic Hermite dense output."""

    tableau: ClassVar[tab.ButcherTableau] = tab.BOSH3
    order: ClassVar[int] = 3


@dataclass(frozen=True)
class Dopri5(RungeKutta):
    """Dormand-Prince 5(4): adaptive, FSAL, Shampine's order-4 dense output."""

    tableau: ClassVar[tab.ButcherTableau] = tab.DOPRI5
    order: ClassVar[int] = 5


@dataclass(frozen=True)
class Tsit5(RungeKutta):
    """Tsitouras 5(4): adaptive, FSAL, order-4 dense output."""

    tableau: ClassVar[tab.ButcherTableau] = tab.TSIT5
    order: ClassVar[int] = 5


@dataclass(frozen=True)
class Dopri8(RungeKutta):
    """Dormand-Prince 8(5,3) (Hairer's DOP853): adaptive, FSAL, order-7 dense output."""

    tableau: ClassVar[tab.ButcherTableau] = DOPRI8
    order: ClassVar[int] = 8


SOLVERS: tuple[type[RungeKutta], ...] = (Euler, Midpoint, Heun, RK4, Bosh3, Dopri5, Tsit5,
                                         Dopri8)
