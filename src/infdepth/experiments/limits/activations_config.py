"""Experiment 2: the depth limit depends on the activation; the width limit does not look so.

For a fixed small width, ``Y_0 = W_in x ~ N(0, q0 I)`` is run through the diffusion of each
activation (Euler-Maruyama, the law of a very deep ResNet); the histogram of one
coordinate at ``t1`` is set against the Gaussian ``N(0, q_t1)`` of the infinite-width
limit (``dq/dt = E[phi(sqrt(q) Z)^2]``).
"""
# The flags of ``infdepth limits activations``: its Config (the only place its defaults are written),
# torch-free so that its ``--help`` imports no torch.  The run: infdepth.experiments.limits.activations.

from __future__ import annotations

import argparse
from dataclasses import dataclass

from infdepth.errors import check_allocatable, check_float, check_int, check_items
from infdepth.experiments._flags import add_config_arguments, add_run_arguments, option, str_list
from infdepth.experiments.limits._bounds import ACTIVATIONS_HELP, MAX_TIME, known_activation
from infdepth.limits._names import NOISE_CHUNK

MAX_VARIANCE = 1e6
"""Largest ``--q0``: squared norms of the coordinates must stay far from overflow."""


@dataclass(frozen=True)
class Config:
    """Width, time, sample size and the activations compared."""

    width: int = option(2, "width n of the network")
    t1: float = option(2.0, "diffusion time (depth as time)")
    q0: float = option(1.0, "variance of the coordinates of Y_0")
    samples: int = option(20_000, "samples per activation")
    steps: int = option(1000, "Euler-Maruyama steps")
    activations: tuple[str, ...] = option(("linear", "relu", "tanh"),
                                          f"comma-separated activations ({ACTIVATIONS_HELP})",
                                          type=str_list)
    seed: int = option(0, "random seed")

    def __post_init__(self) -> None:
        check_int("--width", self.width, low=1)
        check_float("--t1", self.t1, low=0.0, high=MAX_TIME, strict=True)
        check_float("--q0", self.q0, low=0.0, high=MAX_VARIANCE, strict=True)
        check_int("--samples", self.samples, low=1)
        check_int("--steps", self.steps, low=1)
        check_items("--activations", self.activations, known_activation)
        check_int("--seed", self.seed, low=0)
        # the state, the noise drawn a chunk of steps at a time, and the saved paths
        check_allocatable("--samples x --width", self.samples * self.width * (NOISE_CHUNK + 4))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``infdepth limits activations`` (from :class:`Config`) and the run flags."""
    add_config_arguments(parser, Config)
    add_run_arguments(parser, "runs/limits-activations")
