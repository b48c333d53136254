"""The name a user knows a layer by, for messages about it.

A module does not know where it sits in a model.  A message about a layer (a ``w`` beyond
``max_blocks``, sub-layers built that no optimizer holds) is rare, so it may afford to
look for the answer: the calling frames hold the model (as ``self`` of an enclosing
``forward``, or as a local such as ``model``), and the outermost module that contains the
layer gives its qualified name.  Nothing is remembered between calls.
"""

from __future__ import annotations

import sys
from types import FrameType

from torch import nn


def qualified_name(module: nn.Module, depth: int = 64) -> str | None:
    """``module``'s qualified name in the outermost model found in the calling frames."""
    best: str | None = None
    frame: FrameType | None = sys._getframe(1)
    seen: set[int] = set()
    for _ in range(depth):
        if frame is None:
            break
        for value in list(frame.f_locals.values()):
            if not isinstance(value, nn.Module) or value is module or id(value) in seen:
                continue
            seen.add(id(value))
            for name, sub in value.named_modules():
                if sub is module and (best is None or len(name) > len(best)):
                    best = name
                    break
        frame = frame.f_back
    return best


def layer_name(layer: nn.Module) -> str:
    """``"InfiniteDepth layer 'encoder.depth'"``, or without the name where none is found."""
    name = qualified_name(layer)
    kind = type(layer).__name__
    return f"{kind} layer {name!r}" if name else f"{kind} layer"


def too_many_blocks(layer: nn.Module, w: float, need: int, limit: int) -> str:
    """The refusal of a ``w`` that needs more sub-layers than ``max_blocks``."""
    return (
        f"{layer_name(layer)}: w={w:.6g} needs {need} sub-layers, more than max_blocks={limit}; "
        "nothing was built (pass a larger max_blocks, or None, if this depth is meant)"
    )
