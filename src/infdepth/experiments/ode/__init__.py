"""``infdepth ode ...``: the continuous-depth reproductions (Chen et al. 2018).

* ``memory`` (:mod:`.memory`): training-step memory of a ResNet against an ODE block
  (backprop, adjoint) as depth grows; one process (nothing to train data-parallel);
* ``params`` (:mod:`.params`): parameters against accuracy, residual blocks against one
  ODE block, on digits or Fashion-MNIST; data-parallel under torchrun;
* ``spiral`` (:mod:`.spiral`): irregularly sampled spirals, neural ODE against a GRU;
  data-parallel under torchrun.

``nfe_figure`` (not a subcommand: ``python -m infdepth.experiments.ode.nfe_figure``) draws NFE
per epoch of several ``params`` runs, grouped by setting (the regulariser reproduction).

Two modules per experiment: ``<name>_config`` holds the frozen ``Config`` (the only place its
defaults are written), ``add_arguments(parser)`` derived from it and ``register``, torch-free so
that ``--help`` imports no torch; ``<name>`` holds ``run(config, ctx) -> summary`` and
``main(args)``, imported only when the command runs (and re-exports the ``Config``).
"""

from __future__ import annotations

import argparse
from typing import Any

from infdepth.experiments.ode import memory_config, params_config, spiral_config

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the ``ode`` command and its subcommands (``args.subcommand``) to ``sub``."""
    p = sub.add_parser(
        "ode",
        help="continuous depth: neural ODE reproductions",
        description="Continuous depth (Chen et al. 2018): memory against depth, parameters against "
        "accuracy, irregularly sampled time series.",
    )
    ode_sub: argparse._SubParsersAction = p.add_subparsers(
        dest="subcommand", metavar="EXPERIMENT", required=True
    )
    for module in (memory_config, params_config, spiral_config):
        module.register(ode_sub)
