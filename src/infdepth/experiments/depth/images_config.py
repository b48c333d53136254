"""Image reproduction of "Going Deeper" (section IV.B): an all-g-infinity CNN learns its own depth.

The network is :class:`infdepth.models.going_deeper.GoingDeeperCNN`: frozen random
convolutions and dense layers with a g-infinity layer after each (``dcnn0``, ``dcnn1``,
``dfc0``); every trainable weight is inside a g-infinity layer.  w l2 5e-5 (conv) / 1e-3
(dense), gamma l2 1e-8, Adadelta (Keras: lr 1.0, rho 0.95, eps 1e-7) or Adam, batch 512,
categorical cross-entropy.  The 8x8 ``digits`` keep the same layer sequence (8x8 -> 4x4 ->
2x2 feature maps).  ``--fixed-depth K`` / ``--compare-depths`` train the same network with
K always-on residual blocks per layer and no gate.
"""
# The flags of ``infdepth images``: its Config (the only place its defaults are written),
# torch-free so that its ``--help`` imports no torch.  The run: infdepth.experiments.depth.images.

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
    reject,
)
from infdepth.experiments._flags import (
    MAX_SUBLAYERS,
    add_config_arguments,
    add_run_arguments,
    deferred,
    int_list,
    int_tuple,
    option,
)

OPTIMIZERS = ("adadelta", "adam")
PENALTY_GATES = ("attached", "detached")
DEFAULT_LR = {"adadelta": 1.0, "adam": 1e-3}
#: default epochs and batch per data set (digits: the quick always-available run)
DEFAULT_EPOCHS = {"digits": 30, "mnist": 20, "fashion-mnist": 20, "idx": 20}
DEFAULT_BATCH = {"digits": 64, "mnist": 512, "fashion-mnist": 512, "idx": 512}
#: settings that may change when a run is resumed (recorded in config.json under "resumes")
RESUMABLE = ("epochs", "device", "eval_batch", "amp", "precise_bn", "world_size")


