"""Fused autograd functions for the common case (exp or stretched gate with a fixed alpha).

The gate values depend only on the scalar ``w``, which the layer reads on the host
once per update anyway (to know how many sub-layers to run).  Computing
``delta_w(i)`` and its derivative there in double precision, and writing the
backward pass by hand, replaces about a dozen small tensor ops per sub-layer
(gate, slice, unbind, their backward) with one in the forward and three in the
backward; for narrow layers those ops, not the matrix products, dominate a step.
Both functions are checked against the plain autograd path in the tests.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


def host_gate(x: float, w: float, alpha: float) -> tuple[float, float]:
    """``(delta, d delta / d w)`` of ``relu(1 - exp(alpha (x - w)))`` at floats ``x``, ``w``."""
    if x >= w:
        return 0.0, 0.0
    e = math.exp(alpha * (x - w))
    return 1.0 - e, alpha * e


class GatedResidual(torch.autograd.Function):
    """``x + delta * fx``; ``delta`` and ``d delta / d w`` are given as floats."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, fx: Tensor, w: Tensor, delta: float, ddelta: float) -> Tensor:
        ctx.save_for_backward(fx)
        ctx.delta, ctx.ddelta = delta, ddelta
        return torch.add(x, fx, alpha=delta)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (fx,) = ctx.saved_tensors
        grad_fx = grad * ctx.delta if ctx.needs_input_grad[1] else None
        grad_w = None
        if ctx.needs_input_grad[2]:
            grad_w = torch.vdot(grad.reshape(-1), fx.reshape(-1)) * ctx.ddelta
        return grad, grad_fx, grad_w, None, None


class GatedPenalty(torch.autograd.Function):
    """``w_scale * w**2 + block_l2 * sum_i delta_i * ||t_i||**2`` with host-side gate values.

    ``tensors[i]`` is the penalised tensor of sub-layer ``i`` (one per sub-layer).
    """

    @staticmethod
    def forward(
        ctx: Any,
        w: Tensor,
        deltas: list[float],
        ddeltas: list[float],
        w_scale: float,
        block_l2: float,
        *tensors: Tensor,
    ) -> Tensor:
        norms = [torch.dot(t.reshape(-1), t.reshape(-1)) for t in tensors]
        total = w.square().mul_(w_scale)
        for delta, norm in zip(deltas, norms):
            total.add_(norm.to(total.dtype), alpha=block_l2 * delta)
        ctx.save_for_backward(w, *tensors, *norms)
        ctx.deltas, ctx.ddeltas, ctx.w_scale, ctx.block_l2 = deltas, ddeltas, w_scale, block_l2
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        n = len(ctx.deltas)
        w, tensors, norms = ctx.saved_tensors[0], ctx.saved_tensors[1 : n + 1], ctx.saved_tensors[n + 1 :]
        grad_w = None
        if ctx.needs_input_grad[0]:
            slope = w * (2 * ctx.w_scale)
            for ddelta, norm in zip(ctx.ddeltas, norms):
                slope.add_(norm.to(slope.dtype), alpha=ctx.block_l2 * ddelta)
            grad_w = slope.mul_(grad)
        grads_t = [
            t * (grad.to(t.dtype) * (2 * ctx.block_l2 * delta)) if ctx.needs_input_grad[5 + i] else None
            for i, (t, delta) in enumerate(zip(tensors, ctx.deltas))
        ]
        return (grad_w, None, None, None, None, *grads_t)
