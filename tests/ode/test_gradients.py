"""Gradients: gradcheck in float64, adjoint and checkpointing against backprop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from infdepth.ode import RK4, Adjoint, Backprop, Checkpointed, Dopri5, Tsit5, odeint

D = torch.float64


class Field(nn.Module):
    """A small non-autonomous vector field with parameters."""

    def __init__(self, dim: int = 2, hidden: int = 8) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden).double()
        self.lin2 = nn.Linear(hidden, dim).double()

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.lin2(torch.tanh(self.lin1(y))) * (1 + 0.5 * torch.sin(t))
        return out


@pytest.fixture
def field() -> Field:
    torch.manual_seed(0)
    return Field()


def test_gradcheck_backprop_fixed_step(field: Field) -> None:
    w = field.lin2.weight

    def fn(y0: torch.Tensor, t: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        def f(tt: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return torch.tanh(field.lin1(y)) @ weight.T * (1 + 0.5 * torch.sin(tt))

        return odeint(f, y0, t, solver=RK4(), step_size=0.1)

    y0 = torch.randn(3, 2, dtype=D, requires_grad=True)
    t = torch.tensor([0.0, 0.35, 1.0], dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (y0, t, w.detach().clone().requires_grad_()))


def test_gradcheck_backprop_adaptive(field: Field) -> None:
    # at a tight tolerance the step sequence is locally constant in the inputs
    def fn(y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return odeint(field, y0, t, solver=Dopri5(), rtol=1e-9, atol=1e-9)

    y0 = torch.randn(2, 2, dtype=D, requires_grad=True)
    t = torch.tensor([0.0, 0.6, 1.3], dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (y0, t), atol=1e-5, rtol=1e-4)


def test_gradcheck_checkpointed_fixed_step(field: Field) -> None:
    def fn(y0: torch.Tensor) -> torch.Tensor:
        return odeint(field, y0, torch.tensor([0.0, 0.4, 1.0], dtype=D), solver=RK4(),
                      step_size=0.15, adjoint=Checkpointed())

    assert torch.autograd.gradcheck(fn, (torch.randn(2, 2, dtype=D, requires_grad=True),))


def _grads(field: Field, method: object, solver: object, t: torch.Tensor,
           y0: torch.Tensor) -> list[torch.Tensor]:
    y0 = y0.clone().requires_grad_(True)
    t = t.clone().requires_grad_(True)
    ys = odeint(field, y0, t, solver=solver, rtol=1e-10, atol=1e-10,  # type: ignore[arg-type]
                adjoint=method)  # type: ignore[arg-type]
    loss = (ys**2).sum() + ys[-1, :, 0].sum()
    return list(torch.autograd.grad(loss, [y0, t, *field.parameters()]))


@pytest.mark.parametrize("solver", [Dopri5(), Tsit5()])
@pytest.mark.parametrize(
    "method",
    [Adjoint(rtol=1e-10, atol=1e-10), Adjoint(rtol=1e-10, atol=1e-10, seminorm=True),
     Checkpointed()],
    ids=["adjoint", "adjoint-seminorm", "checkpointed"],
)
def test_matches_backprop(field: Field, solver: object, method: object) -> None:
    y0 = torch.randn(3, 2, dtype=D)
    t = torch.tensor([0.0, 0.5, 0.8, 1.5], dtype=D)
    ref = _grads(field, Backprop(), solver, t, y0)
    got = _grads(field, method, solver, t, y0)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_end_time_gradient_is_the_vector_field() -> None:
    # y' = -y: d y(t1) / d t1 = -y(t1)
    for method in (Backprop(), Adjoint(), Checkpointed()):
        t1 = torch.tensor(0.7, dtype=D, requires_grad=True)
        y0 = torch.tensor([1.0, 2.0], dtype=D)
        t = torch.stack([torch.zeros_like(t1), t1])
        y = odeint(lambda t, y: -y, y0, t, rtol=1e-10, atol=1e-10, adjoint=method)
        (g,) = torch.autograd.grad(y[-1].sum(), t1)
        assert abs(float(g) + 3.0 * float(torch.exp(-t1.detach()))) < 1e-7, method


def test_adjoint_backward_memory_is_independent_of_steps(field: Field) -> None:
    # the adjoint keeps only the outputs, never the per-step graph
    y0 = torch.randn(2, 2, dtype=D, requires_grad=True)
    ys = odeint(field, y0, torch.tensor([0.0, 3.0], dtype=D), solver=RK4(), step_size=0.01,
                adjoint=Adjoint())
    assert ys.grad_fn is not None
    saved = [x for x in ys.grad_fn.saved_tensors if isinstance(x, torch.Tensor)]
    assert sum(x.numel() for x in saved) < 200


def test_seminorm_takes_fewer_backward_evaluations(field: Field) -> None:
    counts = []
    calls = [0]

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return field(t, y)

    for seminorm in (False, True):
        y0 = torch.randn(8, 2, dtype=D, requires_grad=True)
        ys = odeint(f, y0, torch.tensor([0.0, 2.0], dtype=D), rtol=1e-6, atol=1e-6,
                    adjoint=Adjoint(seminorm=seminorm, params=list(field.parameters())))
        calls[0] = 0
        ys[-1].sum().backward()
        counts.append(calls[0])
    assert counts[1] < counts[0], counts


def test_per_sample_grids_adjoint_matches_backprop(field: Field) -> None:
    y0 = torch.randn(3, 2, dtype=D)
    t = torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.1, 0.8], [0.9, 1.2, 1.0]], dtype=D)
    grads = []
    for method in (Backprop(), Adjoint(rtol=1e-10, atol=1e-10), Checkpointed()):
        y = y0.clone().requires_grad_(True)
        ys = odeint(field, y, t, rtol=1e-10, atol=1e-10, adjoint=method)
        grads.append(torch.autograd.grad(ys.square().sum(), [y, *field.parameters()]))
    for other in grads[1:]:
        for a, b in zip(other, grads[0], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
