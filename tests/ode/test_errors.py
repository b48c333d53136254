"""Bad input raises InputError naming the argument; solver failures name t and h."""

from __future__ import annotations

import math

import pytest
import torch

from infdepth.errors import DivergenceError, InputError
from infdepth.ode import (
    RK4,
    Euler,
    NonFiniteStateError,
    PIController,
    SolverError,
    odeint,
)

D = torch.float64
Y0 = torch.ones(2, dtype=D)
T = torch.tensor([0.0, 1.0], dtype=D)


def decay(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -y


@pytest.mark.parametrize(
    "t",
    [
        torch.tensor([0.0, 1.0, 0.5], dtype=D),
        torch.tensor([0.0, 0.0, 1.0], dtype=D),
        torch.tensor([0.0], dtype=D),
        torch.tensor([0.0, float("nan")], dtype=D),
        torch.tensor([0, 1]),
    ],
    ids=["not-monotone", "repeated", "single", "nan", "integer"],
)
def test_bad_times(t: torch.Tensor) -> None:
    with pytest.raises(InputError, match="t "):
        odeint(decay, Y0, t)


def test_bad_per_sample_times() -> None:
    y0 = torch.ones(3, 2, dtype=D)
    with pytest.raises(InputError, match="batch"):
        odeint(decay, y0, torch.zeros(2, 4, dtype=D))
    t = torch.tensor([[0.0, 0.1, 0.0], [1.0, 1.0, 1.0]], dtype=D)
    with pytest.raises(InputError, match="first time"):
        odeint(decay, y0, t)
    t = torch.tensor([[0.0, 0.0, 0.0], [1.0, -1.0, 1.0]], dtype=D)
    with pytest.raises(InputError, match="strictly"):
        odeint(decay, y0, t)


def test_nan_initial_state() -> None:
    with pytest.raises(InputError, match="y0"):
        odeint(decay, torch.tensor([1.0, float("nan")], dtype=D), T)


def test_wrong_shape_from_f() -> None:
    with pytest.raises(InputError, match=r"shape \(3,\).*\(2,\)"):
        odeint(lambda t, y: torch.ones(3, dtype=D), Y0, T)
    with pytest.raises(InputError, match="dtype"):
        odeint(lambda t, y: torch.ones(2, dtype=torch.float32), Y0, T)


@pytest.mark.parametrize(("name", "value"), [("rtol", -1e-3), ("atol", -1.0), ("rtol", math.inf)])
def test_negative_tolerances(name: str, value: float) -> None:
    with pytest.raises(InputError, match=name):
        odeint(decay, Y0, T, **{name: value})  # type: ignore[arg-type]


def test_bad_solver_controller_and_steps() -> None:
    with pytest.raises(InputError, match="solver"):
        odeint(decay, Y0, T, solver="dopri5")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="step_size"):
        odeint(decay, Y0, T, solver=RK4(), step_size=-0.1)
    with pytest.raises(InputError, match="max_steps"):
        odeint(decay, Y0, T, max_steps=0)
    with pytest.raises(InputError, match="error estimate"):
        odeint(decay, Y0, T, solver=Euler(), controller=PIController())
    with pytest.raises(InputError, match="rtol=0 and atol=0"):
        PIController(rtol=0.0, atol=0.0)


def test_max_steps_names_time_and_step() -> None:
    with pytest.raises(SolverError, match=r"max_steps=5 reached at t=[0-9.e-]+ \(step size"):
        odeint(decay, Y0, torch.tensor([0.0, 100.0], dtype=D), rtol=1e-10, atol=1e-10,
               max_steps=5)
    with pytest.raises(SolverError, match="max_steps=3"):
        odeint(decay, Y0, T, solver=RK4(), step_size=0.1, max_steps=3)


def test_minimum_step_names_time_and_step() -> None:
    # y' = y^2 from y(0) = 1 blows up at t = 1: the step size collapses on the way
    with pytest.raises(SolverError, match=r"step size [0-9.e-]+ at t=0\.9"):
        odeint(lambda t, y: y**2, torch.ones(1, dtype=D), torch.tensor([0.0, 2.0], dtype=D),
               controller=PIController(rtol=1e-6, atol=1e-6, dtmin=1e-4))


def test_non_finite_state_is_an_error_not_a_silent_nan() -> None:
    with pytest.raises(NonFiniteStateError, match=r"t=[0-9.e-]+ with step size") as info:
        odeint(lambda t, y: y**2, torch.full((1,), 10.0, dtype=D),
               torch.tensor([0.0, 10.0], dtype=D), solver=Euler(), step_size=0.5)
    assert isinstance(info.value, DivergenceError)
    with pytest.raises(NonFiniteStateError):
        odeint(lambda t, y: y * float("nan"), Y0, T)
