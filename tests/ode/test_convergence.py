"""Order of convergence, measured: log error against log step size."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from infdepth.ode import (
    RK4,
    Bosh3,
    ConstantStepSize,
    Dopri5,
    Dopri8,
    Euler,
    Heun,
    Midpoint,
    RungeKutta,
    Tsit5,
    odeint,
)

D = torch.float64
# y' = A y with a rotation and a decay: y(t) = exp(A t) y0 in closed form.
A = torch.tensor([[-0.3, 1.0], [-1.0, -0.3]], dtype=D)
Y0 = torch.tensor([1.0, 0.5], dtype=D)


def exact(t: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.linalg.matrix_exp(A * ti) @ Y0 for ti in t])


def linear(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return y @ A.T


def slope(dts: list[float], errors: list[float]) -> float:
    return float(np.polyfit(np.log(dts), np.log(errors), 1)[0])


# (solver, order at grid points, order of dense output): a Hermite cubic has interpolation
# error O(h^4), so its dense output has order min(p, 4); Shampine's and Tsitouras' quartic
# interpolants have local error O(h^5), so order 5 with their order-5 methods; DOP853's
# degree-7 extension has local error O(h^8).
ALL = [(Euler, 1, 1), (Midpoint, 2, 2), (Heun, 2, 2), (RK4, 4, 4), (Bosh3, 3, 3),
       (Dopri5, 5, 5), (Tsit5, 5, 5), (Dopri8, 8, 8)]
# 41 output times strictly inside steps for every step size below, and the end
INSIDE = torch.cat([torch.zeros(1, dtype=D), torch.linspace(0.0, 1.6, 42, dtype=D)[1:-1] + 0.0137,
                    torch.tensor([1.6], dtype=D)])


def _steps_for(order: int) -> list[float]:
    """The asymptotic range: errors far above round-off, the leading term dominant."""
    if order <= 3:
        return [0.025, 0.0125, 0.00625, 0.003125]
    if order == 4:
        return [0.1, 0.05, 0.025, 0.0125]
    if order == 8:  # errors reach round-off below 0.1
        return [0.8, 0.4, 0.2]
    return [0.1, 0.05, 0.025]


def _errors(solver_cls: type[RungeKutta], order: int) -> tuple[list[float], list[float], list[float]]:
    dts = _steps_for(order)
    exact_values = exact(INSIDE)
    at_end, inside = [], []
    for dt in dts:
        y = odeint(linear, Y0, INSIDE, solver=solver_cls(), step_size=dt)
        at_end.append(float((y[-1] - exact_values[-1]).abs().max()))
        inside.append(float((y[1:-1] - exact_values[1:-1]).abs().max()))
    return dts, at_end, inside


@pytest.mark.parametrize(("solver_cls", "order", "dense_order"), ALL)
def test_order_at_grid_points(solver_cls: type[RungeKutta], order: int, dense_order: int) -> None:
    dts, errors, _ = _errors(solver_cls, order)
    assert abs(slope(dts, errors) - order) < 0.15, errors


@pytest.mark.parametrize(("solver_cls", "order", "dense_order"), ALL)
def test_dense_output_order(solver_cls: type[RungeKutta], order: int, dense_order: int) -> None:
    # every output time but the last falls strictly inside a step: all from dense output
    dts, _, errors = _errors(solver_cls, order)
    assert abs(slope(dts, errors) - dense_order) < 0.15, errors


def test_euler_step_is_a_residual_block() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 3).double()
    h0 = torch.randn(5, 3, dtype=D)
    y = odeint(lambda t, h: torch.tanh(layer(h)), h0, torch.tensor([0.0, 0.5, 1.0], dtype=D),
               solver=Euler(), controller=ConstantStepSize())  # one step per output
    h1 = h0 + 0.5 * torch.tanh(layer(h0))
    h2 = h1 + 0.5 * torch.tanh(layer(h1))
    torch.testing.assert_close(y[-1], h2)


def test_fixed_step_count_matches_step_size() -> None:
    calls = []

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls.append(float(t))
        return -y

    odeint(f, torch.ones(2, dtype=D), torch.tensor([0.0, 1.0], dtype=D), solver=RK4(),
           step_size=0.1)
    assert len(calls) == 4 * 10
    assert math.isclose(max(calls), 1.0, abs_tol=1e-12)
