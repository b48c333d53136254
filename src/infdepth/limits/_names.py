"""The activations the limits know by name and the solvers' noise chunk, torch-free.

``infdepth limits ... --help`` lists the activations and sizes its flags' checks with these
without importing torch (issue 29); :mod:`infdepth.limits._activation` and
:mod:`infdepth.limits.sde` take them from here.
"""

from __future__ import annotations

KNOWN_ACTIVATIONS = ("linear", "relu", "tanh")
"""Activations :func:`~infdepth.limits.resolve_activation` accepts by name."""

NOISE_CHUNK = 32
"""Steps of Gaussian noise the Euler solvers draw at once (their default ``chunk``)."""
