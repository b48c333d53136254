"""The flags of ``infdepth ode memory``: its ``Config`` (the only place its defaults are written),
torch-free so that its ``--help`` imports no torch.  The run: :mod:`infdepth.experiments.ode.memory`."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from infdepth.errors import check_allocatable, check_device, check_int, check_items
from infdepth.experiments._flags import add_config_arguments, add_run_arguments, deferred, int_list, option


@dataclass(frozen=True)
class Config:
    """Depths to measure and the size of the network and batch."""

    depths: tuple[int, ...] = option((1, 2, 4, 8, 16, 32, 64, 128),
                                     "comma-separated depths L (ResNet blocks = Euler steps)", type=int_list)
    width: int = option(64, "hidden width of every block")
    batch: int = option(128, "batch size of the training step")
    inputs: int = option(64, "input features", cli=False)
    classes: int = option(10, "classes of the head", cli=False)
    seed: int = option(0, "seed of weights and data")
    device: str = option("cpu", "torch device, e.g. cpu or cuda")

    def __post_init__(self) -> None:
        # an ODE block stops after 10,000 steps, and depth L is L Euler steps
        check_items("--depths", self.depths, lambda name, d: check_int(name, d, low=1, high=10_000))
        check_int("--width", self.width, low=1)
        check_int("--batch", self.batch, low=1)
        check_int("inputs", self.inputs, low=1)
        check_int("classes", self.classes, low=2)
        check_int("--seed", self.seed, low=0)
        check_device("--device", self.device)
        check_allocatable(f"--width={self.width}", 2 * self.width * self.width)
        deepest = max(self.depths)
        check_allocatable(f"--depths={deepest} with --width={self.width}", 2 * deepest * self.width**2)
        check_allocatable(f"--batch={self.batch}", self.batch * max(self.width, self.inputs) * deepest)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``ode memory``: one per :class:`Config` field, and the run folder."""
    add_config_arguments(parser, Config)
    add_run_arguments(parser, "runs/ode-memory")


def register(sub: Any) -> None:
    """Add ``memory`` to the ``ode`` subcommands (not data-parallel: exits 2 under torchrun)."""
    p = sub.add_parser(
        "memory", help="memory of a training step against depth",
        description="Memory a training step keeps for backward (and the CUDA peak): ResNet with L "
        "blocks, ODE block with L Euler steps by backprop, and by the adjoint.",
    )
    add_arguments(p)
    p.set_defaults(func=deferred("infdepth.experiments.ode.memory"))
