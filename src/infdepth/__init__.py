"""infdepth: infinitely deep neural networks in PyTorch.

Three routes to infinite depth:

* learned depth: :class:`InfiniteDepth`, the g-infinity meta-layer (Meier, 2018);
* continuous depth: :func:`odeint` and :class:`ODEBlock` (neural ODEs);
* depth limits: random residual networks and their diffusion and kernel limits
  (:mod:`infdepth.limits`).
"""

from infdepth import (
    _interrupt,  # noqa: F401  (first: Ctrl-C while the command starts)
    limits,
    ode,
)
from infdepth.depth import (
    ExpGate,
    FixedBatchNorm,
    Gate,
    InfiniteDepth,
    StretchedGate,
    UnregisteredGrowthWarning,
    attach,
    depth_layers,
    grow,
    total_penalty,
    update_average,
)
from infdepth.errors import DivergenceError, InputError
from infdepth.limits import (
    InfiniteDepthKernel,
    ResNetSDE,
    gp_posterior,
    infinite_kernels,
    kernel_regression,
    linear_norm_law,
    relu_width1_law,
    simulate,
    simulate_resnet,
)
from infdepth.ode import (
    RK4,
    Adjoint,
    Backprop,
    Bosh3,
    Checkpointed,
    Dopri5,
    Euler,
    Heun,
    Midpoint,
    ODEBlock,
    PIController,
    Tsit5,
    odeint,
)
from infdepth.train import FitConfig, FitResult, HasPenalty, fit, model_penalty

__version__ = "0.1.0"

__all__ = [
    "RK4",
    "Adjoint",
    "Backprop",
    "Bosh3",
    "Checkpointed",
    "Dopri5",
    "Euler",
    "Heun",
    "InfiniteDepthKernel",
    "Midpoint",
    "ODEBlock",
    "PIController",
    "ResNetSDE",
    "Tsit5",
    "gp_posterior",
    "infinite_kernels",
    "kernel_regression",
    "limits",
    "linear_norm_law",
    "odeint",
    "relu_width1_law",
    "simulate",
    "simulate_resnet",
    "ode",
    "DivergenceError",
    "ExpGate",
    "FitConfig",
    "FitResult",
    "FixedBatchNorm",
    "Gate",
    "HasPenalty",
    "InfiniteDepth",
    "InputError",
    "StretchedGate",
    "UnregisteredGrowthWarning",
    "__version__",
    "attach",
    "depth_layers",
    "fit",
    "grow",
    "model_penalty",
    "total_penalty",
    "update_average",
]
