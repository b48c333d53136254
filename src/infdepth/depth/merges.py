"""How a g-infinity sub-layer's output ``f_i(x)`` is merged into the running value ``x``.

* ``residual`` (the paper): ``x + f_i(x) * delta``
* ``convex`` (the original code's non-ResNet mode): ``x * (1 - delta) + f_i(x) * delta``
* ``geometric`` (paper section V.A): ``x * sqrt(f_i(x)^2 + eps) ** delta``

With ``delta = 0`` every merge returns ``x`` unchanged, so a switched-off
sub-layer is the identity whatever the merge.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from infdepth.errors import check_choice

MERGES = ("residual", "convex", "geometric")

Merge = Callable[[Tensor, Tensor, Tensor], Tensor]


def residual(x: Tensor, fx: Tensor, delta: Tensor) -> Tensor:
    """``x + fx * delta`` (one fused kernel)."""
    return torch.addcmul(x, fx, delta)


def convex(x: Tensor, fx: Tensor, delta: Tensor) -> Tensor:
    """``x * (1 - delta) + fx * delta``."""
    return torch.lerp(x, fx, delta)


def make_geometric(eps: float = 1e-8) -> Merge:
    """``x * sqrt(fx^2 + eps) ** delta``; ``eps`` keeps the base away from zero."""

    def geometric(x: Tensor, fx: Tensor, delta: Tensor) -> Tensor:
        return x * (fx.square() + eps).sqrt().pow(delta)

    return geometric


def make_merge(name: str, eps: float = 1e-8) -> Merge:
    """The merge function called ``name`` (one of :data:`MERGES`)."""
    check_choice("merge", name, MERGES)
    if name == "residual":
        return residual
    if name == "convex":
        return convex
    return make_geometric(eps)
