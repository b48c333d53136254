"""Trainable finite ResNets in the NTK parameterisation, whose kernels are those of
:mod:`infdepth.limits.kernels` when width and depth go to infinity.

``f(x) = v . Y_L(x) / sqrt(n)``, ``Y_0 = W_in x / sqrt(d)`` and
``Y_l = Y_{l-1} + sqrt(h) (sigma_w V_l phi(Y_{l-1}) / sqrt(n) + sigma_b beta_l)``,
``h = t1 / L``, every parameter (``W_in``, ``V_l``, ``beta_l``, ``v``) standard normal.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from infdepth.errors import check_float, check_int
from infdepth.limits._activation import Activation, resolve_activation


class FiniteResNet(nn.Module):
    """Width-``n``, depth-``L`` fully connected ResNet with i.i.d. standard normal parameters."""

    def __init__(self, in_features: int, width: int, depth: int, out_features: int = 1, *,
                 activation: str | Callable[[Tensor], Tensor] | Activation = "relu",
                 t1: float = 1.0, sigma_b: float = 0.0, sigma_w: float = 1.0,
                 generator: torch.Generator | None = None, dtype: torch.dtype | None = None
                 ) -> None:
        super().__init__()
        check_int("in_features", in_features, low=1)
        self.width = check_int("width", width, low=1)
        self.depth = check_int("depth", depth, low=1)
        check_int("out_features", out_features, low=1)
        self.phi = resolve_activation(activation)
        self.h = check_float("t1", t1, low=0.0, strict=True) / depth
        self.sigma_b = check_float("sigma_b", sigma_b, low=0.0)
        self.sigma_w = check_float("sigma_w", sigma_w, low=0.0)

        def normal(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape, generator=generator, dtype=dtype))

        self.w_in = normal(width, in_features)
        self.v = nn.ParameterList([normal(width, width) for _ in range(depth)])
        self.beta = nn.ParameterList([normal(width) for _ in range(depth)]) if sigma_b > 0 \
            else nn.ParameterList()
        self.readout = normal(out_features, width)

    def features(self, x: Tensor) -> Tensor:
        """Pre-activations ``Y_L(x)``, shape ``(batch, width)``."""
        y = x @ self.w_in.T / math.sqrt(self.w_in.shape[1])
        scale = math.sqrt(self.h) * self.sigma_w / math.sqrt(self.width)
        for layer, v in enumerate(self.v):
            y = y + scale * (self.phi(y) @ v.T)
            if self.sigma_b > 0:
                y = y + math.sqrt(self.h) * self.sigma_b * self.beta[layer]
        return y

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x) @ self.readout.T / math.sqrt(self.width)


def empirical_ntk(model: nn.Module, x1: Tensor, x2: Tensor | None = None) -> Tensor:
    """``sum_p df(x1_i)/dp df(x2_j)/dp`` for a scalar-output ``model`` (one gradient per input)."""
    params = [p for p in model.parameters() if p.requires_grad]

    def jac(x: Tensor) -> Tensor:
        rows = []
        for i in range(x.shape[0]):
            out = model(x[i : i + 1]).sum()
            grads = torch.autograd.grad(out, params)
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
        return torch.stack(rows)

    j1 = jac(x1)
    j2 = j1 if x2 is None else jac(x2)
    return j1 @ j2.T
