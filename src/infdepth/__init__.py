"""infdepth: infinitely deep neural networks in PyTorch.

Three routes to infinite depth:

* learned depth: :class:`InfiniteDepth`, the g-infinity meta-layer (Meier, 2018);
* continuous depth: :func:`odeint` and :class:`ODEBlock` (neural ODEs);
* depth limits: random residual networks and their diffusion and kernel limits
  (:mod:`infdepth.limits`).
"""

from infdepth.depth import (
    ExpGate,
    FixedBatchNorm,
    Gate,
    InfiniteDepth,
    StretchedGate,
    depth_layers,
    grow,
    total_penalty,
)
from infdepth.errors import DivergenceError, InputError
from infdepth.train import FitConfig, FitResult, fit

__version__ = "0.1.0"

__all__ = [
    "DivergenceError",
    "ExpGate",
    "FitConfig",
    "FitResult",
    "FixedBatchNorm",
    "Gate",
    "InfiniteDepth",
    "InputError",
    "StretchedGate",
    "__version__",
    "depth_layers",
    "fit",
    "grow",
    "total_penalty",
]
