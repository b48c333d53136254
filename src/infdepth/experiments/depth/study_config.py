"""Does learned depth pay off?  Learned, fixed and continuous depth side by side, one command.

Every contender trains on the same data set for the same epoch budget, each in its own
run folder under ``--out``, one after the other; ``--resume`` continues the study where
it stopped (finished members are read back, an interrupted one resumes from its last
checkpoint).  Contenders, for every seed:

- ``learned``: the all-g-infinity CNN (``infdepth images``), the paper's optimizer settings;
- ``fixedK`` for every K of ``--fixed-depths``: the same CNN with K always-on residual
  blocks per layer and no gate (K = 0: the g-inf layers switched off, nothing trains);
- ``fixedA-B-C``: the same CNN at the learned run's final depths rounded per layer
  (``--rounded``);
- ``odenet-t1`` and ``odenet`` (``--ode``): the ODE-Net of ``infdepth ode params`` with a
  learnable end time t1 (continuous learned depth) and with t1 fixed.

``summary.json`` holds one row per member (accuracy with and without precise BN,
parameters used, wall time, depths, the command that reproduces it) and each member's
compute, from one training step of every contender timed side by side when the members
are done (:mod:`infdepth.experiments.depth.study_speed`; ``--speed-rounds``), since the
members' wall times are taken hours apart under different loads.  ``table.md`` and
``study.png`` (test accuracy against compute) sum it up; the verdict compares the learned
run with the best fixed depth and with the whole sweep's compute.
"""
# The flags of ``infdepth study``: its Config (the only place its defaults are written),
# torch-free so that its ``--help`` imports no torch.  The run: infdepth.experiments.depth.study.

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from infdepth.data.image_sets import DATASETS
from infdepth.errors import check_choice, check_device, check_int, check_items
from infdepth.experiments._flags import (
    add_config_arguments,
    add_run_arguments,
    deferred,
    int_list,
    option,
    str_list,
)
from infdepth.experiments.depth.recipes import RECIPES

#: the member set may grow on resume (each member checks its own settings); the budget and data may not
RESUMABLE = ("seeds", "fixed_depths", "rounded", "ode", "device", "world_size", "speed_rounds", "jobs",
             "recipes", "search", "storage")


@dataclass(frozen=True)
class Config:
    """The study (the only place its defaults are written)."""

    dataset: str = option("fashion-mnist", f"data set: one of {', '.join(DATASETS)}")
    data_dir: str | None = option(None, "folder with the four MNIST-format IDX files "
                                  "(default: the data set's standard place)", type=str)
    epochs: int = option(30, "the epoch budget of every contender")
    seeds: tuple[int, ...] = option((0,), "comma-separated seeds; every contender runs once per seed",
                                    type=int_list)
    fixed_depths: tuple[int, ...] = option((0, 1, 2, 3, 5), "comma-separated fixed depths (blocks per "
                                           "layer) of the no-gate baseline", type=int_list)
    rounded: bool = option(False, "also train the CNN at each learned run's final depths rounded per layer")
    ode: bool = option(False, "also train the ODE-Net of `ode params`, with a learnable and a fixed t1")
    recipes: tuple[str, ...] = option((), "comma-separated learned-depth recipes trained beside the "
                                      f"paper's (`learned`): {', '.join(r for r in RECIPES if r != 'paper')}",
                                      type=str_list)
    search: bool = option(False, "also run the successive-halving search over --fixed-depths (Optuna; "
                          "one worker per --jobs)")
    storage: str | None = option(None, "Optuna storage URL of the search, shared by workers on several "
                                 "machines (default: an SQLite file in each search folder)", type=str)
    channels: int | None = option(None, "feature maps of the CNNs' first conv stage (default: the "
                                  "paper's 30; fewer for a cheaper proxy study)", type=int)
    dense_units: int | None = option(None, "units of the CNNs' dense stage (default: the paper's 256)",
                                     type=int)
    batch_size: int | None = option(None, "images per step of the CNNs (default: the paper's 512)", type=int)
    dw_probe: int = option(0, "learned members log the parts of dL/dw per layer at every epoch, on this "
                           "many training images (0: off)")
    device: str = option("cpu", "torch device, e.g. cpu or cuda")
    jobs: int = option(1, "members trained at once, each in its own process with one torch thread "
                       "(one process under torchrun)")
    speed_rounds: int = option(5, "timed rounds of the side-by-side step timing that gives every member's "
                               "compute (median; 0 skips it and the verdict falls back to wall time)")

    def __post_init__(self) -> None:
        check_choice("--dataset", self.dataset, DATASETS)
        check_int("--epochs", self.epochs, low=1)
        object.__setattr__(self, "seeds", tuple(self.seeds))
        object.__setattr__(self, "fixed_depths", tuple(self.fixed_depths))
        check_items("--seeds", self.seeds, lambda n, v: check_int(n, v, low=0))
        check_items("--fixed-depths", self.fixed_depths, lambda n, v: check_int(n, v, low=0, high=1000))
        object.__setattr__(self, "recipes", tuple(self.recipes))
        for recipe in self.recipes:
            check_choice("--recipes", recipe, tuple(RECIPES))
        if self.channels is not None:
            check_int("--channels", self.channels, low=1, high=4096)
        if self.dense_units is not None:
            check_int("--dense-units", self.dense_units, low=1, high=65536)
        if self.batch_size is not None:
            check_int("--batch-size", self.batch_size, low=1, high=2**24)
        check_int("--dw-probe", self.dw_probe, low=0, high=10**6)
        check_device("--device", self.device)
        check_int("--jobs", self.jobs, low=1, high=1024)
        check_int("--speed-rounds", self.speed_rounds, low=0, high=1000)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``infdepth study``, derived from :class:`Config`."""
    add_config_arguments(parser, Config)
    add_run_arguments(parser, "runs/study", resumable=True)
    parser.add_argument("--status", action="store_true",
                        help="print where the study in --out stands (every member: done, in flight or "
                        "not started, epochs trained, test accuracy; each search trial) and exit; reads "
                        "the folder only, so it is safe beside the study training there; other flags are "
                        "not read")


def register(sub: Any) -> None:
    """Add the ``study`` subcommand."""
    p = sub.add_parser("study", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="learned, fixed and continuous depth side by side on one data set (resumable)")
    add_arguments(p)
    p.set_defaults(func=deferred("infdepth.experiments.depth.study"), data_parallel=True)
