"""Growing g-infinity layers during training without losing optimizer state.

The original Keras code rebuilt the model whenever a layer grew and so lost the
optimizer's state (Adam moments).  Here new sub-layers' parameters are appended
to the *existing* optimizer's parameter group; the state of every old parameter
is untouched.  Each group's parameters are kept in the model's parameter order,
so that an optimizer built afresh on the grown model (as ``--resume`` does) has
the same layout and loads the saved state into the right tensors.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.swa_utils import AveragedModel

from infdepth.depth.events import growth_events
from infdepth.depth.layer import InfiniteDepth, depth_layers
from infdepth.errors import InputError


def _group_of(optimizer: Optimizer, layer: InfiniteDepth) -> dict:
    """The parameter group holding the layer's sub-layer parameters (else its ``w``, else the first)."""
    ids_blocks = {id(p) for p in layer.blocks.parameters()}
    for group in optimizer.param_groups:
        if any(id(p) in ids_blocks for p in group["params"]):
            return group
    for group in optimizer.param_groups:
        # never the group of depths alone (depth_param_groups marks it): its settings are w's
        if not group.get("depth") and any(p is layer.w for p in group["params"]):
            return group
    return next((g for g in optimizer.param_groups if not g.get("depth")), optimizer.param_groups[0])


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


def register_built(model: nn.Module, optimizer: Optimizer) -> int:
    """Hand every built sub-layer parameter of ``model`` that ``optimizer`` lacks to it.

    Read from the model and the optimizer on every call.  Returns how many joined.
    """
    known = {id(p) for g in optimizer.param_groups for p in g["params"]}
    added = 0
    for _, layer in depth_layers(model):
        fresh = [p for p in layer.blocks.parameters() if p.requires_grad and id(p) not in known]
        if fresh:
            register_parameters(optimizer, model, layer, fresh)
            known.update(id(p) for p in fresh)
            added += len(fresh)
    return added


def grow_to_state(model: nn.Module, optimizer: Optimizer, state: dict) -> None:
    """Grow ``model`` until ``optimizer`` holds as many parameters per group as ``state`` does.

    For an optimizer state saved from a grown model and loaded into an optimizer of a
    model that has not grown as far (the model's own ``state_dict`` was not loaded first):
    a group short of parameters grows the one g-infinity layer whose sub-layers it holds.

    Raises:
        InputError: a group is short of parameters and no single layer of it can make up
            the difference in whole sub-layers.
    """
    register_built(model, optimizer)
    saved = state.get("param_groups", [])
    if len(saved) != len(optimizer.param_groups):
        return  # torch's own check names this
    for g, (saved_group, group) in enumerate(zip(saved, optimizer.param_groups)):
        short = len(saved_group["params"]) - len(group["params"])
        if short <= 0:
            continue
        layers = [layer for _, layer in depth_layers(model) if _group_of(optimizer, layer) is group]
        per = 0
        if len(layers) == 1:
            probe = layers[0].blocks[0] if layers[0].blocks else layers[0]._build(0)
            per = sum(1 for p in probe.parameters() if p.requires_grad)
        if per == 0 or short % per:
            raise InputError(
                f"the optimizer state to load holds {len(saved_group['params'])} parameters in "
                f"group {g}, the optimizer {len(group['params'])} after registering every built "
                "sub-layer; load the model's state_dict first (it builds the sub-layers the "
                "checkpoint holds), then the optimizer's"
            )
        layer = layers[0]
        layer.grow(layer.built_blocks + short // per)
        register_built(model, optimizer)


def update_average(averaged: AveragedModel, model: nn.Module) -> None:
    """``averaged.update_parameters(model)`` for a model whose g-infinity layers grow.

    :class:`torch.optim.swa_utils.AveragedModel` pairs parameters by position, so after a
    growth of ``model`` its average would pair a new sub-layer with whatever follows the
    layer.  Here the averaged copy first grows the same sub-layers, each starting from the
    model's current values (the average of a parameter that has just appeared is itself),
    and then the average is updated: every averaged parameter follows the parameter of the
    same name.
    """
    inner = averaged.module
    for name, layer in depth_layers(model):
        copy = inner.get_submodule(name) if name else inner
        if not isinstance(copy, InfiniteDepth):
            raise InputError(f"the averaged model has no InfiniteDepth layer at {name!r}")
        start = copy.built_blocks
        if layer.built_blocks > start:
            copy.grow(layer.built_blocks)
            with torch.no_grad():
                for i in range(start, layer.built_blocks):
                    copy.blocks[i].load_state_dict(layer.blocks[i].state_dict())
    averaged.update_parameters(model)


def grow(model: nn.Module, optimizer: Optimizer | None = None) -> dict[str, int]:
    """Grow every g-infinity layer of ``model`` to the sub-layers its ``w`` needs; the one owner of growth.

    Each layer answers how many sub-layers it needs (``ceil(w)``, built in chunks of
    ``grow_step``) and builds them.  Every sub-layer parameter that ``optimizer`` does not
    hold yet (built here, or earlier by a ``forward``/``penalty`` that met a larger ``w``)
    joins it, keeping the state of every old parameter.  Both are read from the model and
    the optimizer whenever sub-layers were built (by anyone) since the last call for this
    model and optimizer: between calls only the count of growth events is remembered
    (:mod:`infdepth.depth.events`), so a call without growth reads each ``w`` and compares
    one integer.  Returns ``{layer name: new sub-layer count}`` for the layers that grew
    (empty when nothing grew).
    """
    grown: dict[str, int] = {}
    for name, layer in depth_layers(model):
        new = layer.grow()
        if new:
            grown[name or "<root>"] = len(new)
    if optimizer is not None:
        events = growth_events()
        seen = _REGISTERED.setdefault(optimizer, weakref.WeakKeyDictionary())
        if seen.get(model) != events:  # something was built since this pair's last look
            register_built(model, optimizer)
            seen[model] = events
    return grown


# optimizer -> model -> growth_events() when grow last handed the model's sub-layers to it:
# an event count (events.py), no copy of a parameter, so a step without growth skips the
# scan of the optimizer's parameters
_REGISTERED: weakref.WeakKeyDictionary[Optimizer, weakref.WeakKeyDictionary[nn.Module, int]] = (
    weakref.WeakKeyDictionary()
)
