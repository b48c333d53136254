"""infdepth: infinitely deep neural networks in PyTorch.

Three routes to infinite depth:

* learned depth: :class:`InfiniteDepth`, the g-infinity meta-layer (Meier, 2018);
* continuous depth: :func:`odeint` and :class:`ODEBlock` (neural ODEs);
* depth limits: random residual networks and their diffusion and kernel limits
  (:mod:`infdepth.limits`).
"""

from infdepth.errors import DivergenceError, InputError

__version__ = "0.1.0"

__all__ = [
    "DivergenceError",
    "InputError",
    "__version__",
]
