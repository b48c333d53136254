"""Gaussian moments of saturating activations at large variance, against independent
references: Williams' closed forms for erf, scipy's adaptive quadrature for tanh; and the
kernels built on them symmetric, with a consistent diagonal, for every activation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate

from infdepth.limits import InfiniteDepthKernel, infinite_kernels, pair_moments

D = torch.float64
SQRT_2PI = math.sqrt(2 * math.pi)


def _normal_expectation(g, mean: float, sd: float, width: float = 1.0) -> float:  # type: ignore[no-untyped-def]
    """``E[g(mean + sd Z)]`` by adaptive quadrature, with breakpoints where ``g``'s argument
    is 0 and at multiples of ``width`` (the scale of ``g``'s transition there) around it."""
    if sd == 0:
        return float(g(mean))
    zero, step = -mean / sd, width / sd
    points = sorted(p for p in {0.0, zero} | {zero + k * step for k in (-16, -4, -1, 1, 4, 16)}
                    if -12 < p < 12)
    value, _ = integrate.quad(lambda z: g(mean + sd * z) * math.exp(-z * z / 2) / SQRT_2PI,
                              -12, 12, points=points, limit=800, epsabs=1e-13, epsrel=1e-11)
    return float(value)


def scipy_moment(g, kaa: float, kbb: float, kab: float) -> float:  # type: ignore[no-untyped-def]
    """``E[g(U) g(V)]``: outer adaptive quadrature over ``U``, inner over ``V | U``."""
    sa, sb = math.sqrt(kaa), math.sqrt(kbb)
    rho = max(-1.0, min(1.0, kab / (sa * sb)))
    cond_sd = sb * math.sqrt(max(0.0, 1 - rho * rho))

    def outer(u: float) -> float:
        return float(g(u)) * _normal_expectation(g, rho * sb / sa * u, cond_sd)

    return _normal_expectation(outer, 0.0, sa)


def _tanh_grad(x: float) -> float:
    return 1.0 - math.tanh(x) ** 2


def _williams(kaa: float, kbb: float, kab: float) -> tuple[float, float]:
    """Closed forms for erf: E[erf U erf V] and E[erf' U erf' V]."""
    e = 2 / math.pi * math.asin(2 * kab / math.sqrt((1 + 2 * kaa) * (1 + 2 * kbb)))
    e_d = 4 / math.pi / math.sqrt((1 + 2 * kaa) * (1 + 2 * kbb) - 4 * kab * kab)
    return e, e_d


def _moments(act: object, kaa: float, kbb: float, kab: float) -> tuple[float, float]:
    e, e_d = pair_moments(act, torch.tensor(kaa, dtype=D), torch.tensor(kbb, dtype=D),  # type: ignore[arg-type]
                          torch.tensor(kab, dtype=D))
    return float(e), float(e_d)


def _close(got: float, want: float, scale: float, rel: float = 1e-6) -> bool:
    """Relative error below ``rel``, measured against ``want`` (or the moment's natural
    scale ``sqrt(E[g(U)^2] E[g(V)^2])`` where ``want`` is near 0 by cancellation)."""
    return abs(got - want) <= rel * max(abs(want), 1e-3 * scale)


# the cases of issue 14 (K ~ 4 and ~ 30 nearly perfectly correlated, erf at 9), and more
ISSUE_CASES = [(4.0, 4.0, 3.98), (30.0, 30.0, 29.9), (9.0, 9.0, 8.99), (100.0, 100.0, 99.5),
               (100.0, 100.0, -60.0), (100.0, 2.0, 10.0), (0.5, 60.0, 1.0), (25.0, 25.0, 0.0)]


@pytest.mark.parametrize(("kaa", "kbb", "kab"), ISSUE_CASES)
def test_tanh_moments_match_scipy(kaa: float, kbb: float, kab: float) -> None:
    e, e_d = _moments("tanh", kaa, kbb, kab)
    want = scipy_moment(math.tanh, kaa, kbb, kab)
    want_d = scipy_moment(_tanh_grad, kaa, kbb, kab)
    scale = math.sqrt(_moments("tanh", kaa, kaa, kaa)[0] * _moments("tanh", kbb, kbb, kbb)[0])
    scale_d = math.sqrt(_moments("tanh", kaa, kaa, kaa)[1] * _moments("tanh", kbb, kbb, kbb)[1])
    assert _close(e, want, scale), (e, want)
    assert _close(e_d, want_d, scale_d), (e_d, want_d)


@pytest.mark.parametrize(("kaa", "kbb", "kab"), ISSUE_CASES)
def test_erf_moments_match_scipy(kaa: float, kbb: float, kab: float) -> None:
    """The callable path (derivative by autograd) against the same scipy reference."""
    e, e_d = _moments(torch.erf, kaa, kbb, kab)
    assert _close(e, scipy_moment(math.erf, kaa, kbb, kab), 1.0)
    want_d = scipy_moment(lambda x: 2 / math.sqrt(math.pi) * math.exp(-x * x), kaa, kbb, kab)
    assert _close(e_d, want_d, _williams(kaa, kaa, kaa)[1] ** 0.5 * _williams(kbb, kbb, kbb)[1]
                  ** 0.5)


@settings(max_examples=60, deadline=None)
@given(st.floats(0.01, 100.0), st.floats(0.01, 100.0), st.floats(-1.0, 1.0))
def test_erf_moments_match_williams_closed_form(kaa: float, kbb: float, rho: float) -> None:
    kab = rho * math.sqrt(kaa * kbb)
    e, e_d = _moments(torch.erf, kaa, kbb, kab)
    want, want_d = _williams(kaa, kbb, kab)
    scale = math.sqrt(_williams(kaa, kaa, kaa)[0] * _williams(kbb, kbb, kbb)[0])
    scale_d = math.sqrt(_williams(kaa, kaa, kaa)[1] * _williams(kbb, kbb, kbb)[1])
    assert _close(e, want, scale), (e, want)
    if abs(rho) < 1 - 1e-9:  # E[erf' erf'] is finite only off the degenerate limit
        assert _close(e_d, want_d, scale_d), (e_d, want_d)


def _sigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(x)


ACTIVATIONS = ["linear", "relu", "tanh", torch.erf, _sigmoid, torch.nn.functional.gelu]
IDS = ["linear", "relu", "tanh", "erf", "sigmoid", "gelu"]


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=IDS)
@pytest.mark.parametrize("sigma_b", [0.0, 1.0])
def test_kernels_are_symmetric_for_every_activation(activation: object, sigma_b: float) -> None:
    g = torch.Generator().manual_seed(4)
    x = 3.0 * torch.randn(3, 3, dtype=D, generator=g)  # variances ~10
    y = 3.0 * torch.randn(2, 3, dtype=D, generator=g)
    kw = {"activation": activation, "t1": 2.0, "sigma_b": sigma_b, "steps": 2}
    xy = infinite_kernels(x, y, **kw)  # type: ignore[arg-type]
    yx = infinite_kernels(y, x, **kw)  # type: ignore[arg-type]
    for a, b in ((xy.nngp, yx.nngp), (xy.ntk, yx.ntk)):
        torch.testing.assert_close(a, b.T, rtol=1e-13, atol=0)
    # the blocks of K(X u Y) are K(X, Y) (to the quadrature's accuracy: the node count
    # follows the largest variance of a call)
    both = infinite_kernels(torch.cat([x, y]), **kw)  # type: ignore[arg-type]
    torch.testing.assert_close(both.ntk[:3, 3:], xy.ntk, rtol=1e-7, atol=0)


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=IDS)
def test_kernel_diagonal_is_the_diagonal_of_the_kernel(activation: object) -> None:
    rng = np.random.default_rng(5)
    x = 3.0 * rng.standard_normal((4, 3))
    for kind in ("nngp", "ntk"):
        kern = InfiniteDepthKernel(activation=activation, t1=2.0, kind=kind,  # type: ignore[arg-type]
                                   sigma_b=0.5, steps=3)
        np.testing.assert_allclose(kern.diag(x), np.diag(kern(x)), rtol=1e-12)
