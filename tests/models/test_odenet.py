"""The ODE-Net, its ResNet baseline, the spiral models and the memory probes."""

from __future__ import annotations

import pytest
import torch

from infdepth.models.odenet import (
    GRUBaseline,
    NeuralODE,
    memory_probe,
    ode_block,
    odenet,
    resnet,
)
from infdepth.ode import ODEBlock
from infdepth.train import model_penalty


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("size", [8, 28])
def test_classifiers_map_images_to_logits(size: int) -> None:
    torch.manual_seed(0)
    x = torch.rand(3, 1, size, size)
    for model in (resnet(4, 2, size), odenet(4, size, rtol=1e-2, atol=1e-2)):
        assert model(x).shape == (3, 10)
    assert odenet(4, size, rtol=1e-2, atol=1e-2, classes=7)(x).shape == (3, 7)


def test_the_ode_block_costs_only_its_time_channels_over_one_residual_block() -> None:
    c = 32
    one, six, ode = resnet(c, 1, 8), resnet(c, 6, 8), odenet(c, 8, rtol=1e-3, atol=1e-3)
    assert _count(ode) - _count(one) == 2 * 9 * c  # each of the two convs sees t: c more 3x3 filters
    assert _count(six) - _count(one) == 5 * (_count(one) - _count(resnet(c, 0, 8)))
    assert ode_block(one) is None and isinstance(ode_block(ode), ODEBlock)


def test_a_learned_end_time_gets_a_gradient_and_its_penalty_reaches_fit() -> None:
    torch.manual_seed(0)
    fixed = odenet(4, 8, rtol=1e-3, atol=1e-3)
    block = ode_block(fixed)
    assert block is not None and not isinstance(block.t1, torch.nn.Parameter)
    model = odenet(4, 8, rtol=1e-3, atol=1e-3, learn_t1=True, t1_l2=0.3, t1=1.5)
    block = ode_block(model)
    assert block is not None and isinstance(block.t1, torch.nn.Parameter)
    penalty = model_penalty(model)
    assert penalty is not None and float(penalty.detach()) == pytest.approx(0.3 * 1.5**2)
    model(torch.rand(2, 1, 8, 8)).square().sum().backward()
    assert block.t1.grad is not None and float(block.t1.grad) != 0.0


def test_fixed_steps_make_each_sample_independent_of_the_rest_of_its_batch() -> None:
    """What lets N processes on slices of a batch equal one process on all of it."""
    torch.manual_seed(0)
    x = torch.rand(6, 1, 8, 8)
    fixed = odenet(4, 8, rtol=1e-3, atol=1e-3, step_size=0.25)
    torch.testing.assert_close(fixed(x[:3]), fixed(x)[:3], rtol=1e-5, atol=1e-6)
    block = ode_block(fixed)
    assert block is not None
    block.reset_nfe()
    fixed(x)
    first = block.nfe_forward
    fixed(x * 100)
    assert block.nfe_forward == 2 * first  # the step count does not depend on the data


def test_the_sequence_models_read_batch_first_observations() -> None:
    torch.manual_seed(0)
    t = torch.sort(torch.rand(5, 4), 0).values
    t[0] = 0
    y = torch.randn(5, 4, 2)
    obs = torch.cat([t.T.unsqueeze(-1), y.transpose(0, 1)], -1)  # (B, T, 3)
    ode = NeuralODE(8, rtol=1e-6, atol=1e-8)
    out = ode(obs)
    assert out.shape == (4, 4, 2) and ode.nfe > 0
    torch.testing.assert_close(out, ode.predict(y[0], t)[1:].transpose(0, 1))
    gru = GRUBaseline(8)
    torch.testing.assert_close(gru(obs), gru.teacher_forced(t, y).transpose(0, 1))
    assert gru.extrapolate(t, y, t[-1] + torch.rand(3, 4).sort(0).values).shape == (3, 4, 2)


def test_memory_probes() -> None:
    x = torch.randn(2, 6)
    for kind in ("resnet", "ode-backprop", "ode-adjoint"):
        assert memory_probe(kind, 3, width=5, inputs=6, classes=4)(x).shape == (2, 4)
    assert _count(memory_probe("resnet", 3, width=5, inputs=6, classes=4)) > _count(
        memory_probe("ode-adjoint", 3, width=5, inputs=6, classes=4))
    with pytest.raises(ValueError, match="kind"):
        memory_probe("vgg", 3, width=5, inputs=6, classes=4)
