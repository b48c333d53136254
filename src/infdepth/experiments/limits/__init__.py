"""``infdepth limits ...``: the six depth-limit experiments (Hayou 2023; Peluchetti & Favaro 2021).

Two modules per experiment: ``<name>_config`` holds the frozen ``Config`` (the only place its
defaults are written) and ``add_arguments(parser)`` derived from it, torch-free so that
``--help`` imports no torch; ``<name>`` holds ``run(config, ctx) -> summary`` and
``main(args)``, imported only when the command runs. Every subcommand validates its flags
before writing ``config.json``, ``summary.json`` and PNG figures into ``--out``.
"""

from __future__ import annotations

import argparse
from types import ModuleType
from typing import Any

from infdepth.experiments._flags import deferred
from infdepth.experiments.limits import (
    activations_config,
    convergence_config,
    expressivity_config,
    inference_config,
    kernel_ode_config,
    width_regime_config,
)

# subcommand -> (its config module, one-line help); the run is the module named without "_config"
EXPERIMENTS: dict[str, tuple[ModuleType, str]] = {
    "convergence": (convergence_config,
                    "finite ResNets approach the diffusion as depth grows (KS, Wasserstein)"),
    "activations": (activations_config,
                    "depth-limit laws for linear, ReLU, tanh against the infinite-width Gaussian"),
    "width-regime": (width_regime_config, "the width 3 -> 4 change in ReLU post-activation norms"),
    "kernel-ode": (kernel_ode_config, "kernel ODE against Monte Carlo of wide, deep finite ResNets"),
    "inference": (inference_config,
                  "NNGP / NTK of doubly infinite ResNets on digits vs trained finite ResNets"),
    "expressivity": (expressivity_config, "correlation map of the infinite-depth kernel as depth grows"),
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
        p.set_defaults(func=deferred(module.__name__.removesuffix("_config")))


__all__ = ["EXPERIMENTS", "register"]
