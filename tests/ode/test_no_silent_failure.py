"""The ODE API refuses what it would otherwise get silently wrong.

* an adjoint method with a field whose parameters it cannot see (a function closing over
  a module) raises instead of leaving those parameters a ``None`` gradient, and takes them
  when they are passed;
* a fixed-step solver without ``step_size`` raises instead of taking one step from output
  to output (4.0e6 for ``y' = -y`` on ``[0, 100]`` with RK4);
* ``ODEBlock`` given a function says it needs an ``nn.Module``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from infdepth.errors import InputError
from infdepth.ode import (
    RK4,
    Adjoint,
    Backprop,
    Checkpointed,
    ConstantStepSize,
    Dopri5,
    Euler,
    ODEBlock,
    odeint,
)

D = torch.float64


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2)).double()


@pytest.mark.parametrize("method", [Adjoint, Checkpointed])
def test_an_adjoint_that_cannot_see_the_fields_parameters_refuses(method: type) -> None:
    f = net()
    y0 = torch.randn(3, 2, dtype=D)
    t = torch.tensor([0.0, 1.0], dtype=D)
    with pytest.raises(InputError, match=rf"{method.__name__}\(params=net.parameters\(\)\)"):
        odeint(lambda t, y: f(y), y0, t, adjoint=method())


@pytest.mark.parametrize("method", [Adjoint, Checkpointed])
def test_passed_parameters_get_the_gradient_backprop_gives(method: type) -> None:
    f = net()
    y0 = torch.randn(3, 2, dtype=D)
    t = torch.tensor([0.0, 1.0], dtype=D)

    def grads(adjoint: object) -> list[torch.Tensor]:
        f.zero_grad()
        ys = odeint(lambda t, y: f(y), y0, t, adjoint=adjoint, rtol=1e-10, atol=1e-10)
        ys[-1].square().sum().backward()
        return [p.grad.clone() for p in f.parameters()]  # type: ignore[union-attr]

    expected = grads(Backprop())
    got = grads(method(params=tuple(f.parameters())))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


def test_a_field_without_hidden_tensors_and_a_module_field_still_run_with_the_adjoint() -> None:
    y0 = torch.randn(3, 2, dtype=D, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=D)
    out = odeint(lambda t, y: -y, y0, t, adjoint=Adjoint())
    (g,) = torch.autograd.grad(out[-1].sum(), y0)
    torch.testing.assert_close(g, torch.full_like(y0, float(torch.exp(torch.tensor(-1.0)))))

    class Field(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = net()

        def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.inner(y)
            return out

    field = Field()
    odeint(field, y0, t, adjoint=Adjoint())[-1].sum().backward()
    assert all(p.grad is not None for p in field.parameters())
    with torch.no_grad():  # no gradient wanted: nothing to refuse
        odeint(lambda t, y: field(t, y), y0, t, adjoint=Adjoint())


@pytest.mark.parametrize("solver", [Euler(), RK4()])
def test_a_fixed_step_solver_without_step_size_refuses(solver: object) -> None:
    y0 = torch.ones(2, dtype=D)
    t = torch.tensor([0.0, 100.0], dtype=D)
    with pytest.raises(InputError, match="needs step_size="):
        odeint(lambda t, y: -y, y0, t, solver=solver)  # type: ignore[arg-type]
    # with a step size it is accurate; output to output only when asked for
    y = odeint(lambda t, y: -y, y0, t, solver=RK4(), step_size=0.1)[-1]
    assert float(y.abs().max()) < 1e-40
    one_step = odeint(lambda t, y: -y, y0, t, solver=RK4(), controller=ConstantStepSize())[-1]
    assert float(one_step[0]) == pytest.approx(1 - 100 + 100**2 / 2 - 100**3 / 6 + 100**4 / 24)


def test_an_ode_block_on_a_fixed_step_solver_needs_a_step_size() -> None:
    block = ODEBlock(nn.Linear(2, 2), solver=RK4())
    with pytest.raises(InputError, match="step_size"):
        block(torch.randn(1, 2))


def test_an_ode_block_given_a_function_says_it_needs_a_module() -> None:
    f = net()
    with pytest.raises(InputError, match="needs an nn.Module"):
        ODEBlock(lambda t, h: f(h), solver=Dopri5())  # type: ignore[arg-type]
