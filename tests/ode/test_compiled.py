"""CompiledSolver: the eager loop's step sequence and outputs, several steps per compiled call.

The graph logic (masked attempts, the controller as tensor operations, the stop at an output
time) is checked with the ``aot_eager`` backend, which traces the same graph without a C++
build; one test runs inductor's generated code on a tiny problem.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from infdepth.errors import InputError
from infdepth.ode import RK4, CompiledSolver, Dopri5, KenCarp4, PIController, Tsit5
from infdepth.ode._errors import SolverError
from infdepth.ode._integrate import integrate
from infdepth.ode._odeint import _output_grid
from infdepth.ode._stepping import Stats


def lorenz(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x, v, z = y.unbind(-1)
    return torch.stack([10.0 * (v - x), x * (28.0 - z) - v, x * v - (8.0 / 3.0) * z], -1)


def _eager(f, y0: torch.Tensor, t: torch.Tensor, solver, ctrl: PIController):  # noqa: ANN001
    stats = Stats()
    grid, _ = _output_grid(t, y0)
    ys = integrate(f, y0, grid, solver, ctrl, max_steps=10_000, stats=stats)
    return ys, stats


@pytest.fixture(scope="module")
def lorenz_solver() -> CompiledSolver:
    return CompiledSolver(lorenz, solver=Dopri5(), rtol=1e-8, atol=1e-8, attempts=3,
                          backend="aot_eager")


@pytest.mark.parametrize("times", [[0.0, 0.05, 0.4, 0.41, 1.3, 2.0], [0.5, 0.21, 0.0]])
def test_same_steps_and_outputs_as_the_eager_loop(lorenz_solver: CompiledSolver,
                                                   times: list[float]) -> None:
    y0 = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    t = torch.tensor(times, dtype=torch.float64)
    ys = lorenz_solver(y0, t)
    ref, stats = _eager(lorenz, y0, t, Dopri5(), lorenz_solver.controller)
    got = lorenz_solver.stats
    assert ys.shape == ref.shape == (len(times), 3)
    torch.testing.assert_close(ys, ref, rtol=1e-11, atol=1e-11)
    assert (got.accepted, got.rejected, got.nfe) == (stats.accepted, stats.rejected, stats.nfe)
    assert got.rejected > 0  # the rejection path was exercised
    assert got.compiles == 1  # both directions and every output grid share one graph


def test_float32_state_takes_the_eager_steps() -> None:
    y0 = torch.tensor([1.0, 0.0, 0.0])
    t = torch.tensor([0.0, 0.3, 1.0])
    solver = CompiledSolver(lorenz, rtol=1e-5, atol=1e-6, attempts=3, backend="aot_eager")
    ys = solver(y0, t)
    ref, stats = _eager(lorenz, y0, t, Dopri5(), solver.controller)
    assert ys.dtype == torch.float32
    torch.testing.assert_close(ys, ref, rtol=1e-5, atol=1e-5)
    assert (solver.stats.accepted, solver.stats.rejected) == (stats.accepted, stats.rejected)


def test_max_steps_is_a_solver_error(lorenz_solver: CompiledSolver) -> None:
    y0 = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    lorenz_solver.max_steps = 5
    try:
        with pytest.raises(SolverError, match="max_steps=5"):
            lorenz_solver(y0, torch.tensor([0.0, 10.0], dtype=torch.float64))
    finally:
        lorenz_solver.max_steps = 10_000


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(y)
        return out


def test_backprop_through_the_compiled_steps_equals_eager_backprop() -> None:
    torch.manual_seed(0)
    field = MLP().double()
    y0 = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    t = torch.linspace(0.0, 1.5, 7, dtype=torch.float64)
    params = [y0, *field.parameters()]
    ctrl = PIController(rtol=1e-7, atol=1e-9)
    solver = CompiledSolver(field, solver=Tsit5(), controller=ctrl, attempts=2,
                            backend="aot_eager")
    # a start that needs no grad first: the first call differs from the rest (its state does
    # not require grad, the next ones do), and the guards must see both
    for start, wrt in ((y0.detach(), params[1:]), (y0, params)):
        ref, stats = _eager(field, start, t, Tsit5(), ctrl)
        ref_grads = torch.autograd.grad(ref.sin().sum(), wrt)
        ys = solver(start, t)
        grads = torch.autograd.grad(ys.sin().sum(), wrt)
        torch.testing.assert_close(ys, ref, rtol=1e-10, atol=1e-10)
        assert (solver.stats.accepted, solver.stats.nfe) == (stats.accepted, stats.nfe)
        for g, r in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-10)


def test_inductor_code_equals_eager() -> None:
    """The C++ that inductor generates for the whole call (one small compile)."""
    y0 = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    t = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    solver = CompiledSolver(lorenz, rtol=1e-6, atol=1e-6, attempts=2)
    ys = solver(y0, t)
    ref, stats = _eager(lorenz, y0, t, Dopri5(), solver.controller)
    torch.testing.assert_close(ys, ref, rtol=1e-11, atol=1e-11)
    assert (solver.stats.accepted, solver.stats.nfe) == (stats.accepted, stats.nfe)
    assert solver.stats.compile_seconds > 0 and solver.stats.compiles == 1


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"solver": RK4()}, "solver=RK4()"),
    ({"solver": KenCarp4()}, "solver=KenCarp4()"),
    ({"attempts": 0}, "attempts=0"),
    ({"max_steps": 0}, "max_steps=0"),
    ({"controller": 1e-3}, "controller=0.001"),
])
def test_bad_arguments_are_refused(kwargs: dict, name: str) -> None:
    with pytest.raises(InputError, match=name.replace("(", r"\(").replace(")", r"\)")):
        CompiledSolver(lorenz, **kwargs)


def test_bad_times_are_refused(lorenz_solver: CompiledSolver) -> None:
    y0 = torch.ones(3, dtype=torch.float64)
    for t, match in ((torch.tensor([0.0, 1.0], requires_grad=True), "requires grad"),
                     (torch.tensor([0.0, 1.0, 0.5]), "strictly"),
                     (torch.zeros(2, 3), "shape")):
        with pytest.raises(InputError, match=match):
            lorenz_solver(y0, t)
