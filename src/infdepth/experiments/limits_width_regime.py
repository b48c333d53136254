"""Temporary alias until tests/limits/test_regime.py imports ``infdepth.experiments.limits.width_regime``."""

from infdepth.experiments.limits.width_regime import euler_one_active_slope as euler_one_active_slope  # noqa: F401