@dataclass(frozen=True)
class Config:
    """One training run of the image network (the only place its defaults are written).

    ``fixed_depth=None`` trains the g-infinity network; an integer ``K >= 0`` trains the
    same network with ``K`` always-on residual blocks per layer and no gate.
    ``epochs``, ``batch_size`` and ``lr`` left at ``None`` take the data set's and the
    optimizer's defaults.
    """

    dataset: str = option("digits", f"data set: one of {', '.join(DATASETS)} (idx: any MNIST-format folder)")
    data_dir: str | None = option(None, "folder with the four MNIST-format IDX files (raw or .gz); "
                                  "default: the data set's standard place", type=str)
    epochs: int | None = option(None, "training epochs (default per data set: "
                                + ", ".join(f"{k} {v}" for k, v in DEFAULT_EPOCHS.items()) + ")", type=int)
    batch_size: int | None = option(None, "images per step (default: 512 as the paper; 64 for digits)",
                                    type=int)
    dropout: float = option(0.25, "dropout inside each sub-layer: 0.25 (the original code) or 0.1 "
                            "(the paper's text)")
    conv_w_l2: float = option(5e-5, "l2 factor on w of the two conv layers")
    dense_w_l2: float = option(1e-3, "l2 factor on w of the dense layer")
    gamma_l2: float = option(1e-8, "l2 factor on each sub-layer's BatchNorm gamma (times delta_w(i + eps))")
    optimizer: str = option("adadelta", f"one of {', '.join(OPTIMIZERS)}")
    lr: float | None = option(None, "learning rate (default: 1.0 for adadelta as Keras, 1e-3 for adam)",
                              type=float)
    w0: float = option(1.0, "initial depth w of every g-inf layer")
    grow_step: int = option(5, "sub-layers built per growth chunk")
    w_lr: float | None = option(None, "learning rate of the w's, in a parameter group of their own "
                                "(default: no own group, the optimizer's --lr)", type=float)
    zero_init: bool = option(False, "every new sub-layer starts as the zero function (its BatchNorm gamma "
                             "zeroed), so switching it in changes nothing")
    penalty_gate: str = option("attached", "the gate of the gamma penalty: attached (the paper's: the "
                               "penalty pulls w down) or detached (only the l2 on w acts on w)")
    alpha: float = option(1.0, "stretch of the gate relu(1 - exp(alpha (i - w))): 1 is the paper's gate, "
                          "< 1 a softer one")
    fix_depth_at: float | None = option(None, "learn-then-fix: after this fraction of the epochs, round "
                                        "each layer's depth, drop the gates and train the fixed network "
                                        "for the rest (default: learn to the end)", type=float)
    fix_threshold: float = option(0.25, "learn-then-fix keeps a layer's last active sub-layer when its "
                                  "gate is at least this")
    dw_probe: int = option(0, "log the parts of dL/dw (data, l2 on w, gamma penalty) per layer at every "
                           "epoch, on this many training images (0: off)")
    channels: int = option(30, "feature maps of the first conv stage (the second has twice as many)")
    dense_units: int = option(256, "units of the dense stage")
    fixed_depth: int | None = option(None, "train the no-gate baseline with this many always-on blocks "
                                     "per layer instead (0: the g-inf layers switched off)", type=int)
    layer_depths: tuple[int, ...] | None = option(None, "like --fixed-depth, one count per layer "
                                                  "(dcnn0,dcnn1,dfc0), e.g. 0,2,0", type=int_tuple)
    seed: int = option(0, "seed of weights, data order and dropout")
    device: str = option("cpu", "torch device, e.g. cpu or cuda")
    amp: bool = option(False, "bfloat16 autocast (mixed precision)")
    eval_batch: int = option(2000, "images per evaluation batch")
    precise_bn: int = option(10_000, "after training, also report the test accuracy with BatchNorm "
                             "statistics recomputed on this many training images without dropout (0: skip)")

    def __post_init__(self) -> None:
        check_choice("--dataset", self.dataset, DATASETS)
        check_choice("--optimizer", self.optimizer, OPTIMIZERS)
        fill = {"epochs": DEFAULT_EPOCHS[self.dataset], "batch_size": DEFAULT_BATCH[self.dataset],
                "lr": DEFAULT_LR[self.optimizer]}
        for name, default in fill.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
        check_int("--epochs", self.epochs, low=1)
        check_int("--batch-size", self.batch_size, low=1, high=2**24)
        check_float("--dropout", self.dropout, low=0.0, high=0.99)
        for flag, value in (("--conv-w-l2", self.conv_w_l2), ("--dense-w-l2", self.dense_w_l2),
                            ("--gamma-l2", self.gamma_l2)):
            check_float(flag, value, low=0.0)
        check_float("--lr", self.lr, low=0.0, strict=True)
        check_float("--w0", self.w0, high=MAX_SUBLAYERS)
        check_int("--grow-step", self.grow_step, low=1, high=1000)
        if self.w_lr is not None:
            check_float("--w-lr", self.w_lr, low=0.0, strict=True)
        check_choice("--penalty-gate", self.penalty_gate, PENALTY_GATES)
        check_float("--alpha", self.alpha, low=0.0, strict=True)
        if self.fix_depth_at is not None:
            check_float("--fix-depth-at", self.fix_depth_at, low=0.0, high=1.0, strict=True)
        check_float("--fix-threshold", self.fix_threshold, low=0.0, high=1.0)
        check_int("--dw-probe", self.dw_probe, low=0, high=10**6)
        check_int("--channels", self.channels, low=1)
        check_int("--dense-units", self.dense_units, low=1)
        check_allocatable("--channels/--dense-units", 18 * self.channels**2 + self.dense_units**2)
        if self.fixed_depth is not None:
            check_int("--fixed-depth", self.fixed_depth, low=0, high=1000)
        if self.layer_depths is not None:
            object.__setattr__(self, "layer_depths", tuple(self.layer_depths))
            if len(self.layer_depths) != 3:
                raise reject("--layer-depths", list(self.layer_depths), "three counts (dcnn0,dcnn1,dfc0)")
            for depth in self.layer_depths:
                check_int("--layer-depths", depth, low=0, high=1000)
            if self.fixed_depth is not None:
                raise InputError("--fixed-depth and --layer-depths exclude each other")
        check_int("--seed", self.seed, low=0)
        check_device("--device", self.device)
        check_int("--eval-batch", self.eval_batch, low=1)
        check_int("--precise-bn", self.precise_bn, low=0)

    @property
    def label(self) -> str:
        """``learned``, ``fixedK`` or ``fixedA-B-C`` (one count per layer)."""
        if self.layer_depths is not None:
            return "fixed" + "-".join(map(str, self.layer_depths))
        return "learned" if self.fixed_depth is None else f"fixed{self.fixed_depth}"

    @property
    def depth(self) -> int | tuple[int, int, int] | None:
        """The fixed depth of the network (``None``: learned)."""
        if self.layer_depths is not None:
            a, b, c = self.layer_depths
            return (a, b, c)
        return self.fixed_depth


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``infdepth images``, derived from :class:`Config`."""
    add_config_arguments(parser, Config)
    parser.add_argument("--compare-depths", type=int_list, default=None,
                        help="also train fixed-depth baselines with these blocks per layer, e.g. 1,2,3,5, "
                        "and plot test accuracy against depth")
    add_run_arguments(parser, "runs/images", resumable=True)


def register(sub: Any) -> None:
    """Add the ``images`` subcommand."""
    p = sub.add_parser("images", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="reproduce the MNIST experiment (all-g-infinity CNN) on digits, MNIST or "
                       "Fashion-MNIST")
    add_arguments(p)
    p.set_defaults(func=deferred("infdepth.experiments.depth.images"), data_parallel=True)
