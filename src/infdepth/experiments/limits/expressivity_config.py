"""Experiment 6: limited expressive power of doubly infinite ResNets with i.i.d. parameters.

The correlation map ``rho_0 -> rho_t = K_t(a, b) / sqrt(K_t(a, a) K_t(b, b))`` of the kernel
ODE is drawn for growing diffusion time (depth) and several activations and
initialisations; inputs on a circle show every pair becoming correlated (ReLU, tanh with
bias) or the map staying the identity (linear). A Monte-Carlo check with finite wide
networks is included for one time.
"""
# The flags of ``infdepth limits expressivity``: its Config (the only place its defaults are written),
# torch-free so that its ``--help`` imports no torch.  The run: infdepth.experiments.limits.expressivity.

from __future__ import annotations

import argparse
from dataclasses import dataclass
from functools import partial

from infdepth.errors import check_allocatable, check_float, check_int, check_items, reject
from infdepth.experiments._flags import add_config_arguments, add_run_arguments, float_list, option
from infdepth.experiments.limits._bounds import MAX_TIME

MC_INPUTS = 4
"""Inputs of the Monte-Carlo check: one reference and three partners."""


@dataclass(frozen=True)
class Config:
    """Diffusion times, grid of input correlations and the Monte-Carlo check."""

    times: tuple[float, ...] = option((0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
                                      "comma-separated increasing diffusion times (depths) of the map",
                                      type=float_list)
    grid: int = option(41, "points of the rho_0 grid")
    circle_points: int = option(24, "inputs on the unit circle")
    mc_width: int = option(512, "width of the Monte-Carlo check")
    mc_depth: int = option(64, "depth of the Monte-Carlo check")
    mc_samples: int = option(16, "networks in the Monte-Carlo check")
    mc_time: float = option(2.0, "diffusion time of the Monte-Carlo check")
    seed: int = option(0, "random seed")

    def __post_init__(self) -> None:
        check_items("--times", self.times, partial(check_float, low=0.0, high=MAX_TIME))
        if list(self.times) != sorted(self.times):
            raise reject("--times", self.times, f"increasing times in [0, {MAX_TIME:g}]")
        check_int("--grid", self.grid, low=1)
        check_int("--circle-points", self.circle_points, low=1)
        check_int("--mc-width", self.mc_width, low=1)
        check_int("--mc-depth", self.mc_depth, low=1)
        check_int("--mc-samples", self.mc_samples, low=1)
        check_float("--mc-time", self.mc_time, low=0.0, high=MAX_TIME, strict=True)
        check_int("--seed", self.seed, low=0)
        # the kernel states hold a few tensors per grid point / circle point
        check_allocatable("--grid", 16 * self.grid)
        check_allocatable("--circle-points", 16 * self.circle_points)
        # input weights and a few copies of the pre-activations of every network
        n, m = self.mc_width, MC_INPUTS
        per_net = 2 * n + 4 * m * n + (n * n if m >= n else m * n)
        check_allocatable("--mc-samples x --mc-width", self.mc_samples * per_net)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``infdepth limits expressivity`` (from :class:`Config`) and the run flags."""
    add_config_arguments(parser, Config)
    add_run_arguments(parser, "runs/limits-expressivity")
