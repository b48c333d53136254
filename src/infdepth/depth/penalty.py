"""The g-infinity layer's regularisation (paper section III.C): l2 on ``w`` and the gated block penalty.

``penalty = w_l2 * w**2 + block_l2 * sum_i delta_w(i + eps) * l2(block i)`` over the used
sub-layers, where ``l2`` acts on each sub-layer's last parameterised submodule (BatchNorm:
its gamma, in the shifted form ``sum(relu(gamma**2 - shift))``).  A layer whose depth was
fixed (:meth:`InfiniteDepth.fix_depth`) keeps the block penalty with its constant gates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from infdepth.depth.fused import GatedPenalty, host_gate
from infdepth.errors import InputError

if TYPE_CHECKING:
    from infdepth.depth.layer import InfiniteDepth

#: the ``eps`` of the conditional block penalty ``delta_w(i + eps)`` (paper section III.C)
PENALTY_EPS = 1e-8


def last_parameterised(block: nn.Module) -> nn.Module:
    """The last submodule of ``block`` (in registration order) that owns parameters itself."""
    last: nn.Module | None = None
    seen: set[int] = set()

    def visit(module: nn.Module) -> None:  # block.modules() without its prefixes: a hot path
        nonlocal last
        if id(module) in seen:
            return
        seen.add(id(module))
        if any(p is not None for p in module._parameters.values()):
            last = module
        for child in module._modules.values():
            if child is not None:
                visit(child)

    visit(block)
    if last is None:
        raise InputError(f"block {block!r} has no parameters to penalise")
    return last


def penalised_tensors(layer: InfiniteDepth, i: int) -> list[tuple[Tensor, bool]]:
    """The tensors the block penalty acts on for sub-layer ``i``, with "is BatchNorm gamma"."""
    block = layer.blocks[i]
    if layer.penalised is not None:
        return [(t, False) for t in layer.penalised(block)]
    module = last_parameterised(block)  # walked on every call: the block may have changed
    if isinstance(module, _BatchNorm):
        return [] if module.weight is None else [(module.weight, True)]
    weight = getattr(module, "weight", None)
    if isinstance(weight, Tensor):
        return [(weight, False)]
    return [(p, False) for p in module.parameters(recurse=False)]

def block_norms(layer: InfiniteDepth, n: int) -> Tensor:
    """``l2`` of the penalised tensors of sub-layers ``0 .. n-1`` (shifted form for gamma)."""
    terms = []
    for i in range(n):
        parts = []
        for t, is_gamma in penalised_tensors(layer, i):
            flat = t.reshape(-1)
            if is_gamma and layer.gamma_shift != 0:
                parts.append(torch.relu(flat.square() - layer.gamma_shift).sum())
            else:  # relu(g^2 - 0) == g^2: one fused dot product
                parts.append(torch.dot(flat, flat))
        if not parts:
            terms.append(layer.w.new_zeros(()))
        else:
            terms.append(parts[0] if len(parts) == 1 else torch.stack(parts).sum())
    return torch.stack(terms)

def w_scale(layer: InfiniteDepth) -> float:
    """The factor of ``w**2`` in the penalty: ``w_l2``, times the parameters per sub-layer if scaled."""
    return layer.w_l2 * (layer.params_per_block if layer.w_penalty == "param_scaled" else 1.0)


def layer_penalty(layer: InfiniteDepth, w: float | None = None) -> Tensor:
    """``w`` penalty plus ``sum_i delta_w(i + eps) * l2(block i)`` over the used sub-layers.

    Sub-layers with ``i >= w`` have a zero gate, so they add nothing and get no gradient.
    ``w``: the value of the parameter the caller has just read to the host (the layer's
    ``forward`` does, :mod:`infdepth.depth.forward`); None reads it here.
    """
    frozen = layer.frozen_gates
    if frozen is not None:  # fixed depth: the gamma penalty with constant gates, nothing on w
        if layer.block_l2 == 0 or len(frozen) == 0:
            return layer.w.new_zeros(())
        return layer.block_l2 * torch.dot(frozen, block_norms(layer, len(frozen)))
    scale = w_scale(layer)
    detached = layer.penalty_gate == "detached"
    w = layer.depth if w is None else w
    n = layer._active(w)
    if layer.block_l2 > 0 and n > len(layer.blocks):  # w moved past the built sub-layers
        layer._grow_unregistered(w)
    alpha = layer.gate.fixed_alpha
    if layer.block_l2 > 0 and n > 0 and alpha is not None and layer.gamma_shift == 0:
        tensors = [penalised_tensors(layer, i) for i in range(n)]
        if all(len(ts) == 1 for ts in tensors):
            pairs = [host_gate(i + PENALTY_EPS, w, alpha) for i in range(n)]
            return GatedPenalty.apply(
                layer.w,
                [p[0] for p in pairs],
                [0.0 if detached else p[1] for p in pairs],
                scale,
                layer.block_l2,
                *(ts[0][0] for ts in tensors),
            )
    total = layer.w.square() * scale
    if layer.block_l2 > 0 and n > 0:
        deltas = layer.gate(layer._index(n, PENALTY_EPS), layer.w.detach() if detached else layer.w)
        total = torch.add(total, torch.dot(deltas, block_norms(layer, n)), alpha=layer.block_l2)
    return total
