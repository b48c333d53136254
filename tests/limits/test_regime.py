"""Long-time behaviour of the ReLU diffusion (docs/limits.md, 3.5-3.6)."""

from __future__ import annotations

import math

import numpy as np
import torch

from infdepth.experiments.limits.width_regime import euler_one_active_slope
from infdepth.limits import LogScaleEuler, ResNetSDE, expected_active_given_alive, simulate


def test_one_active_coordinate_and_slope_at_long_times() -> None:
    """Width 3: eventually one active coordinate; log-norm slope that of the scheme (~ -1/n)."""
    n, t_max, dt, samples = 3, 60.0, 0.05, 400
    steps = round(t_max / dt)
    gen = torch.Generator().manual_seed(0)
    y0 = torch.randn(samples, n, dtype=torch.float64, generator=gen)
    y0 = y0[(y0 > 0).any(1)]
    paths = simulate(ResNetSDE.create(n, "relu"), y0, t_max, steps, generator=gen,
                     solver=LogScaleEuler(), save_at=[steps // 2, steps])
    k = (paths.y > 0).sum(-1).numpy()
    assert (k[-1] == 1).mean() > 0.95
    ok = (k == 1).all(0)
    log_s = 2 * paths.log_norm("relu").numpy()[:, ok]
    slope = (log_s[1] - log_s[0]) / (t_max / 2)
    se = slope.std(ddof=1) / math.sqrt(slope.size)
    assert abs(slope.mean() - euler_one_active_slope(n, dt)) < 5 * se
    assert euler_one_active_slope(n, dt) < -1 / n < 0


def test_initial_drift_sign_matches_simulation_for_widths_3_and_4() -> None:
    """E[(k_0 - 2)/n | k_0 >= 1] from the simulator's own starting points: - for 3, + for 4."""
    gen = torch.Generator().manual_seed(1)
    for n, sign in ((3, -1), (4, 1)):
        y0 = torch.randn(200_000, n, dtype=torch.float64, generator=gen)
        k = (y0 > 0).sum(1).numpy()
        k = k[k >= 1]
        drift = (k - 2) / n
        se = drift.std() / math.sqrt(drift.size)
        assert np.sign(drift.mean()) == sign and abs(drift.mean()) > 5 * se
        assert abs(drift.mean() - (expected_active_given_alive(n) - 2) / n) < 5 * se
