"""Kinetic-energy and Jacobian-Frobenius regularisers: integrals checked against exact values."""

from __future__ import annotations

import math

import pytest
import torch

from infdepth.errors import InputError
from infdepth.ode import Adjoint, Backprop, Checkpointed, JacobianFrobenius, KineticEnergy, ODEBlock
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


class RoughJacobian(torch.nn.Module):
    """``f = -h`` (a smooth trajectory) whose Jacobian is ``(g(t) - 1) I``, ``g(t) = c sin(w t)``:
    the Hutchinson integrand ``|eps|^2 (g(t) - 1)^2`` is large and oscillates along a smooth ``h``.
    (``h - h.detach()`` is zero and has the identity Jacobian.)"""

    def __init__(self, c: float = 50.0, w: float = 40.0) -> None:
        super().__init__()
        self.c = torch.nn.Parameter(torch.tensor(c, dtype=D))
        self.w = w

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return -h + self.c * torch.sin(self.w * t) * (h - h.detach())


METHODS = [Backprop(), Adjoint(), Checkpointed()]


@pytest.mark.parametrize("method", METHODS, ids=lambda m: type(m).__name__)
def test_integrals_do_not_steer_the_steps(method: object) -> None:
    # the training solve of [h, KE, JF] takes exactly the steps of the solve of h alone
    # (eval mode), however rough the integrand; with control_integrals=True it takes more
    h0 = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.2, -1.0]], dtype=D)
    regs: list[KineticEnergy | JacobianFrobenius] = [KineticEnergy(0.1), JacobianFrobenius(0.1)]
    counts = {}
    for name, control, training in (("plain", False, False), ("off", False, True),
                                    ("on", True, True)):
        block = ODEBlock(RoughJacobian(), t1=1.0, regularisers=regs, control_integrals=control,
                         adjoint=method, rtol=1e-5, atol=1e-7)  # type: ignore[arg-type]
        block.train(training)
        torch.manual_seed(0)
        h1 = block(h0.clone().requires_grad_(True))
        torch.testing.assert_close(h1, h0 * math.exp(-1.0), rtol=1e-5, atol=0)
        counts[name] = block.nfe_forward
    assert counts["off"] == counts["plain"], counts
    assert counts["on"] > 2 * counts["plain"], counts


def test_integrals_accurate_on_the_steps_of_h() -> None:
    # kinetic energy of h' = -a h at a large scale (its integrand |f|^2 ~ 1e6 starts where the
    # integral is 0): on h's steps the integral is as accurate as with every channel under
    # control (2.9e-6 and 2.8e-6 relative at rtol=1e-6: the error of |f|^2 follows that of h),
    # in fewer evaluations (44 against 86)
    a, t1 = 1.7, 0.8
    h0 = 1e3 * torch.tensor([[1.0, 2.0], [0.5, -1.0], [3.0, 0.0]], dtype=D)
    exact = float((a * h0.square().sum(1) * (1 - math.exp(-2 * a * t1)) / 2).mean())
    nfe = {}
    for control in (False, True):
        block = ODEBlock(Linear(-a * torch.eye(2, dtype=D)), t1=t1, regularisers=[KineticEnergy(1.0)],
                         control_integrals=control, rtol=1e-6, atol=1e-8)
        block(h0)
        assert float(block.penalty().detach()) == pytest.approx(exact, rel=1e-5)
        nfe[control] = block.nfe_forward
    assert nfe[False] < nfe[True]
    # the Hutchinson integral of a tanh field, same draw, against a fine solve with every
    # channel under control (rtol=1e-12): a quadrature on h's steps, whose error is no longer
    # bounded by rtol. Measured: 3.7e-5 relative at rtol=1e-6 (3e-7 under control, 1.4x the
    # evaluations), 1.0 % at rtol=1e-3 (the ODE-Net's setting; 0.016 % under control), far
    # below the spread of the one-draw Hutchinson estimate itself
    torch.manual_seed(3)
    w = torch.randn(3, 3, dtype=D)
    h0 = 3 * torch.randn(8, 3, dtype=D)

    def jf(control: bool, rtol: float) -> float:
        block = ODEBlock(Tanh(w), t1=1.0, regularisers=[JacobianFrobenius(1.0)],
                         control_integrals=control, rtol=rtol, atol=rtol * 1e-2)
        torch.manual_seed(4)
        block(h0)
        return float(block.penalty().detach())

    reference = jf(True, 1e-12)
    assert jf(False, 1e-6) == pytest.approx(reference, rel=1e-4)
    assert jf(False, 1e-3) == pytest.approx(reference, rel=2e-2)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: type(m).__name__)
def test_gradients_against_finite_differences(method: object) -> None:
    # d(loss + penalty)/dW with the integrals out of the error norm, every gradient method,
    # against central differences of the forward (same Hutchinson draw each time)
    torch.manual_seed(5)
    w = 0.8 * torch.randn(3, 3, dtype=D)
    h0 = torch.randn(4, 3, dtype=D)
    regs = [KineticEnergy(0.3), JacobianFrobenius(0.2)]

    def loss(weight: torch.Tensor, grad: bool) -> torch.Tensor:
        block = ODEBlock(Tanh(weight), t1=0.7, regularisers=regs, adjoint=method,  # type: ignore[arg-type]
                         rtol=1e-10, atol=1e-12)
        torch.manual_seed(6)
        out = block(h0.clone().requires_grad_(True)).square().sum() + block.penalty()
        if grad:
            (g,) = torch.autograd.grad(out, list(block.func.parameters()))
            return g
        return out.detach()

    g = loss(w, True)
    eps = 1e-6
    fd = torch.zeros_like(w)
    for i in range(3):
        for j in range(3):
            d = torch.zeros_like(w)
            d[i, j] = eps
            fd[i, j] = (loss(w + d, False) - loss(w - d, False)) / (2 * eps)
    torch.testing.assert_close(g, fd, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method", [Adjoint(), Checkpointed()], ids=lambda m: type(m).__name__)
def test_penalty_of_an_input_that_requires_grad(method: object) -> None:
    # the forward of Adjoint and Checkpointed runs without grad: the Hutchinson channel must
    # not come back zero when the block's input requires grad (the output of a stem)
    torch.manual_seed(7)
    w = torch.randn(3, 3, dtype=D)
    h0 = torch.randn(5, 3, dtype=D)
    values = []
    for m in (Backprop(), method):
        block = ODEBlock(Tanh(w), regularisers=[JacobianFrobenius(1.0)], adjoint=m)  # type: ignore[arg-type]
        torch.manual_seed(8)
        block(h0.clone().requires_grad_(True))
        values.append(float(block.penalty().detach()))
    assert values[0] > 0
    assert values[1] == pytest.approx(values[0], rel=1e-6)


def test_bad_regularisers() -> None:
    with pytest.raises(InputError, match="weight"):
        KineticEnergy(float("nan"))
    with pytest.raises(InputError, match="once"):
        ODEBlock(Linear(torch.eye(2)), regularisers=[KineticEnergy(1.0), KineticEnergy(2.0)])
    with pytest.raises(InputError, match="regularisers"):
        ODEBlock(Linear(torch.eye(2)), regularisers=["kinetic"])  # type: ignore[list-item]
    with pytest.raises(InputError, match="control_integrals"):
        ODEBlock(Linear(torch.eye(2)), regularisers=[KineticEnergy(1.0)],
                 control_integrals="yes")  # type: ignore[arg-type]
