"""Optimizer parameter groups that give the depths ``w`` settings of their own.

``w`` is one scalar per layer among all the network's weights; an optimizer whose step
does not scale with the gradient (Adadelta, Adam) moves it at the same pace as any
weight.  :func:`depth_param_groups` puts every layer's ``w`` (and a stretched gate's
trainable ``alpha``) in a group of its own, e.g. with a larger learning rate and no
weight decay, and every other trainable parameter in the first group::

    groups = depth_param_groups(model, lr=10.0)
    optimizer = torch.optim.Adadelta(groups, lr=1.0)

Sub-layers grown later join the first group (:func:`infdepth.depth.growth.grow` never
adds weights to the group marked ``"depth": True``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from infdepth.depth.layer import depth_layers
from infdepth.errors import InputError

#: the key that marks the depth group among an optimizer's parameter groups
DEPTH_GROUP = "depth"


def depth_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable depth parameters of ``model``: each g-infinity layer's ``w`` and gate parameters."""
    found: list[nn.Parameter] = []
    for _, layer in depth_layers(model):
        found += [p for p in (layer.w, *layer.gate.parameters()) if p.requires_grad]
    return found


def depth_param_groups(model: nn.Module, **depth_options: Any) -> list[dict[str, Any]]:
    """``[{"params": every other trainable parameter}, {"params": the depths, **depth_options}]``.

    ``depth_options`` are the depth group's own optimizer settings (``lr``, ``weight_decay``,
    ``betas``...); settings left out take the optimizer's defaults, as for any group.
    Parameters keep the model's order within each group, so an optimizer built again on the
    same model (a resume) has the same layout.

    Raises:
        InputError: ``model`` has no g-infinity layer with a trainable ``w``.
    """
    depths = depth_parameters(model)
    if not depths:
        raise InputError("depth_param_groups: the model has no InfiniteDepth layer with a trainable w")
    if "params" in depth_options or DEPTH_GROUP in depth_options:
        raise InputError("depth_param_groups: pass the depth group's settings only, not 'params'")
    ids = {id(p) for p in depths}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    return [{"params": rest}, {"params": depths, DEPTH_GROUP: True, **depth_options}]
