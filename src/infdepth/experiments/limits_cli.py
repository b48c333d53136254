"""Temporary alias until cli.SUBCOMMANDS names ``infdepth.experiments.limits``; then delete."""

from infdepth.experiments.limits import register as register  # noqa: F401
