"""Closed-form laws against Monte-Carlo simulations of finite ResNets and of the diffusion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from infdepth.errors import InputError
from infdepth.limits import (
    EulerMaruyama,
    LogScaleEuler,
    ResNetSDE,
    expected_active_given_alive,
    linear_norm_law,
    relu_log_post_norm_drift,
    relu_width1_law,
    simulate,
    simulate_resnet,
)

SAMPLES = 4000
# Kolmogorov critical value at level 0.001, plus room for the O(1/L) discretisation bias.
KS_TOL = 1.95 / math.sqrt(SAMPLES) + 0.01


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("width", [1, 3])
def test_linear_norm_law_matches_finite_resnet(width: int) -> None:
    y0 = torch.ones(width, dtype=torch.float64)
    run = simulate_resnet(y0, 200, activation="linear", t1=1.0, samples=SAMPLES,
                          generator=_gen(1))
    norms = run.final.squeeze(1).norm(dim=-1).numpy()
    law = linear_norm_law(width, 1.0, x0_norm=math.sqrt(width))
    assert stats.kstest(norms, law.cdf).statistic < KS_TOL


def test_linear_norm_law_matches_diffusion_long_time() -> None:
    sde = ResNetSDE.create(2, "linear")
    paths = simulate(sde, torch.tensor([3.0, 4.0], dtype=torch.float64), 4.0, 400,
                     samples=SAMPLES, generator=_gen(2), solver=LogScaleEuler())
    law = linear_norm_law(2, 4.0, x0_norm=5.0)
    log_norms = paths.log_norm("linear")[-1].numpy()
    assert stats.kstest(np.exp(log_norms), law.cdf).statistic < KS_TOL


def test_relu_width1_law_matches_resnet_and_diffusion() -> None:
    law = relu_width1_law(1.5, x0=2.0)
    y0 = torch.tensor([2.0], dtype=torch.float64)
    net = simulate_resnet(y0, 300, activation="relu", t1=1.5, samples=SAMPLES, generator=_gen(3))
    assert stats.kstest(net.final.reshape(-1).numpy(), law.cdf).statistic < KS_TOL
    sde = ResNetSDE.create(1, "relu")
    em = simulate(sde, y0, 1.5, 300, samples=SAMPLES, generator=_gen(4))
    assert stats.kstest(em.values()[-1].reshape(-1).numpy(), law.cdf).statistic < KS_TOL


def test_wrong_law_is_rejected() -> None:
    """The KS check has power: a law with the wrong drift is rejected."""
    y0 = torch.tensor([1.0], dtype=torch.float64)
    net = simulate_resnet(y0, 300, activation="relu", t1=1.0, samples=SAMPLES, generator=_gen(5))
    wrong = stats.lognorm(s=1.0, scale=1.0)  # forgets the -t/2 drift
    assert stats.kstest(net.final.reshape(-1).numpy(), wrong.cdf).statistic > KS_TOL


def test_relu_negative_start_is_frozen_and_rejected_by_law() -> None:
    y0 = torch.tensor([-0.5], dtype=torch.float64)
    net = simulate_resnet(y0, 50, activation="relu", samples=10, generator=_gen(6))
    assert torch.all(net.final == -0.5)
    with pytest.raises(InputError, match="x0"):
        relu_width1_law(1.0, x0=-0.5)


@pytest.mark.parametrize("active", [1, 2, 4])
def test_relu_log_post_norm_drift(active: int) -> None:
    """d log||phi||^2 = (k-2)/n dt + 2 n^{-1/2} dbeta while k coordinates stay active."""
    n, t, samples = 4, 0.2, 20000
    y0 = torch.full((n,), -30.0, dtype=torch.float64)
    y0[:active] = 1.0
    paths = simulate(ResNetSDE.create(n, "relu"), y0, t, 200, samples=samples, generator=_gen(7),
                     save_at=[0, 200])
    log_s = 2 * paths.log_norm("relu")
    incr = (log_s[1] - log_s[0]).numpy()
    sd = math.sqrt(4 * t / n / samples)
    assert abs(incr.mean() / t - relu_log_post_norm_drift(n, active)) < 4.5 * sd / t
    assert abs(incr.var() - 4 * t / n) < 0.1 * 4 * t / n


def test_expected_active_given_alive_sign_change() -> None:
    drifts = [expected_active_given_alive(n) - 2 for n in range(1, 9)]
    assert all(d < 0 for d in drifts[:3]) and all(d > 0 for d in drifts[3:])
    rng = np.random.default_rng(0)
    k = (rng.standard_normal((200000, 5)) > 0).sum(1)
    alive = k[k > 0]
    assert abs(alive.mean() - expected_active_given_alive(5)) < 5 * alive.std() / math.sqrt(alive.size)


def test_log_scale_euler_is_euler_pathwise() -> None:
    sde = ResNetSDE.create(3, "relu")
    y0 = torch.tensor([0.5, -0.2, 1.0], dtype=torch.float64)
    a = simulate(sde, y0, 2.0, 100, samples=64, generator=_gen(8), solver=EulerMaruyama())
    b = simulate(sde, y0, 2.0, 100, samples=64, generator=_gen(8), solver=LogScaleEuler())
    torch.testing.assert_close(a.values(), b.values(), rtol=1e-9, atol=1e-12)


def test_richardson_removes_first_order_weak_bias() -> None:
    """Linear width 3, coarse steps: E log||X_T|| and E||X_T||^2 against the closed forms."""
    from infdepth.limits import richardson_expectation

    n, t, steps, samples = 3, 2.0, 10, 100_000
    sde = ResNetSDE.create(n, "linear")
    y0 = torch.full((n,), 1 / math.sqrt(n), dtype=torch.float64)
    exact_log = (0.5 - 1 / n) * t
    em = simulate(sde, y0, t, steps, samples=samples, generator=_gen(11)).values()[-1]
    em_log = em.norm(dim=-1).log()
    em_bias = abs(float(em_log.mean()) - exact_log)
    est = richardson_expectation(sde, lambda x: x.norm(dim=-1).log(), y0, t, steps,
                                 samples=samples, generator=_gen(12))
    assert abs(est.value - exact_log) < 4 * est.standard_error + 1e-3
    assert em_bias > 4 * float(em_log.std()) / math.sqrt(samples)  # plain EM is biased here
    sq = richardson_expectation(sde, lambda x: (x * x).sum(-1), y0, t, steps, samples=samples,
                                generator=_gen(13))
    # E||X||^2 grows by exactly (1 + h) per Euler step: (1 + h)^N = 6.19 instead of e^2 = 7.39;
    # the extrapolated scheme has mean 2 (1 + h/2)^(2N) - (1 + h)^N = 7.26, O(h^2) from e^2
    h = t / steps
    assert abs(sq.value - (2 * (1 + h / 2) ** (2 * steps) - (1 + h) ** steps)) \
        < 4 * sq.standard_error
    assert abs(sq.value - math.exp(t)) < 0.25 * abs((1 + h) ** steps - math.exp(t))
