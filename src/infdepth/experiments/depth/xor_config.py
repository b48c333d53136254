"""XOR reproduction of "Going Deeper" (section IV.A): learned depth grows with the task's difficulty.

The network is :func:`infdepth.models.xor_net.xor_net`: frozen random Dense(8 -> 24, ReLU) ->
g-infinity layer [f_i = Dense(24) -> BatchNorm (gamma l2) -> Dropout(0.1), h = ReLU] ->
frozen random Dense(24 -> 1, sigmoid).  Adam (lr 1e-3, fused), binary cross-entropy, 1000
fresh samples per step, validation on 10,000 fresh samples every 100 steps.  One run per
(number of active inputs k, seed), in parallel processes.
"""
# The flags of ``infdepth xor``: its Config (the only place its defaults are written),
# torch-free so that its ``--help`` imports no torch.  The run: infdepth.experiments.depth.xor.

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any

from infdepth.errors import check_allocatable, check_device, check_float, check_int, check_items
from infdepth.experiments._flags import (
    MAX_SUBLAYERS,
    add_config_arguments,
    add_run_arguments,
    deferred,
    int_list,
    option,
)
from infdepth.models.xor_inputs import INPUTS

FULL_STEPS = 100_000  # the paper's setting
QUICK_STEPS = 3000
QUICK_SEEDS = (0, 1, 2)
#: settings that may change when a sweep is resumed (recorded in config.json under "resumes")
RESUMABLE = ("steps", "quick", "checkpoint_every", "jobs", "device", "world_size")


@dataclass(frozen=True)
class Config:
    """An XOR sweep over ``k`` and ``seeds`` (the only place its defaults are written).

    ``steps``/``seeds`` left at ``None`` take the paper's setting (100,000 steps, seed 0),
    or with ``quick`` the quick one (3000 steps, seeds 0, 1, 2); explicit values win.
    """

    quick: bool = option(False, f"quick setting: {QUICK_STEPS} steps and seeds "
                         f"{','.join(map(str, QUICK_SEEDS))} unless --steps / --seeds are given")
    steps: int | None = option(None, f"optimizer steps per run (default: the paper's {FULL_STEPS})", type=int)
    k: tuple[int, ...] = option(tuple(range(INPUTS + 1)), "comma-separated numbers of active inputs to "
                                f"run (0..{INPUTS})", type=int_list)
    seeds: tuple[int, ...] | None = option(None, "comma-separated seeds (default: 0)", type=int_list)
    w_l2: float = option(1e-4, "l2 factor on w (the paper's text: 1e-5)")
    gamma_l2: float = option(1e-8, "l2 factor on the BatchNorm gamma of each sub-layer")
    w0: float = option(1.0, "initial depth w")
    lr: float = option(1e-3, "Adam learning rate")
    batch_size: int = option(1000, "fresh samples per step")
    val_size: int = option(10_000, "fresh validation samples")
    eval_every: int = option(100, "steps between validations")
    width: int = option(24, "units of the g-infinity layer's sub-layers")
    dropout: float = option(0.1, "dropout inside each sub-layer")
    grow_step: int = option(5, "sub-layers built per growth chunk")
    checkpoint_every: int = option(5000, "steps between checkpoints (0: end only)")
    jobs: int = option(max(1, os.cpu_count() or 1), "parallel processes (one run each)")
    device: str = option("cpu", "torch device, e.g. cpu or cuda")

    def __post_init__(self) -> None:
        if self.steps is None:
            object.__setattr__(self, "steps", QUICK_STEPS if self.quick else FULL_STEPS)
        if self.seeds is None:
            object.__setattr__(self, "seeds", QUICK_SEEDS if self.quick else (0,))
        object.__setattr__(self, "k", tuple(self.k))
        object.__setattr__(self, "seeds", tuple(self.seeds or ()))
        check_items("--k", self.k, lambda n, v: check_int(n, v, low=0, high=INPUTS))
        check_items("--seeds", self.seeds or (), lambda n, v: check_int(n, v, low=0))
        check_int("--steps", self.steps, low=1)
        check_int("--batch-size", self.batch_size, low=1)
        check_int("--val-size", self.val_size, low=1)
        check_int("--width", self.width, low=1)
        check_allocatable("--batch-size/--val-size/--width",
                          (self.batch_size + self.val_size) * max(self.width, INPUTS) + 10 * self.width**2)
        check_int("--eval-every", self.eval_every, low=1)
        check_int("--grow-step", self.grow_step, low=1, high=MAX_SUBLAYERS)
        check_int("--checkpoint-every", self.checkpoint_every, low=0)
        check_int("--jobs", self.jobs, low=1)
        for flag, value in (("--w-l2", self.w_l2), ("--gamma-l2", self.gamma_l2)):
            check_float(flag, value, low=0.0)
        check_float("--lr", self.lr, low=0.0, strict=True)
        check_float("--w0", self.w0, high=MAX_SUBLAYERS)
        check_float("--dropout", self.dropout, low=0.0, high=0.99)
        check_device("--device", self.device)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``infdepth xor``, derived from :class:`Config`."""
    add_config_arguments(parser, Config)
    add_run_arguments(parser, "runs/xor", resumable=True)


def register(sub: Any) -> None:
    """Add the ``xor`` subcommand."""
    p = sub.add_parser("xor", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="reproduce the XOR experiment (learned depth against task difficulty)")
    add_arguments(p)
    p.set_defaults(func=deferred("infdepth.experiments.depth.xor"), data_parallel=True)
