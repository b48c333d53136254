"""Experiment 5: inference with doubly infinite ResNets on scikit-learn's digits.

The NNGP (read-out trained only: Gaussian-process posterior) and the NTK (all layers
trained: kernel regression, and the linearised gradient-descent trajectory) of the
infinite-depth-and-width ResNet are computed by integrating their ODEs, then compared
with finite ResNets (NTK parameterisation, centred outputs ``f - f_0``) trained by full-batch
gradient descent with the same learning rate and number of steps: as width and depth grow
their test outputs approach the NTK prediction.
"""
# The flags of ``infdepth limits inference``: its Config (the only place its defaults are written),
# torch-free so that its ``--help`` imports no torch.  The run: infdepth.experiments.limits.inference.

from __future__ import annotations

import argparse
from dataclasses import dataclass

from infdepth.errors import check_allocatable, check_choice, check_float, check_int, check_items, reject
from infdepth.experiments._flags import add_config_arguments, add_run_arguments, int_list, option
from infdepth.experiments.limits._bounds import ACTIVATIONS_HELP, MAX_TIME, positive_int
from infdepth.limits._names import KNOWN_ACTIVATIONS

DIGITS = 1797
"""Samples in scikit-learn's digits data set (8 x 8 images, 10 classes)."""
FEATURES = 64


@dataclass(frozen=True)
class Config:
    """Data split, kernel time, training and the finite networks compared."""

    train: int = option(150, "training points from digits")
    test: int = option(300, "test points from digits")
    t1: float = option(1.0, "diffusion time (depth) of the kernels")
    activation: str = option("relu", f"activation ({ACTIVATIONS_HELP})")
    steps: int = option(200, "full-batch gradient descent steps")
    lr_scale: float = option(1.0, "learning rate as a multiple of 1 / lambda_max(NTK on train); "
                             "gradient descent diverges beyond 2")
    widths: tuple[int, ...] = option((32, 128, 512), "widths of the finite ResNets (at --fixed-depth)",
                                     type=int_list)
    fixed_depth: int = option(4, "depth used for the width sweep")
    depths: tuple[int, ...] = option((2, 8, 32), "depths of the finite ResNets (at --fixed-width)",
                                     type=int_list)
    fixed_width: int = option(128, "width used for the depth sweep")
    kernel_steps: int = option(16, "RK4 steps of the kernel ODEs")
    gp_noise: float = option(1e-2, "observation noise variance of the NNGP posterior")
    seed: int = option(0, "random seed")

    def __post_init__(self) -> None:
        check_int("--train", self.train, low=2)  # standardising needs two
        check_int("--test", self.test, low=1)
        if self.train + self.test > DIGITS:
            raise reject("--train + --test", self.train + self.test,
                         f"at most {DIGITS} (the samples of digits)")
        check_float("--t1", self.t1, low=0.0, high=MAX_TIME, strict=True)
        check_choice("--activation", self.activation, KNOWN_ACTIVATIONS)
        check_int("--steps", self.steps, low=1)
        check_float("--lr-scale", self.lr_scale, low=0.0, high=2.0, strict=True)
        check_items("--widths", self.widths, positive_int)
        check_int("--fixed-depth", self.fixed_depth, low=1)
        check_items("--depths", self.depths, positive_int)
        check_int("--fixed-width", self.fixed_width, low=1)
        check_int("--kernel-steps", self.kernel_steps, low=1)
        check_float("--gp-noise", self.gp_noise, low=0.0, strict=True)
        check_int("--seed", self.seed, low=0)
        points = self.train + self.test
        # parameters, gradients and a step's temporaries; the pre-activations autograd keeps
        largest = max(3 * (w * w * d + w * (FEATURES + 10)) + 4 * points * w * d for w, d in self.grid())
        check_allocatable("--widths/--fixed-width x --depths/--fixed-depth", largest)

    def grid(self) -> list[tuple[int, int]]:
        """The ``(width, depth)`` pairs trained: the width sweep, then the depth sweep."""
        by_width = [(w, self.fixed_depth) for w in self.widths]
        return by_width + [(self.fixed_width, d) for d in self.depths
                           if (self.fixed_width, d) not in by_width]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``infdepth limits inference`` (from :class:`Config`) and the run flags."""
    add_config_arguments(parser, Config)
    add_run_arguments(parser, "runs/limits-inference")
