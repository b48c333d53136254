"""``infdepth limits ...``: the six depth-limit experiments (issue 5).

Each subcommand writes ``config.json``, ``summary.json`` and PNG figures to ``--out``.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

# subcommand -> (module, one-line help)
EXPERIMENTS: dict[str, tuple[str, str]] = {
    "convergence": ("infdepth.experiments.limits_convergence",
                    "finite ResNets approach the diffusion as depth grows (KS, Wasserstein)"),
    "activations": ("infdepth.experiments.limits_activations",
                    "depth-limit laws for linear, ReLU, tanh against the infinite-width Gaussian"),
    "width-regime": ("infdepth.experiments.limits_width_regime",
                     "the width 3 -> 4 change in ReLU post-activation norms"),
    "kernel-ode": ("infdepth.experiments.limits_kernel_ode",
                   "kernel ODE against Monte Carlo of wide, deep finite ResNets"),
    "inference": ("infdepth.experiments.limits_inference",
                  "NNGP / NTK of doubly infinite ResNets on digits vs trained finite ResNets"),
    "expressivity": ("infdepth.experiments.limits_expressivity",
                     "correlation map of the infinite-depth kernel as depth grows"),
}


def register(subparsers: Any) -> None:
    """Add ``limits`` and its sub-subcommands to the ``infdepth`` parser."""
    parser = subparsers.add_parser(
        "limits", help="depth limits of random ResNets: diffusions, laws, kernels",
        description="Depth limits of random residual networks (Hayou 2023; Peluchetti & "
        "Favaro 2021): diffusions, closed-form laws, the width 3 -> 4 regime change and "
        "infinite depth-and-width kernels.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    for name, (module, help_text) in EXPERIMENTS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:  # a module not shipped: leave its subcommand out
            if exc.name != module:
                raise
            continue
        p = sub.add_parser(name, help=help_text, description=(mod.__doc__ or help_text).strip(),
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(func=mod.main)
