"""``torch.compile`` of a model with g-infinity layers, without a graph break in the layers.

Under plain ``torch.compile`` each layer's host read of ``w`` is a graph break
(:func:`infdepth.depth.forward.enter_compiled`): dynamo cannot guard on a tensor's value.
:class:`CompiledDepth` does that read just before it calls the compiled model, once per
layer and call, as the layer's own ``forward`` would on entering: it builds missing
sub-layers, produces the penalty for a collecting caller
(:func:`infdepth.depth.collect.collect_penalties`) and hands each layer its active depth for
the duration of the call.  Inside the graph the depth is a plain integer dynamo guards on,
so the whole model is one graph per combination of depths, and a change of ``w`` within
the same depths reuses it.  Nothing outlives the call: the depths are read afresh for
every call and dropped when it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from infdepth.depth.forward import GIVEN_DEPTHS, record_penalty
from infdepth.depth.layer import depth_layers


class CompiledDepth(nn.Module):
    """``torch.compile(model, **options)`` whose g-infinity layers compile without a graph break.

    Use it where the compiled model would be used (``out = CompiledDepth(model)(x)``,
    ``WithPenalty(CompiledDepth(model))`` for :func:`infdepth.fit`'s step).  Each call reads
    every layer's ``w`` once (the layers that have not checked a custom ``h`` yet, and
    layers whose depth :meth:`~InfiniteDepth.fix_depth` fixed, are left to their own
    ``forward``).  ``fullgraph=True`` then works.  The parameters are ``model``'s (the
    compiled module is not a submodule, so nothing is listed twice).
    """

    _compiled: Callable[..., Any]  # set with object.__setattr__: not a submodule

    def __init__(self, model: nn.Module, **options: Any) -> None:
        super().__init__()
        self.model = model
        object.__setattr__(self, "_compiled", torch.compile(model, **options))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        given: dict[nn.Module, int] = {}
        for _, layer in depth_layers(self.model):
            if layer in given or not layer._h_checked or layer.frozen_gates is not None:
                continue
            w = layer.depth  # the one host read of this call, as the layer's forward makes it
            n = layer._active(w)
            if n > len(layer.blocks):
                layer._grow_unregistered(w)
            record_penalty(layer, w)
            given[layer] = n
        GIVEN_DEPTHS.update(given)
        try:
            return self._compiled(*args, **kwargs)
        finally:
            for done in given:
                GIVEN_DEPTHS.pop(done, None)
