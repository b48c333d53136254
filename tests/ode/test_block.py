"""ODEBlock: NFE counters, learned end time, penalty."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from infdepth.errors import InputError
from infdepth.ode import Adjoint, Backprop, Checkpointed, Euler, ODEBlock

D = torch.float64


class Field(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3).double()

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.tanh(self.lin(h))
        return out


@pytest.fixture
def h0() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(4, 3, dtype=D)


def test_counts_forward_and_backward_evaluations(h0: torch.Tensor) -> None:
    torch.manual_seed(0)
    for method, backward_evals in ((Backprop(), False), (Adjoint(), True),
                                   (Checkpointed(), True)):
        block = ODEBlock(Field(), t1=1.0, adjoint=method, rtol=1e-5, atol=1e-5)
        block(h0).sum().backward()
        assert block.nfe_forward >= 8  # first evaluation, initial step, one Dopri5 step
        assert (block.nfe_backward > 0) == backward_evals, method
        block.reset_nfe()
        assert block.nfe_forward == block.nfe_backward == 0


def test_euler_block_evaluations_equal_steps(h0: torch.Tensor) -> None:
    block = ODEBlock(Field(), t1=1.0, solver=Euler(), step_size=0.1)
    block(h0)
    assert block.nfe_forward == 10


def test_learned_end_time_gradient_matches_finite_difference(h0: torch.Tensor) -> None:
    torch.manual_seed(0)
    field = Field()
    for method in (Backprop(), Adjoint()):
        block = ODEBlock(field, t1=0.8, learn_t1=True, t1_l2=0.1, adjoint=method,
                         rtol=1e-10, atol=1e-10).double()
        with torch.no_grad():
            block.t1.fill_(0.8)  # exactly, not 0.8 rounded to float32
        loss = block(h0).square().sum() + block.penalty()
        (g,) = torch.autograd.grad(loss, [block.t1])

        def value(t1: float) -> float:
            other = ODEBlock(field, t1=1.0, rtol=1e-10, atol=1e-10).double()
            other.t1.fill_(t1)
            with torch.no_grad():
                return float(other(h0).square().sum()) + 0.1 * t1**2

        eps = 1e-5
        fd = (value(0.8 + eps) - value(0.8 - eps)) / (2 * eps)
        assert abs(float(g) - fd) < 1e-6, (method, float(g), fd)


def test_penalty_is_l2_on_t1() -> None:
    block = ODEBlock(Field(), t1=2.0, learn_t1=True, t1_l2=0.25)
    assert float(block.penalty().detach()) == pytest.approx(0.25 * 4.0)
    block.penalty().backward()
    assert block.t1.grad is not None
    assert float(block.t1.grad) == pytest.approx(2 * 0.25 * 2.0)
    fixed = ODEBlock(Field(), t1=2.0)
    assert not any(p is fixed.t1 for p in fixed.parameters())


def test_training_moves_t1_towards_a_target_depth(h0: torch.Tensor) -> None:
    # h' = -h: h(t1) = exp(-t1) h0; a target at depth 1.5 pulls t1 from 0.5 towards 1.5
    class Decay(nn.Module):
        def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
            return -h

    block = ODEBlock(Decay(), t1=0.5, learn_t1=True, rtol=1e-6, atol=1e-6)
    target = torch.exp(torch.tensor(-1.5, dtype=D)) * h0
    opt = torch.optim.SGD(block.parameters(), lr=0.5)
    for _ in range(60):
        opt.zero_grad()
        loss = (block(h0) - target).square().mean() * 10
        loss.backward()
        opt.step()
    assert abs(float(block.t1.detach()) - 1.5) < 0.05


def test_bad_block_arguments() -> None:
    with pytest.raises(InputError, match="t1"):
        ODEBlock(Field(), t1=-1.0)
    with pytest.raises(InputError, match="t1_l2"):
        ODEBlock(Field(), t1_l2=-1.0)


def test_float64_field_integrates_to_the_float64_end_time(h0: torch.Tensor) -> None:
    # 0.1 is not a float32 number: a float32 t1 would integrate to 0.10000000149
    for learn in (False, True):
        block = ODEBlock(Field(), t1=0.1, learn_t1=learn, solver=Euler(), step_size=0.1)
        assert block.t1.dtype == torch.float64
        assert float(block.t1.detach()) == 0.1
        h1 = block(h0)
        torch.testing.assert_close(h1, h0 + 0.1 * torch.tanh(block.func.lin(h0)), rtol=0,
                                   atol=1e-15)
    # a field without parameters: the default dtype; .double() converts it with the block
    plain = ODEBlock(nn.Identity(), t1=0.1)
    assert plain.t1.dtype == torch.get_default_dtype()
    assert plain.double().t1.dtype == torch.float64


def test_backward_evaluations_are_counted_per_block_not_globally(h0: torch.Tensor) -> None:
    # an inner block (backprop) inside the field of an outer block (adjoint): the inner
    # block's solves during the outer adjoint pass are its forward solves, differentiated by
    # autograd; it never solves backwards, so its backward counter must stay at zero
    torch.manual_seed(0)
    inner = ODEBlock(Field(), t1=0.5, solver=Euler(), step_size=0.25)

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.inner(h) - h
            return out

    outer = ODEBlock(Outer(), t1=1.0, adjoint=Adjoint(), rtol=1e-5, atol=1e-5)
    outer(h0).sum().backward()
    assert outer.nfe_forward > 0 and outer.nfe_backward > 0
    assert inner.nfe_backward == 0
    assert inner.nfe_forward == 2 * (outer.nfe_forward + outer.nfe_backward)
