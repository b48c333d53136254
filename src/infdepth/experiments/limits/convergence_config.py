"""Experiment 1: the law of a depth-L random ResNet approaches its diffusion limit.

Closed forms (linear activation: log-normal norm; ReLU width 1: log-normal output) are
compared with finite ResNets of growing depth by the Kolmogorov-Smirnov distance and
p-value and the Wasserstein-1 distance; tanh, which has no closed form, is compared with
a fine Euler-Maruyama solution of its diffusion by a two-sample KS test.
"""
# The flags of ``infdepth limits convergence``: its Config (the only place its defaults are written),
# torch-free so that its ``--help`` imports no torch.  The run: infdepth.experiments.limits.convergence.

from __future__ import annotations

import argparse
from dataclasses import dataclass

from infdepth.errors import check_allocatable, check_float, check_int, check_items
from infdepth.experiments._flags import add_config_arguments, add_run_arguments, int_list, option
from infdepth.experiments.limits._bounds import MAX_TIME
from infdepth.limits._names import NOISE_CHUNK

#: the deepest stack and the longest reference diffusion a run may ask for (each sample runs
#: every layer and step: larger values only stall the run)
MAX_DEPTH = 100_000
MAX_STEPS = 1_000_000


@dataclass(frozen=True)
class Config:
    """Depths, sample size and the cases compared."""

    depths: tuple[int, ...] = option((1, 3, 10, 30, 100, 300, 1000), "comma-separated depths L",
                                     type=int_list)
    samples: int = option(20_000, "networks sampled per depth")
    t1: float = option(1.0, "diffusion time covered by the stack")
    linear_width: int = option(3, "width n of the linear case")
    tanh_width: int = option(2, "width n of the tanh case")
    tanh_reference_steps: int = option(2000, "Euler-Maruyama steps of the tanh reference diffusion")
    seed: int = option(0, "random seed")

    def __post_init__(self) -> None:
        check_items("--depths", self.depths, lambda n, v: check_int(n, v, low=1, high=MAX_DEPTH))
        check_int("--samples", self.samples, low=1)
        check_float("--t1", self.t1, low=0.0, high=MAX_TIME, strict=True)
        check_int("--linear-width", self.linear_width, low=1)
        check_int("--tanh-width", self.tanh_width, low=1)
        check_int("--tanh-reference-steps", self.tanh_reference_steps, low=1, high=MAX_STEPS)
        check_int("--seed", self.seed, low=0)
        widest = max(self.linear_width, self.tanh_width)
        # the state, the reference's noise drawn a chunk of steps at a time, and the saved paths
        check_allocatable("--samples x --linear-width/--tanh-width",
                          self.samples * widest * (NOISE_CHUNK + 4))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``infdepth limits convergence`` (from :class:`Config`) and the run flags."""
    add_config_arguments(parser, Config)
    add_run_arguments(parser, "runs/limits-convergence")
