"""Infinite depth-and-width kernels against closed forms and Monte-Carlo wide, deep nets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.gaussian_process import GaussianProcessRegressor

from infdepth.limits import (
    InfiniteDepthKernel,
    gp_posterior,
    gradient_descent_prediction,
    infinite_kernels,
    input_layer,
    kernel_regression,
    pair_moments,
    simulate_resnet,
    variance_ode,
)
from infdepth.limits.finite import FiniteResNet, empirical_ntk


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_variance_ode_closed_forms() -> None:
    assert variance_ode("linear", 1.3, 2.0) == pytest.approx(2.0 * math.exp(1.3), rel=1e-8)
    assert variance_ode("relu", 1.3, 2.0) == pytest.approx(2.0 * math.exp(0.65), rel=1e-8)


def test_quadrature_matches_erf_closed_form() -> None:
    """Gauss-Hermite path (a plain callable) against E[erf U erf V] = 2/pi asin(2c/sqrt(..))."""
    kaa = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    kbb = torch.tensor([1.0, 0.7, 3.0], dtype=torch.float64)
    kab = torch.tensor([0.3, -0.9, 1.1], dtype=torch.float64)
    quad, _ = pair_moments(torch.erf, kaa, kbb, kab)
    exact = 2 / math.pi * torch.asin(2 * kab / torch.sqrt((1 + 2 * kaa) * (1 + 2 * kbb)))
    torch.testing.assert_close(quad, exact, rtol=0, atol=1e-5)


def test_relu_moments_match_monte_carlo() -> None:
    cov = torch.tensor([[2.0, -0.9], [-0.9, 0.7]], dtype=torch.float64)
    samples = 400_000
    z = torch.randn(samples, 2, dtype=torch.float64, generator=_gen(3))
    uv = z @ torch.linalg.cholesky(cov).T
    e_phi, e_dphi = pair_moments("relu", cov[0, 0], cov[1, 1], cov[0, 1])
    prod = torch.relu(uv[:, 0]) * torch.relu(uv[:, 1])
    both = ((uv[:, 0] > 0) & (uv[:, 1] > 0)).double()
    assert abs(prod.mean() - e_phi) < 5 * prod.std() / math.sqrt(samples)
    assert abs(both.mean() - e_dphi) < 5 * both.std() / math.sqrt(samples)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_nngp_matches_monte_carlo_wide_deep_nets(activation: str) -> None:
    """Depth-then-width Monte Carlo meets the kernel ODE within a few standard errors."""
    g = _gen(0)
    x = torch.randn(3, 5, dtype=torch.float64, generator=g)
    exact = infinite_kernels(x, activation=activation, t1=1.0).nngp
    width, depth, samples = 256, 128, 48
    y = simulate_resnet(input_layer(x, width, samples, generator=g), depth,
                        activation=activation, generator=g).final
    per_net = torch.einsum("sin,sjn->sij", y, y) / width
    mc, se = per_net.mean(0), per_net.std(0) / math.sqrt(samples)
    # statistical error (5 standard errors) + O(1/L) Euler bias of the finite depth
    assert torch.all((mc - exact).abs() < 5 * se + 2.0 / depth * exact.abs().max())
    # ... and it has power: the width-then-depth kernel of another activation is far away
    other = infinite_kernels(x, activation="linear", t1=1.0).nngp
    assert not torch.all((mc - other).abs() < 5 * se + 2.0 / depth * other.abs().max())


def test_ntk_matches_empirical_ntk_of_wide_net() -> None:
    g = _gen(1)
    x = torch.randn(3, 4, dtype=torch.float64, generator=g)
    exact = infinite_kernels(x, activation="relu", t1=1.0).ntk
    errs = []
    for seed in range(3):
        net = FiniteResNet(4, 512, 16, activation="relu", generator=_gen(10 + seed),
                           dtype=torch.float64)
        errs.append(empirical_ntk(net, x))
    mean = torch.stack(errs).mean(0)
    assert ((mean - exact).norm() / exact.norm()).item() < 0.08


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(["relu", "tanh", "linear"]),
       st.floats(0.1, 3.0))
def test_kernels_symmetric_psd(seed: int, activation: str, t1: float) -> None:
    x = torch.randn(6, 3, dtype=torch.float64, generator=_gen(seed))
    kp = infinite_kernels(x, activation=activation, t1=t1, steps=8)
    for k in (kp.nngp, kp.ntk):
        torch.testing.assert_close(k, k.T)
        assert torch.linalg.eigvalsh(k).min() > -1e-6 * k.diagonal().max()


@settings(max_examples=25, deadline=None)
@given(st.floats(0.05, 5), st.floats(0.05, 5), st.floats(-0.99, 0.99))
def test_pair_moments_cauchy_schwarz(a: float, b: float, rho: float) -> None:
    kaa, kbb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    kab = rho * torch.sqrt(kaa * kbb)
    for act in ("relu", "tanh"):
        e_ab, _ = pair_moments(act, kaa, kbb, kab)
        e_aa, _ = pair_moments(act, kaa, kaa, kaa)
        e_bb, _ = pair_moments(act, kbb, kbb, kbb)
        assert abs(float(e_ab)) <= math.sqrt(float(e_aa * e_bb)) * (1 + 1e-9)


def test_regression_helpers_agree() -> None:
    g = _gen(2)
    x = torch.randn(12, 3, dtype=torch.float64, generator=g)
    y = torch.sin(x[:, 0]).unsqueeze(1)
    k = infinite_kernels(x, activation="relu").ntk
    ridge_free = kernel_regression(k[:8, :8], y[:8], k[8:, :8])
    long_gd = gradient_descent_prediction(k[:8, :8], y[:8], k[8:, :8], lr=0.05, steps=200_000)
    torch.testing.assert_close(long_gd, ridge_free, rtol=1e-4, atol=1e-6)
    mean, var = gp_posterior(k[:8, :8], y[:8], k[8:, :8], k.diagonal()[8:], noise=1e-10)
    torch.testing.assert_close(mean, ridge_free, rtol=1e-4, atol=1e-6)
    assert torch.all(var >= 0)
    # interpolation: the posterior variance vanishes at training inputs
    _, var_train = gp_posterior(k[:8, :8], y[:8], k[:8, :8], k.diagonal()[:8], noise=1e-10)
    assert float(var_train.max()) < 1e-6


def test_sklearn_kernel_in_gp() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 3))
    y = np.sin(x[:, 0])
    kern = InfiniteDepthKernel(activation="relu", t1=2.0, kind="nngp")
    np.testing.assert_allclose(kern.diag(x), np.diag(kern(x)), rtol=1e-10)
    gp = GaussianProcessRegressor(kernel=clone(kern), alpha=1e-8).fit(x, y)
    np.testing.assert_allclose(gp.predict(x), y, atol=1e-4)
    k, grad = kern(x, eval_gradient=True)
    assert grad.shape == (20, 20, 0)
    direct = infinite_kernels(x, activation="relu", t1=2.0).nngp.numpy()
    np.testing.assert_allclose(k, direct, rtol=1e-12)
