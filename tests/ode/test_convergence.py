"""Order of convergence, measured: log error against log step size."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from infdepth.ode import RK4, Bosh3, Dopri5, Euler, Heun, Midpoint, RungeKutta, Tsit5, odeint

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


ALL = [(Euler, 1), (Midpoint, 2), (Heun, 2), (RK4, 4), (Bosh3, 3), (Dopri5, 5), (Tsit5, 5)]


def _steps_for(order: int) -> list[float]:
    # large enough that round-off stays far below the truncation error
    return [0.2, 0.1, 0.05, 0.025]


@pytest.mark.parametrize(("solver_cls", "order"), ALL)
def test_order_at_grid_points(solver_cls: type[RungeKutta], order: int) -> None:
    t = torch.tensor([0.0, 1.6], dtype=D)
    dts = _steps_for(order)
    errors = []
    for dt in dts:
        y = odeint(linear, Y0, t, solver=solver_cls(), step_size=dt)
        errors.append(float((y[-1] - exact(t)[-1]).abs().max()))
    assert abs(slope(dts, errors) - order) < 0.3, errors


@pytest.mark.parametrize(("solver_cls", "order"), ALL)
def test_dense_output_keeps_the_order(solver_cls: type[RungeKutta], order: int) -> None:
    # output times fall strictly inside steps, so every value comes from dense output
    t = torch.tensor([0.0, 0.13, 0.71, 1.37, 1.6], dtype=D)
    dts = _steps_for(order)
    errors = []
    for dt in dts:
        y = odeint(linear, Y0, t, solver=solver_cls(), step_size=dt)
        errors.append(float((y[1:4] - exact(t)[1:4]).abs().max()))
    # the interpolants are of order min(method order, 4) (Hermite cubic: 4, Shampine and
    # Tsitouras quartics: 4)
    expected = min(order, 4)
    assert slope(dts, errors) > expected - 0.3, errors


def test_euler_step_is_a_residual_block() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 3).double()
    h0 = torch.randn(5, 3, dtype=D)
    y = odeint(lambda t, h: torch.tanh(layer(h)), h0, torch.tensor([0.0, 0.5, 1.0], dtype=D),
               solver=Euler())
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
