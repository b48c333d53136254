"""Keras' defaults, which the original code used: glorot-uniform kernels, zero biases, BatchNorm."""

from __future__ import annotations

from typing import TypeVar

from torch import nn

M = TypeVar("M", nn.Linear, nn.Conv2d)

#: Keras BatchNormalization defaults (momentum 0.99 in Keras' convention = 0.01 in torch's)
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


def glorot(layer: M, *, frozen: bool = False) -> M:
    """Glorot-uniform kernel, zero bias (Keras' ``Dense``/``Conv2D`` defaults); ``frozen``: no gradients."""
    nn.init.xavier_uniform_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    if frozen:
        layer.requires_grad_(False)
    return layer
