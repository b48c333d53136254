"""Kinetic-energy and Jacobian-Frobenius regularisers: integrals checked against exact values."""

from __future__ import annotations

import math

import pytest
import torch

from infdepth.errors import InputError
from infdepth.ode import Adjoint, JacobianFrobenius, KineticEnergy, ODEBlock
from infdepth.train import model_penalty

D = torch.float64


class Linear(torch.nn.Module):
    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(w.clone())

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return h @ self.w.T


class Tanh(Linear):
    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(h @ self.w.T + 0.3)


def test_kinetic_energy_is_the_integral_of_the_squared_speed() -> None:
    # h' = -a h: int_0^T |f|^2 dt = a |h0|^2 (1 - exp(-2 a T)) / 2, averaged over the batch
    a, t1 = 1.7, 0.8
    block = ODEBlock(Linear(-a * torch.eye(2, dtype=D)), t1=t1, regularisers=[KineticEnergy(0.5)],
                     rtol=1e-10, atol=1e-12)
    h0 = torch.tensor([[1.0, 2.0], [0.5, -1.0], [3.0, 0.0]], dtype=D)
    h1 = block(h0)
    torch.testing.assert_close(h1, h0 * math.exp(-a * t1))
    exact = a * h0.square().sum(1) * (1 - math.exp(-2 * a * t1)) / 2
    expected = 0.5 * exact.mean()
    assert float(block.penalty().detach()) == pytest.approx(float(expected), rel=1e-8)
    penalty = model_penalty(torch.nn.Sequential(block))
    assert penalty is not None
    assert float(penalty.detach()) == pytest.approx(float(expected),
                                                                             rel=1e-8)


def test_hutchinson_estimate_against_the_exact_frobenius_norm() -> None:
    torch.manual_seed(0)
    w = torch.randn(3, 3, dtype=D)
    t1 = 0.6
    # linear: |J|_F^2 = |W|_F^2 at every time; 4000 copies of one sample average eps
    block = ODEBlock(Linear(-w), t1=t1, regularisers=[JacobianFrobenius(1.0)], rtol=1e-8,
                     atol=1e-10)
    block(torch.zeros(4000, 3, dtype=D) + torch.tensor([0.5, -0.2, 0.1], dtype=D))
    exact = t1 * float(w.square().sum())
    assert float(block.penalty().detach()) == pytest.approx(exact, rel=0.05)
    # nonlinear: the exact integral by quadrature of |J(h(t))|_F^2 along the trajectory
    field = Tanh(w)
    block = ODEBlock(field, t1=t1, regularisers=[JacobianFrobenius(1.0)], rtol=1e-8, atol=1e-10)
    h0 = torch.tensor([0.5, -0.2, 0.1], dtype=D)
    block(torch.zeros(4000, 3, dtype=D) + h0)
    from infdepth.ode import odeint

    times = torch.linspace(0, t1, 201, dtype=D)
    with torch.no_grad():
        hs = odeint(field, h0, times, rtol=1e-10, atol=1e-12)
    norms = torch.stack([torch.func.jacrev(lambda h: field(times[0], h))(h).square().sum()
                         for h in hs])
    exact = float(torch.trapezoid(norms, times).detach())
    assert float(block.penalty().detach()) == pytest.approx(exact, rel=0.05)


def test_penalty_is_differentiable_and_off_in_eval_mode() -> None:
    torch.manual_seed(1)
    w = 0.5 * torch.randn(3, 3, dtype=D)
    h0 = torch.randn(5, 3, dtype=D)
    grads = []
    for adjoint in (None, Adjoint()):
        block = ODEBlock(Tanh(w), t1=1.0, regularisers=[KineticEnergy(0.1), JacobianFrobenius(0.2)],
                         rtol=1e-9, atol=1e-11, adjoint=adjoint)
        torch.manual_seed(2)  # the same Hutchinson draw for both gradient methods
        loss = block(h0).square().sum() + block.penalty()
        (g,) = torch.autograd.grad(loss, [block.func.w])
        grads.append(g)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)
    block.eval()
    block(h0)
    assert float(block.penalty().detach()) == 0.0


def test_bad_regularisers() -> None:
    with pytest.raises(InputError, match="weight"):
        KineticEnergy(float("nan"))
    with pytest.raises(InputError, match="once"):
        ODEBlock(Linear(torch.eye(2)), regularisers=[KineticEnergy(1.0), KineticEnergy(2.0)])
    with pytest.raises(InputError, match="regularisers"):
        ODEBlock(Linear(torch.eye(2)), regularisers=["kinetic"])  # type: ignore[list-item]
