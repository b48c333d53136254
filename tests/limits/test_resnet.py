"""Finite random ResNets: one layer has the law the diffusion's Euler step says it has."""

from __future__ import annotations

import math

import pytest
import torch

from infdepth.limits import ShrinkingInit, input_layer, simulate_resnet


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("inputs,width", [(1, 3), (2, 3), (3, 2)])
def test_one_layer_increment_covariance_shared_weights(inputs: int, width: int) -> None:
    """Given Y, the increments of the inputs are N(0, phi(Y) phi(Y)^T / n) per coordinate.

    Covers the three sampling paths: one input, QR (inputs < width), explicit weights.
    """
    y0 = torch.tensor([[1.0, -0.5, 2.0], [0.3, 0.8, -1.0], [-0.7, 0.2, 0.4]],
                      dtype=torch.float64)[:inputs, :width].unsqueeze(0)
    samples = 20000
    run = simulate_resnet(y0.expand(samples, -1, -1), 1, activation="tanh", generator=_gen(0))
    inc = (run.final - y0).permute(0, 2, 1).reshape(-1, inputs)
    emp = inc.T @ inc / inc.shape[0]
    p = torch.tanh(y0[0])
    exact = p @ p.T / width
    se = math.sqrt(2.0 / inc.shape[0]) * exact.diagonal().max()
    assert torch.all((emp - exact).abs() < 5 * se)
    assert torch.all((inc.mean(0)).abs() < 5 * exact.diagonal().sqrt() / math.sqrt(inc.shape[0]))


def test_shrinking_init_mean_and_variance() -> None:
    y0 = torch.tensor([0.5, -1.0], dtype=torch.float64)
    init = ShrinkingInit(sigma_b=0.7, sigma_w=1.3, mu_b=0.4, mu_w=-0.6)
    samples = 40000
    run = simulate_resnet(y0, 1, activation="relu", init=init, t1=0.5, samples=samples,
                          generator=_gen(1))
    inc = run.final[:, 0, :] - y0
    phi = torch.relu(y0)
    mean = 0.5 * (0.4 - 0.6 * phi.sum() / 2)
    var = 0.5 * (0.7**2 + 1.3**2 * (phi**2).sum() / 2)
    assert torch.all((inc.mean(0) - mean).abs() < 5 * math.sqrt(var / samples))
    assert torch.all((inc.var(0) - var).abs() < 5 * var * math.sqrt(2 / samples))


def test_input_layer_covariance() -> None:
    x = torch.tensor([[1.0, 0.0, 2.0], [0.5, 1.0, -1.0]], dtype=torch.float64)
    y = input_layer(x, 64, 500, generator=_gen(2))
    emp = torch.einsum("sin,sjn->ij", y, y) / (64 * 500)
    exact = x @ x.T / 3
    assert torch.all((emp - exact).abs() < 5 * math.sqrt(2 / (64 * 500)) * exact.abs().max())


def test_saved_layers_and_dtype_follow_input() -> None:
    y0 = torch.zeros(7, 3, dtype=torch.float32)
    run = simulate_resnet(y0 + 0.1, 10, activation="tanh", save_layers=[0, 5, 10],
                          generator=_gen(3))
    assert run.y.shape == (3, 7, 1, 3) and run.y.dtype == torch.float32
    assert run.layers == (0, 5, 10)
    torch.testing.assert_close(run.times, torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(run.y[0], (y0 + 0.1).unsqueeze(1))


def test_reproducible_with_generator() -> None:
    y0 = torch.ones(4, dtype=torch.float64)
    a = simulate_resnet(y0, 20, samples=5, generator=_gen(4)).final
    b = simulate_resnet(y0, 20, samples=5, generator=_gen(4)).final
    assert torch.equal(a, b)
