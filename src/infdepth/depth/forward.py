"""The g-infinity layer's forward pass: one host read of ``w``, then the sub-layers.

Each forward reads ``w`` to the host once (:func:`enter`): that value decides how many
sub-layers run, builds any that are missing, and, when the caller collects penalties
(:func:`infdepth.depth.collect.collect_penalties`, as :func:`infdepth.fit` does), gives the
layer's penalty too, so a training step reads ``w`` once per layer.  Then either

* eagerly, :func:`run_eager`: with a fixed-alpha gate and the residual merge the gate
  values are computed on the host from that value and the merge has a hand-written
  backward (:mod:`infdepth.depth.fused`); otherwise plain autograd; or
* under ``torch.compile``, :func:`run_graph`: the read is the one graph break
  (:func:`enter_compiled` runs eagerly and returns the active depth, an integer dynamo
  guards on: a new depth compiles once, an old one reuses its graph), and the gates are
  computed from the ``w`` tensor inside the graph, so a change of ``w`` within the same
  depth reuses the compiled code.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from infdepth.depth.collect import penalty_wanted
from infdepth.depth.fused import GatedResidual, host_gate
from infdepth.depth.idempotent import check_idempotent
from infdepth.depth.penalty import layer_penalty

if TYPE_CHECKING:
    from infdepth.depth.layer import InfiniteDepth

# torch.compiler.disable imports torch._dynamo (about a second) when it decorates; torch's
# own lazy form does so at the first call, so importing infdepth stays light
_disable_compile = getattr(torch, "_disable_dynamo", torch.compiler.disable)

#: layer -> active depth, read by :class:`infdepth.depth.compiled.CompiledDepth` just before it
#: calls the compiled model and dropped when that call returns: inside the graph the depth
#: is then a guarded integer and the layer makes no graph break
GIVEN_DEPTHS: dict[nn.Module, int] = {}


def enter(layer: InfiniteDepth, x: Tensor) -> float | None:
    """Check ``h`` once, read ``w`` (the one host read of the step), grow to ``ceil(w)``.

    Returns the value read, or None for a layer whose depth :meth:`~InfiniteDepth.fix_depth`
    fixed (it reads nothing).  Raises :class:`~infdepth.errors.DivergenceError` for a
    non-finite ``w``.
    """
    if not layer._h_checked:
        check_idempotent(layer.h, x.detach())
        layer._h_checked = True
    if layer.frozen_gates is not None:
        return None
    w = layer.depth
    if layer._active(w) > len(layer.blocks):
        # w was set from outside (or a step jumped past the built blocks): build now; an
        # attached optimizer (infdepth.attach) takes the new parameters before its next step
        layer._grow_unregistered(w)
    return w


def record_penalty(layer: InfiniteDepth, w: float | None) -> None:
    """Hand the layer's penalty at the ``w`` just read to the collector, if one wants it."""
    sink = penalty_wanted(layer)
    if sink is not None:
        sink[layer] = layer_penalty(layer, w)


@_disable_compile
def enter_compiled(layer: InfiniteDepth, x: Tensor) -> int:
    """:func:`enter` and :func:`record_penalty`, run eagerly inside a compiled model.

    Returns the number of sub-layers to run: the only value of ``w`` the graph sees on
    the host, an integer (not the float ``w``, on which dynamo would recompile every step).
    """
    w = enter(layer, x)
    record_penalty(layer, w)
    frozen = layer.frozen_gates
    return len(frozen) if frozen is not None else layer._active(w if w is not None else 0.0)


def run_fixed(layer: InfiniteDepth, x: Tensor, gates: Tensor) -> Tensor:
    """The fixed-depth stack of :meth:`~InfiniteDepth.fix_depth`: constant gates, no ``w``."""
    h = layer.h
    for i, (block, delta) in enumerate(zip(layer.blocks, gates.unbind())):
        fx = block(x)
        if fx.shape != x.shape:
            layer._check_shape(i, x, fx)
        x = h(layer.merge(x, fx, delta))
    return h(x) if len(gates) == 0 else x


def _h_fast(h: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor] | None:
    """``h`` to apply after each sub-layer; None for the identity, ``torch.relu`` for ReLU."""
    return None if isinstance(h, nn.Identity) else torch.relu if type(h) is nn.ReLU else h


def run_eager(layer: InfiniteDepth, x: Tensor, w: float) -> Tensor:
    """The ``ceil(w)`` active sub-layers at the value ``w`` read by :func:`enter`."""
    n = layer._active(w)
    h = layer.h
    if n == 0:
        return h(x)
    h_fast = _h_fast(h)
    alpha = layer.gate.fixed_alpha
    if alpha is not None and layer.merge_name == "residual":
        for i, block in enumerate(itertools.islice(layer.blocks, n)):
            fx = block(x)
            if fx.shape != x.shape:
                layer._check_shape(i, x, fx)
            delta, ddelta = host_gate(float(i), w, alpha)
            x = GatedResidual.apply(x, fx, layer.w, delta, ddelta)
            if h_fast is not None:
                x = h_fast(x)
        return x
    deltas = layer.gate(layer._index(n), layer.w).unbind()
    return _loop(layer, x, deltas, h_fast)


def run_graph(layer: InfiniteDepth, x: Tensor, n: int) -> Tensor:
    """The ``n`` active sub-layers with the gates computed from the ``w`` tensor (traced)."""
    frozen = layer.frozen_gates
    if frozen is not None:
        return run_fixed(layer, x, frozen)
    if n == 0:
        return layer.h(x)
    deltas = layer.gate(layer._index(n), layer.w).unbind()
    return _loop(layer, x, deltas, _h_fast(layer.h))


def _loop(
    layer: InfiniteDepth, x: Tensor, deltas: tuple[Tensor, ...], h_fast: Callable[[Tensor], Tensor] | None
) -> Tensor:
    merge = layer.merge
    blocks = layer.blocks
    # indexed, not iterated: a traced graph then depends on the n sub-layers it runs, not on
    # how many are built, so a depth seen before reuses its graph after a growth
    for i, delta in enumerate(deltas):
        block = blocks._modules[str(i)]  # not blocks[i]: that guards on len(blocks)
        fx = block(x)
        if fx.shape != x.shape:
            layer._check_shape(i, x, fx)
        x = merge(x, fx, delta)
        if h_fast is not None:
            x = h_fast(x)
    return x
