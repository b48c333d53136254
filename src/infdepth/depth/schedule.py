"""Learn-then-fix: learn the depth for a while, then train the network at that fixed depth.

:class:`FixDepthAt` is a step scheduler (``step()``, ``state_dict()``,
``load_state_dict()``, like an LR scheduler) for :func:`infdepth.train.fit` or any loop:
at the given step it calls :meth:`~infdepth.depth.InfiniteDepth.fix_depth` on every
g-infinity layer of the model.  The fixed depth lives in the layers' state (a buffer), so
a resumed run is fixed where the interrupted one was.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from infdepth.depth.layer import depth_layers
from infdepth.errors import InputError, check_int


class FixDepthAt:
    """Fix every g-infinity layer's depth after ``at`` calls of :meth:`step`.

    Args:
        model: the model whose :class:`~infdepth.depth.InfiniteDepth` layers are fixed.
        at: the step (count of :meth:`step` calls) after which the depths are fixed.
        threshold: the gate a layer's last active sub-layer needs to be kept
            (see :meth:`~infdepth.depth.InfiniteDepth.fix_depth`).
    """

    def __init__(self, model: nn.Module, at: int, threshold: float = 0.25) -> None:
        check_int("at", at, low=1)
        if not (0.0 <= threshold <= 1.0):
            raise InputError(f"threshold={threshold!r} is not accepted; expected a number in [0, 1]")
        if not depth_layers(model):
            raise InputError("FixDepthAt: the model has no InfiniteDepth layer")
        self.model = model
        self.at = at
        self.threshold = threshold
        self.steps = 0
        #: the fixed depth per layer, once fixed (``{}`` before)
        self.fixed: dict[str, int] = {}

    def step(self) -> None:
        """Count one training step; at step ``at``, fix the depths."""
        self.steps += 1
        if self.steps == self.at:
            self.fixed = {name or "layer": layer.fix_depth(self.threshold)
                          for name, layer in depth_layers(self.model)}

    def state_dict(self) -> dict[str, Any]:
        """The steps counted and the depths fixed (plain ints)."""
        return {"steps": self.steps, "at": self.at, "fixed": dict(self.fixed)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`; a state of another ``at`` is refused."""
        if int(state["at"]) != self.at:
            raise InputError(f"FixDepthAt state is for step {state['at']}, this schedule fixes at {self.at}")
        self.steps = int(state["steps"])
        self.fixed = {str(k): int(v) for k, v in state["fixed"].items()}
