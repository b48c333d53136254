"""Per-sample steps hold every sample to the tolerance; the shared default norm does not.

The shared-step controller accepts a step when the RMS of the scaled error over the whole
batch is <= 1, so one hard sample among easy ones may err sqrt(batch) times the tolerance
per step; per-sample steps measure each sample on its own, and a shared solve whose norm is
the largest sample's RMS restores the per-sample guarantee (the bench's
``ours_shared_max_norm``, docs/ode.md "Speed"). Problem: one harmonic oscillator
``x'' = -25 x`` (8 periods on [0, 10], exact solution known) among samples at rest.
"""

from __future__ import annotations

import torch

from infdepth.ode import Dopri5, odeint, solve
from infdepth.ode._odeint import solve as solve_with_norm

F64 = torch.float64
TOL = 1e-6
OMEGA = 5.0
T_OUT = torch.linspace(0, 10, 11, dtype=F64)


def oscillators(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x' = v, v' = -w^2 x`` with ``w`` carried as a constant third component."""
    x, v, w = y[:, 0], y[:, 1], y[:, 2]
    return torch.stack([v, -w * w * x, torch.zeros_like(w)], 1)


def one_among_resting(batch: int) -> torch.Tensor:
    """Sample 0 oscillates at ``OMEGA`` from ``x = 1``; the others have ``w = 0`` (at rest)."""
    w = torch.zeros(batch, dtype=F64)
    w[0] = OMEGA
    return torch.stack([torch.ones(batch, dtype=F64), torch.zeros(batch, dtype=F64), w], 1)


def error_over_tol(ys: torch.Tensor) -> float:
    """Sample 0's largest error at the outputs, over ``tol (1 + |y|)``."""
    exact = torch.stack([torch.cos(OMEGA * T_OUT), -OMEGA * torch.sin(OMEGA * T_OUT)], 1)
    return float(((ys[:, 0, :2] - exact).abs() / (TOL + TOL * exact.abs())).max())


def max_sample_mean_square(scaled: torch.Tensor) -> torch.Tensor:
    return scaled.square().mean(-1).max()


def test_per_sample_error_is_the_samples_own_while_the_shared_norm_dilutes_it() -> None:
    y0 = one_among_resting(256)
    with torch.no_grad():
        alone = error_over_tol(solve(oscillators, y0[:1], T_OUT, rtol=TOL, atol=TOL,
                                     dense=False).ys)
        per_sample = error_over_tol(solve(oscillators, y0, T_OUT, rtol=TOL, atol=TOL,
                                          dense=False).ys)
        shared = error_over_tol(odeint(oscillators, y0, T_OUT, rtol=TOL, atol=TOL))
        shared_max = error_over_tol(solve_with_norm(
            oscillators, y0, T_OUT, solver=Dopri5(), rtol=TOL, atol=TOL, step_size=None,
            controller=None, adjoint=None, max_steps=10_000, norm=max_sample_mean_square))
    # the global error of 8 periods at tol 1e-6: 43 x tol, whether alone or among 255 others
    assert alone < 60
    assert abs(per_sample - alone) <= 1e-3 * alone
    # the batch's RMS hides sample 0's error among 255 zeros: 22x larger (968 x tol)
    assert shared > 10 * per_sample
    # the largest sample's RMS as the norm gives the per-sample guarantee back
    assert abs(shared_max - alone) <= 1e-3 * alone
