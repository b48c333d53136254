"""Experiment 4: depth-then-width against width-then-depth.

The kernel ODE ``dK_t/dt = E[phi(U) phi(V)]`` (width to infinity after depth) is compared with
Monte-Carlo estimates ``mean over networks of Y_L(a) . Y_L(b) / n`` from finite ResNets of
width ``n`` and depth ``L`` (shared weights across inputs, exact-in-law layer sampling). The
width-then-depth kernel at finite depth (the Euler recursion
``K_l = K_{l-1} + E[phi(U) phi(V)] / L``) is drawn as the depth-only error floor.
"""
# The flags of ``infdepth limits kernel-ode``: its Config (the only place its defaults are written),
# torch-free so that its ``--help`` imports no torch.  The run: infdepth.experiments.limits.kernel_ode.

from __future__ import annotations

import argparse
from dataclasses import dataclass

from infdepth.errors import check_allocatable, check_float, check_int, check_items
from infdepth.experiments._flags import add_config_arguments, add_run_arguments, int_list, option, str_list
from infdepth.experiments.limits._bounds import ACTIVATIONS_HELP, MAX_TIME, known_activation, positive_int


@dataclass(frozen=True)
class Config:
    """Widths, depths, networks per configuration and inputs."""

    widths: tuple[int, ...] = option((16, 64, 256, 1024), "comma-separated widths", type=int_list)
    depths: tuple[int, ...] = option((4, 16, 64, 256), "comma-separated depths", type=int_list)
    samples: int = option(64, "networks per (width, depth)")
    inputs: int = option(4, "number of random inputs")
    features: int = option(8, "input dimension")
    t1: float = option(1.0, "diffusion time of the stack")
    activations: tuple[str, ...] = option(("relu", "tanh"),
                                          f"comma-separated activations ({ACTIVATIONS_HELP})",
                                          type=str_list)
    seed: int = option(0, "random seed")

    def __post_init__(self) -> None:
        check_items("--widths", self.widths, positive_int)
        check_items("--depths", self.depths, positive_int)
        check_int("--samples", self.samples, low=1)
        check_int("--inputs", self.inputs, low=1)
        check_int("--features", self.features, low=1)
        check_float("--t1", self.t1, low=0.0, high=MAX_TIME, strict=True)
        check_items("--activations", self.activations, known_activation)
        check_int("--seed", self.seed, low=0)
        n, m = max(self.widths), self.inputs
        # input weights, a few copies of the pre-activations, the layer weights (n x n when
        # there are at least as many inputs as the width, else m x n) and per-network kernels
        per_net = n * self.features + 4 * m * n + (n * n if m >= n else m * n) + m * m
        check_allocatable("--samples x --widths x --inputs/--features", self.samples * per_net)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``infdepth limits kernel-ode`` (from :class:`Config`) and the run flags."""
    add_config_arguments(parser, Config)
    add_run_arguments(parser, "runs/limits-kernel-ode")
