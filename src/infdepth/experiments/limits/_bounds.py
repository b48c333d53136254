"""What the ``infdepth limits ...`` flags accept, torch-free: the ``Config`` modules and ``--help`` read it.

:mod:`infdepth.experiments.limits._shared` re-exports these for the runs.
"""

from __future__ import annotations

from functools import partial

from infdepth.errors import check_choice, check_int
from infdepth.limits._names import KNOWN_ACTIVATIONS

MAX_TIME = 500.0
"""Latest diffusion time (depth) a flag accepts: with the linear activation kernels and norms
grow like ``e^t`` and leave double precision past ``t = 709``."""
ACTIVATIONS_HELP = ", ".join(KNOWN_ACTIVATIONS)
"""The activations a flag accepts, for its ``--help`` text."""

# item checks for errors.check_items (the errors.py validators with their bounds filled in)
known_activation = partial(check_choice, accepted=KNOWN_ACTIVATIONS)
positive_int = partial(check_int, low=1)
