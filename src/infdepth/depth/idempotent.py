"""The idempotent map ``h`` applied after every g-infinity sub-layer.

The meta-layer needs ``h(h(x)) == h(x)`` so that ``g_inf = h(g_n)`` does not
depend on how many times ``h`` was applied.  Built-in choices are the identity,
ReLU and a batch normalisation with fixed ``gamma = 1``, ``beta = 0`` that always
uses batch statistics (with running statistics it would not be idempotent).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from infdepth.errors import InputError

H_NAMES = ("identity", "relu", "batchnorm")


class FixedBatchNorm(nn.Module):
    """Batch normalisation over every dimension but the channel dimension 1, no affine part.

    Idempotent up to ``eps``: normalising a normalised batch changes it by
    ``O(eps)``.
    """

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, None, None, training=True, eps=self.eps)


def make_h(h: str | nn.Module | Callable[[Tensor], Tensor]) -> nn.Module | Callable[[Tensor], Tensor]:
    """Resolve ``h`` given by name (one of :data:`H_NAMES`) or pass a module / callable through."""
    if isinstance(h, str):
        if h == "identity":
            return nn.Identity()
        if h == "relu":
            return nn.ReLU()
        if h == "batchnorm":
            return FixedBatchNorm()
        raise InputError(
            f"h={h!r} is not accepted; choose one of {', '.join(map(repr, H_NAMES))} "
            "or pass an idempotent module (h(h(x)) == h(x))"
        )
    if not callable(h):
        raise InputError(f"h={h!r} is not accepted; expected a name, an nn.Module or a callable")
    return h


def check_idempotent(
    h: Callable[[Tensor], Tensor], sample: Tensor, *, rtol: float = 1e-4, atol: float = 1e-4
) -> None:
    """Raise :class:`InputError` unless ``h(h(sample))`` equals ``h(sample)`` within tolerance."""
    with torch.no_grad():
        once = h(sample)
        twice = h(once)
    if once.shape != twice.shape or not torch.allclose(once, twice, rtol=rtol, atol=atol):
        gap = (twice - once).abs().max().item() if once.shape == twice.shape else float("nan")
        raise InputError(
            f"h={h!r} is not idempotent: max |h(h(x)) - h(x)| = {gap:.3g} on a sample of shape "
            f"{tuple(sample.shape)}; accepted: 'identity', 'relu', 'batchnorm' or any module "
            "with h(h(x)) == h(x)"
        )
