"""``infdepth limits ...``: the six depth-limit experiments (Hayou 2023; Peluchetti & Favaro 2021).

One module per experiment, each with a frozen ``Config`` (the only place its defaults are
written), ``add_arguments(parser)`` derived from it, ``run(config, ctx) -> summary`` and
``main(args)``. Every subcommand validates its flags before writing ``config.json``,
``summary.json`` and PNG figures into ``--out``.
"""

from __future__ import annotations

import argparse
from types import ModuleType
from typing import Any

from infdepth.experiments.limits import (
    activations,
    convergence,
    expressivity,
    inference,
    kernel_ode,
    width_regime,
)

# subcommand -> (module, one-line help)
EXPERIMENTS: dict[str, tuple[ModuleType, str]] = {
    "convergence": (convergence, "finite ResNets approach the diffusion as depth grows (KS, Wasserstein)"),
    "activations": (activations,
                    "depth-limit laws for linear, ReLU, tanh against the infinite-width Gaussian"),
    "width-regime": (width_regime, "the width 3 -> 4 change in ReLU post-activation norms"),
    "kernel-ode": (kernel_ode, "kernel ODE against Monte Carlo of wide, deep finite ResNets"),
    "inference": (inference, "NNGP / NTK of doubly infinite ResNets on digits vs trained finite ResNets"),
    "expressivity": (expressivity, "correlation map of the infinite-depth kernel as depth grows"),
}


def register(subparsers: Any) -> None:
    """Add ``limits`` and one nested subcommand per experiment to the ``infdepth`` parser.

    The nested subparsers use ``dest="subcommand"``, which the CLI uses to name the command
    in error messages. Nothing here trains data-parallel, so no ``data_parallel`` default is set.
    """
    parser = subparsers.add_parser(
        "limits", help="depth limits of random ResNets: diffusions, laws, kernels",
        description="Depth limits of random residual networks (Hayou 2023; Peluchetti & "
        "Favaro 2021): diffusions, closed-form laws, the width 3 -> 4 regime change and "
        "infinite depth-and-width kernels.")
    sub = parser.add_subparsers(dest="subcommand", metavar="EXPERIMENT", required=True)
    for name, (module, help_text) in EXPERIMENTS.items():
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(func=module.main)


__all__ = ["EXPERIMENTS", "activations", "convergence", "expressivity", "inference", "kernel_ode",
           "register", "width_regime"]
