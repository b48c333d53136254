"""The tie between a model whose g-infinity layers grow and the optimizer that trains it.

:func:`attach` puts two of torch's own optimizer hooks on the optimizer:

* before every step of the optimizer, the sub-layers built since the last step (by a
  ``forward`` that met a larger ``w``, a ``load_state_dict``, :func:`grow`) join the
  optimizer, so they are stepped from the step that first gives them a gradient;
* before ``optimizer.load_state_dict(state)``, the built sub-layers join it and, if the
  state holds more parameters still, the model grows to them: the natural resume order
  ``opt = AdamW(model.parameters()); model.load_state_dict(ck); opt.load_state_dict(ck_opt)``
  works on a model that grew.

:func:`infdepth.fit` and the Lightning callback attach too.  What the optimizer holds is
read from it on every look; the hook only remembers the value of an event counter bumped
by :meth:`InfiniteDepth.grow`, so a step with no growth anywhere costs one comparison.

A ``forward`` that builds sub-layers of a model no optimizer is attached to warns once per
layer (:class:`UnregisteredGrowthWarning`), naming the layer and the fix.
"""

from __future__ import annotations

import sys
import warnings
import weakref
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle

import infdepth
from infdepth.depth.events import growth_events
from infdepth.depth.growth import grow_to_state, register_built
from infdepth.depth.layer import InfiniteDepth
from infdepth.depth.naming import layer_name

_LIVE: weakref.WeakSet[Attachment] = weakref.WeakSet()
_WARNED: weakref.WeakSet[nn.Module] = weakref.WeakSet()


class UnregisteredGrowthWarning(UserWarning):
    """Sub-layers were built that no attached optimizer will step."""


class Attachment:
    """The hooks :func:`attach` put on an optimizer; :meth:`remove` takes them off.

    The optimizer's hooks keep it alive as long as the optimizer lives.
    """

    def __init__(self, model: nn.Module, optimizer: Optimizer) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.model = model
        self.optimizer = optimizer
        self._seen: int | None = None  # growth_events() at the last look; None: look
        self._handles: list[RemovableHandle] = [
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_load_state_dict_pre_hook(self._before_load),
        ]
        _LIVE.add(self)

    def _before_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        self.take_built()

    def take_built(self) -> None:
        """Hand the optimizer the sub-layers built since its last look (no read of ``w``).

        The step pre-hook does this; call it where a step's forward runs *after* that hook,
        inside ``optimizer.step(closure)`` (Lightning's automatic optimization), so that the
        sub-layers the closure's forward built are stepped in this very step.
        """
        events = growth_events()
        if events != self._seen:
            register_built(self.model, self.optimizer)
            self._seen = events

    def _before_load(self, optimizer: Optimizer, state_dict: dict[str, Any]) -> None:
        grow_to_state(self.model, optimizer, state_dict)
        self._seen = None

    def holds(self, layer: nn.Module) -> bool:
        """Whether ``layer`` is part of the attached model."""
        return any(m is layer for m in self.model.modules())

    def remove(self) -> None:
        """Take the hooks off the optimizer."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        _LIVE.discard(self)


def attach(model: nn.Module, optimizer: Optimizer) -> Attachment:
    """Make ``optimizer`` follow the growth of ``model``'s g-infinity layers by itself.

    Call once, after making the optimizer (and before loading its state). Afterwards a
    plain loop (backward, then a step of the optimizer) steps every sub-layer from the step
    that first uses it, and ``optimizer.load_state_dict`` accepts the state of an optimizer
    of the grown model.  Every old parameter keeps its optimizer state; each group stays
    in the model's parameter order (see :func:`infdepth.grow`).  Returns the
    :class:`Attachment` (``.remove()`` detaches).
    """
    return Attachment(model, optimizer)


def warn_if_unattached(layer: InfiniteDepth, first: int, new: list[nn.Module]) -> None:
    """Warn (once per layer) that the ``new`` sub-layers from index ``first`` on joined no optimizer."""
    if not new or layer in _WARNED or any(a.holds(layer) for a in list(_LIVE)):
        return
    end = first + len(new)
    _WARNED.add(layer)
    warnings.warn(
        f"{layer_name(layer)} built sub-layers {first}..{end - 1} (w={layer.depth:.4g}) and no "
        "optimizer is attached to a model holding it, so an optimizer made before now will "
        "not step them: call infdepth.attach(model, optimizer) once after making the "
        "optimizer (infdepth.fit and the Lightning callback do), or "
        "infdepth.grow(model, optimizer) after every step",
        UnregisteredGrowthWarning,
        stacklevel=_outside_libraries(),
    )


def _outside_libraries() -> int:
    """The ``stacklevel`` of the first caller outside torch and infdepth (the user's line)."""
    skip = tuple(str(Path(m.__file__).parent) for m in (torch, infdepth) if m.__file__)
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(skip):
        frame, level = frame.f_back, level + 1
    return level
