"""Adaptive solvers: tolerances met on analytic problems, agreement with scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from infdepth.ode import RK4, Bosh3, Dopri5, PIController, RungeKutta, Tsit5, odeint

D = torch.float64
ADAPTIVE = [Bosh3, Dopri5, Tsit5]


@pytest.mark.parametrize("solver_cls", ADAPTIVE)
@pytest.mark.parametrize("tol", [1e-4, 1e-7])
def test_meets_tolerance_on_oscillator(solver_cls: type[RungeKutta], tol: float) -> None:
    # y'' = -y: y = (cos t, -sin t); irregular output times inside steps
    t = torch.tensor([0.0, 0.37, 1.1, 2.9, 4.0, 6.5], dtype=D)
    y = odeint(lambda t, y: torch.stack([y[1], -y[0]]), torch.tensor([1.0, 0.0], dtype=D), t,
               solver=solver_cls(), rtol=tol, atol=tol)
    exact = torch.stack([torch.cos(t), -torch.sin(t)], dim=1)
    err = float((y - exact).abs().max())
    # the tolerance bounds the local error; the global error is a modest multiple of it,
    # and no worse than scipy's implementation of the same kind of pair
    assert err < 30 * tol, err
    scipy_method = "RK23" if solver_cls is Bosh3 else "RK45"
    ref = solve_ivp(lambda t, y: np.array([y[1], -y[0]]), (0.0, 6.5), [1.0, 0.0],
                    method=scipy_method, t_eval=t.numpy(), rtol=tol, atol=tol)
    scipy_err = float(np.abs(ref.y.T - exact.numpy()).max())
    assert err < 3 * scipy_err, (err, scipy_err)


@pytest.mark.parametrize("solver_cls", ADAPTIVE)
def test_tighter_tolerance_is_more_accurate(solver_cls: type[RungeKutta]) -> None:
    t = torch.linspace(0, 3, 7, dtype=D)
    errs = []
    for tol in (1e-3, 1e-6, 1e-9):
        y = odeint(lambda t, y: -t * y, torch.ones(1, dtype=D), t, solver=solver_cls(),
                   rtol=tol, atol=tol)
        errs.append(float((y[:, 0] - torch.exp(-t**2 / 2)).abs().max()))
    assert errs[0] > errs[1] > errs[2]


def _lotka_volterra(t: float, y: np.ndarray) -> np.ndarray:
    return np.array([1.5 * y[0] - y[0] * y[1], -3.0 * y[1] + y[0] * y[1]])


def _van_der_pol(t: float, y: np.ndarray) -> np.ndarray:
    return np.array([y[1], 1.0 * (1 - y[0] ** 2) * y[1] - y[0]])


@pytest.mark.parametrize("solver_cls", ADAPTIVE)
@pytest.mark.parametrize("problem", [_lotka_volterra, _van_der_pol])
def test_agrees_with_scipy(solver_cls: type[RungeKutta], problem: object) -> None:
    fn = problem  # a numpy vector field, wrapped for torch below
    assert callable(fn)
    y0 = np.array([1.0, 1.0])
    t_eval = np.array([0.0, 0.3, 1.7, 2.2, 4.9, 6.0])
    ref = solve_ivp(fn, (0.0, 6.0), y0, method="DOP853", t_eval=t_eval, rtol=1e-12, atol=1e-12)

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if fn is _lotka_volterra:
            return torch.stack([1.5 * y[0] - y[0] * y[1], -3.0 * y[1] + y[0] * y[1]])
        return torch.stack([y[1], (1 - y[0] ** 2) * y[1] - y[0]])

    y = odeint(f, torch.tensor(y0, dtype=D), torch.tensor(t_eval, dtype=D),
               solver=solver_cls(), rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(y.numpy(), ref.y.T, rtol=0, atol=2e-5)


def test_per_sample_time_grids_match_separate_solves() -> None:
    torch.manual_seed(1)
    w = torch.randn(3, 3, dtype=D) * 0.5
    f = lambda t, y: torch.tanh(y @ w) * torch.cos(t)
    y0 = torch.randn(4, 3, dtype=D)
    t = torch.tensor(
        [[0.0, 0.0, 0.0, 0.0], [0.2, 0.05, 1.0, 0.7], [0.9, 0.3, 1.1, 2.5], [1.0, 2.0, 1.4, 3.0]],
        dtype=D,
    )
    ys = odeint(f, y0, t, rtol=1e-10, atol=1e-10)
    assert ys.shape == (4, 4, 3)
    for b in range(4):
        yb = odeint(f, y0[b : b + 1], t[:, b], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(ys[:, b], yb[:, 0], rtol=0, atol=1e-8)


def test_decreasing_times() -> None:
    t = torch.tensor([2.0, 1.5, 0.25, 0.0], dtype=D)
    y = odeint(lambda t, y: -y, torch.ones(2, dtype=D), t, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(y[:, 0], torch.exp(2.0 - t), rtol=1e-7, atol=0)


def test_pi_controller_with_proportional_term() -> None:
    t = torch.tensor([0.0, 5.0], dtype=D)
    ctrl = PIController(rtol=1e-7, atol=1e-7, pcoeff=0.4, icoeff=0.3)
    y = odeint(lambda t, y: torch.stack([y[1], -y[0]]), torch.tensor([1.0, 0.0], dtype=D), t,
               controller=ctrl)
    assert math.isclose(float(y[-1, 0]), math.cos(5.0), abs_tol=1e-5)


def test_float32_state_and_output_dtype() -> None:
    y = odeint(lambda t, y: -y, torch.ones(3), torch.tensor([0.0, 1.0]), rtol=1e-5, atol=1e-6)
    assert y.dtype == torch.float32
    assert abs(float(y[-1, 0]) - math.exp(-1)) < 1e-4


def test_per_sample_grids_with_fixed_steps() -> None:
    # fixed steps shared by the batch, each sample read off by dense output
    torch.manual_seed(2)
    y0 = torch.randn(3, 2, dtype=D)
    t = torch.tensor([[0.0, 0.0, 0.0], [0.33, 0.1, 0.5], [0.9, 0.47, 1.0]], dtype=D)
    f = lambda t, y: torch.sin(y) - 0.5 * y
    for solver in (RK4(), Dopri5()):
        ys = odeint(f, y0, t, solver=solver, step_size=0.05)
        for b in range(3):
            yb = odeint(f, y0[b : b + 1], t[:, b], solver=solver, step_size=0.05)
            torch.testing.assert_close(ys[:, b], yb[:, 0], rtol=0, atol=1e-6)
