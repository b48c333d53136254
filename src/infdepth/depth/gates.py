"""Depth gates ``delta_w(x)``: how much sub-layer ``x`` of a g-infinity layer is switched on.

The paper's gate is ``delta_w(x) = relu(1 - exp(x - w))``: exactly zero for
``x >= w``, close to one for ``x << w`` and non-increasing in ``x``.  The
stretched gate (paper section V.C) replaces ``x - w`` by ``alpha (x - w)`` so
that the transition is sharper (``alpha > 1``) or softer (``alpha < 1``).
Both are zero from ``x = w`` on, so a layer with depth ``w`` runs exactly
``ceil(w)`` sub-layers.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from infdepth.errors import InputError, check_choice

GATES = ("exp", "stretched")


class Gate(nn.Module):
    """Base class: ``forward(x, w)`` returns ``delta_w(x)`` elementwise.

    Subclasses must be zero for ``x >= w`` and non-increasing in ``x``.
    """

    def forward(self, x: Tensor, w: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def fixed_alpha(self) -> float | None:
        """``alpha`` if this is ``relu(1 - exp(alpha (x - w)))`` with a constant ``alpha``, else None.

        Such gates take the layer's fused fast path (:mod:`infdepth.depth.fused`).
        """
        return None


class ExpGate(Gate):
    """The paper's gate ``delta_w(x) = relu(1 - exp(x - w))``."""

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        # 1 - exp(u) == -expm1(u), exact near u = 0 where the gate switches off.
        return torch.relu(-torch.expm1(x - w))

    @property
    def fixed_alpha(self) -> float | None:
        return 1.0


class StretchedGate(Gate):
    """``delta_{w,alpha}(x) = relu(1 - exp(alpha (x - w)))`` with fixed or trainable ``alpha > 0``.

    A trainable ``alpha`` is stored as ``log_alpha`` so it stays positive.
    """

    def __init__(self, alpha: float = 1.0, trainable: bool = False) -> None:
        super().__init__()
        if not (alpha > 0 and math.isfinite(alpha)):
            raise InputError(f"alpha={alpha!r} is not accepted; expected a finite number > 0")
        log_alpha = torch.tensor(math.log(alpha))
        if trainable:
            self.log_alpha = nn.Parameter(log_alpha)
        else:
            self.register_buffer("log_alpha", log_alpha)

    @property
    def alpha(self) -> Tensor:
        """The stretch factor ``alpha``."""
        return self.log_alpha.exp()

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        return torch.relu(-torch.expm1(self.alpha * (x - w)))

    @property
    def fixed_alpha(self) -> float | None:
        if isinstance(self.log_alpha, nn.Parameter):
            return None
        return math.exp(float(self.log_alpha))

    def extra_repr(self) -> str:
        return f"alpha={self.alpha.item():.4g}, trainable={isinstance(self.log_alpha, nn.Parameter)}"


def make_gate(gate: str | Gate, alpha: float = 1.0, trainable_alpha: bool = False) -> Gate:
    """Resolve a gate given by name (``"exp"``, ``"stretched"``) or pass a :class:`Gate` through."""
    if isinstance(gate, Gate):
        return gate
    check_choice("gate", gate, GATES)
    if gate == "exp":
        return ExpGate()
    return StretchedGate(alpha, trainable_alpha)
