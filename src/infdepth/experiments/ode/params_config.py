"""The flags of ``infdepth ode params``: its ``Config`` (the only place its defaults are written),
torch-free so that its ``--help`` imports no torch.  The run: :mod:`infdepth.experiments.ode.params`."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from infdepth.data.image_sets import DATASETS
from infdepth.errors import (
    InputError,
    check_allocatable,
    check_choice,
    check_device,
    check_float,
    check_int,
    check_items,
    reject,
)
from infdepth.experiments._flags import add_config_arguments, add_run_arguments, deferred, option, str_list

KINDS = ("resnet", "resnet-1", "odenet")


@dataclass(frozen=True)
class Config:
    """One comparison: the data, the models and how they train."""

    dataset: str = option("digits", "digits (bundled), mnist, fashion-mnist (apt package "
                          "dataset-fashion-mnist) or idx (with --data-dir)")
    data_dir: str | None = option(None, "folder with the four MNIST-format IDX files "
                                  "(None: the data set's standard place)", type=str)
    models: tuple[str, ...] = option(KINDS, "comma-separated models to train: resnet (--res-blocks "
                                     "blocks), resnet-1 (one block), odenet (one ODE block)", type=str_list)
    channels: int = option(32, "channels of every conv layer")
    res_blocks: int = option(6, "residual blocks of the ResNet")
    epochs: int = option(12, "training epochs per model")
    batch: int = option(64, "images per step (the global batch: under torchrun each process "
                         "takes its share)")
    lr: float = option(1e-2, "peak learning rate (Adam, one-cycle)")
    rtol: float = option(1e-3, "ODE solver relative tolerance")
    atol: float = option(1e-3, "ODE solver absolute tolerance")
    step_size: float | None = option(None, "fixed Dopri5 step of the ODE block (None: adaptive "
                                     "steps within --rtol/--atol)", type=float)
    backprop: bool = option(False, "differentiate the ODE block by backprop instead of the adjoint")
    learn_t1: bool = option(False, "learn the ODE block's end time t1 (its depth; starts at 1)")
    t1_l2: float = option(0.0, "weight of the penalty t1_l2 * t1**2 (with --learn-t1)")
    kinetic_energy: float = option(0.0, "weight of the ODE block's kinetic-energy regulariser "
                                   "int |f|^2 dt (Finlay et al. 2020; 0: off)")
    jacobian_frobenius: float = option(0.0, "weight of the ODE block's Jacobian-Frobenius "
                                       "regulariser int |df/dh|_F^2 dt, Hutchinson-estimated (0: off)")
    control_integrals: bool = option(False, "let the regularisers' integrals steer the training "
                                     "solve's step size too (default: the error norm measures the "
                                     "state alone, the integrals follow its steps)")
    train_subset: int | None = option(None, "train on this many random training images "
                                      "(None: all)", type=int)
    seed: int = option(0, "seed of weights and data")
    device: str = option("cpu", "torch device, e.g. cpu or cuda")

    def __post_init__(self) -> None:
        check_choice("--dataset", self.dataset, DATASETS)
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            raise reject("--data-dir", self.data_dir, "a folder")
        check_items("--models", self.models, lambda name, kind: check_choice(name, kind, KINDS))
        check_int("--channels", self.channels, low=1)
        check_int("--res-blocks", self.res_blocks, low=1)
        check_int("--epochs", self.epochs, low=1)
        check_int("--batch", self.batch, low=1)
        check_float("--lr", self.lr, low=0, strict=True)
        check_float("--rtol", self.rtol, low=0, strict=True)
        check_float("--atol", self.atol, low=0, strict=True)
        if self.step_size is not None:
            # the block's solve stops after 10,000 steps: more is a mistake, not a setting
            check_float("--step-size", self.step_size, low=1e-3)
        check_float("--t1-l2", self.t1_l2, low=0)
        if self.t1_l2 and not self.learn_t1:
            raise InputError(f"--t1-l2={self.t1_l2} is not accepted without --learn-t1 (a fixed t1 "
                             "makes its penalty a constant); add --learn-t1 or leave --t1-l2 at 0")
        check_float("--kinetic-energy", self.kinetic_energy, low=0)
        check_float("--jacobian-frobenius", self.jacobian_frobenius, low=0)
        if (self.kinetic_energy or self.jacobian_frobenius) and "odenet" not in self.models:
            raise InputError("--kinetic-energy / --jacobian-frobenius regularise the ODE block; "
                             f"--models={','.join(self.models)} has none: add odenet")
        if self.control_integrals and not (self.kinetic_energy or self.jacobian_frobenius):
            raise InputError("--control-integrals is not accepted without --kinetic-energy or "
                             "--jacobian-frobenius: there are no integrals to control")
        if self.train_subset is not None:
            check_int("--train-subset", self.train_subset, low=1)
        check_int("--seed", self.seed, low=0)
        check_device("--device", self.device)
        check_allocatable(f"--channels={self.channels}", 16 * self.channels * (self.channels + 1))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``ode params``: one per :class:`Config` field, and the run folder."""
    add_config_arguments(parser, Config)
    add_run_arguments(parser, "runs/ode-params", resumable=True)


def register(sub: Any) -> None:
    """Add ``params`` to the ``ode`` subcommands (data-parallel under torchrun)."""
    p = sub.add_parser(
        "params", help="parameters against accuracy: ResNet vs ODE-Net",
        description="Train a ResNet, a 1-block ResNet and an ODE-Net (one ODE block) after the same "
        "downsampling stem; report parameters, test accuracy and NFE. Under torchrun the models "
        "train data-parallel.",
    )
    add_arguments(p)
    p.set_defaults(func=deferred("infdepth.experiments.ode.params"), data_parallel=True)
