"""Experiment 3: the width 3 -> 4 change of regime of ReLU post-activation norms.

The ReLU diffusion ``dX = n^{-1/2} ||relu(X)|| dB`` is run from ``X_0 ~ N(0, I_n)`` for
widths 1..8 over long times (log-scale Euler-Maruyama). With ``k_t`` active coordinates,
``d log ||relu(X_t)||^2 = (k_t - 2)/n dt + 2 n^{-1/2} dbeta_t`` (exact). Measured, with 95%
confidence intervals: the initial drift of ``E[log ||relu(X_t)||^2 | relu(X_0) != 0]``
(negative for n <= 3, positive for n >= 4), its rise and peak time, and the long-time
behaviour (one active coordinate, slope -1/n, the norm going to 0 for every width).
"""
# The flags of ``infdepth limits width-regime``: its Config (the only place its defaults are written),
# torch-free so that its ``--help`` imports no torch.  The run: infdepth.experiments.limits.width_regime.

from __future__ import annotations

import argparse
from dataclasses import dataclass

from infdepth.errors import check_allocatable, check_float, check_int, check_items
from infdepth.experiments._flags import add_config_arguments, add_run_arguments, int_list, option
from infdepth.experiments.limits._bounds import positive_int
from infdepth.limits._names import NOISE_CHUNK

MAX_STEPS = 10**9
"""Most Euler-Maruyama steps (``--t-max / --dt``) a run may take."""


@dataclass(frozen=True)
class Config:
    """Widths, horizon, step and sample size."""

    widths: tuple[int, ...] = option(tuple(range(1, 9)), "comma-separated widths", type=int_list)
    t_max: float = option(400.0, "diffusion time horizon")
    dt: float = option(0.05, "Euler-Maruyama step")
    samples: int = option(2000, "paths per width")
    saves: int = option(200, "saved time points (log-spaced)")
    seed: int = option(0, "random seed")

    def __post_init__(self) -> None:
        check_items("--widths", self.widths, positive_int)
        check_float("--t-max", self.t_max, low=0.0, strict=True)
        check_float("--dt", self.dt, low=0.0, high=self.t_max, strict=True)  # one step at least
        check_float("--t-max / --dt", self.t_max / self.dt, high=MAX_STEPS)
        check_int("--samples", self.samples, low=2)
        check_int("--saves", self.saves, low=1)
        check_int("--seed", self.seed, low=0)
        # the saved paths (at most --saves + 4 times), the noise chunk and the state
        check_allocatable("--samples x --widths x --saves", self.samples * max(self.widths)
                          * (self.saves + NOISE_CHUNK + 8))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``infdepth limits width-regime`` (from :class:`Config`) and the run flags."""
    add_config_arguments(parser, Config)
    add_run_arguments(parser, "runs/limits-width-regime")
