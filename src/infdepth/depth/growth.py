"""Growing g-infinity layers during training without losing optimizer state.

The original Keras code rebuilt the model whenever a layer grew and so lost the
optimizer's state (Adam moments).  Here new sub-layers' parameters are appended
to the *existing* optimizer's parameter group; the state of every old parameter
is untouched.  Each group's parameters are kept in the model's parameter order,
so that an optimizer built afresh on the grown model (as ``--resume`` does) has
the same layout and loads the saved state into the right tensors.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn
from torch.optim import Optimizer

from infdepth.depth.layer import InfiniteDepth, depth_layers


def _group_of(optimizer: Optimizer, layer: InfiniteDepth) -> dict:
    """The parameter group holding the layer's sub-layer parameters (else its ``w``, else the first)."""
    ids_blocks = {id(p) for p in layer.blocks.parameters()}
    for group in optimizer.param_groups:
        if any(id(p) in ids_blocks for p in group["params"]):
            return group
    for group in optimizer.param_groups:
        if any(p is layer.w for p in group["params"]):
            return group
    return optimizer.param_groups[0]


def register_parameters(
    optimizer: Optimizer, model: nn.Module, layer: InfiniteDepth, params: Iterable[nn.Parameter]
) -> None:
    """Add ``params`` (new sub-layer parameters of ``layer``) to ``optimizer`` in canonical order."""
    group = _group_of(optimizer, layer)
    known = {id(p) for g in optimizer.param_groups for p in g["params"]}
    fresh = [p for p in params if p.requires_grad and id(p) not in known]
    if not fresh:
        return
    group["params"].extend(fresh)
    order = {id(p): k for k, p in enumerate(model.parameters())}
    group["params"].sort(key=lambda p: order.get(id(p), len(order)))


def grow(model: nn.Module, optimizer: Optimizer | None = None) -> dict[str, int]:
    """Grow every g-infinity layer of ``model`` to the sub-layers its ``w`` needs; the one owner of growth.

    Each layer answers how many sub-layers it needs (``ceil(w)``, built in chunks of
    ``grow_step``) and builds them.  Every sub-layer parameter that ``optimizer`` does not
    hold yet (built here, or earlier by a ``forward``/``penalty`` that met a larger ``w``)
    joins it, keeping the state of every old parameter.  Both are read from the model and
    the optimizer on every call: nothing is remembered between calls.  Returns ``{layer
    name: new sub-layer count}`` for the layers that grew (empty when nothing grew).
    """
    grown: dict[str, int] = {}
    known: set[int] | None = None
    for name, layer in depth_layers(model):
        new = layer.grow()
        if new:
            grown[name or "<root>"] = len(new)
        if optimizer is None:
            continue
        if known is None:
            known = {id(p) for g in optimizer.param_groups for p in g["params"]}
        fresh = [p for p in layer.blocks.parameters() if p.requires_grad and id(p) not in known]
        if fresh:
            register_parameters(optimizer, model, layer, fresh)
            known.update(id(p) for p in fresh)
    return grown
