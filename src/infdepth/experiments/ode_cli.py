"""Moved to :mod:`infdepth.experiments.ode`; this alias goes once ``cli.SUBCOMMANDS`` names the package."""
from infdepth.experiments.ode import register

__all__ = ["register"]
