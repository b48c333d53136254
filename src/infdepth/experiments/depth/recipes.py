"""Named learned-depth recipes: the knobs of issue 24, one at a time and combined.

A recipe is a set of :class:`infdepth.experiments.depth.images.Config` settings that
changes only how the g-infinity CNN learns its depth; ``paper`` is the published recipe
(every knob at its default).  ``infdepth study --recipes`` trains one member per recipe
and seed, beside the fixed depths, so each knob is compared with the same test set.
"""

from __future__ import annotations

from typing import Any

#: recipe name -> images.Config settings (``paper``: the defaults, the reproductions' recipe)
RECIPES: dict[str, dict[str, Any]] = {
    "paper": {},
    # w moves too slowly: its own parameter group with a 10x learning rate
    "w-lr10": {"w_lr": 10.0},
    # start deep and let the penalty and the data pull w down
    "w0-3": {"w0": 3.0},
    # a new sub-layer enters as the zero function instead of BatchNorm-normalised noise
    "zero-init": {"zero_init": True},
    # the gamma penalty's gate does not pull w down
    "detached": {"penalty_gate": "detached"},
    # a softer gate: the gradient reaches w through a longer ramp
    "soft-gate": {"alpha": 0.5},
    # learn the depth for half the budget, round it, train the fixed network for the rest
    "learn-then-fix": {"fix_depth_at": 0.5},
    # combinations
    "w0-3+zero-init": {"w0": 3.0, "zero_init": True},
    "w0-3+fix": {"w0": 3.0, "fix_depth_at": 0.5},
    "w0-3+zero-init+fix": {"w0": 3.0, "zero_init": True, "fix_depth_at": 0.5},
    "w-lr10+zero-init+fix": {"w_lr": 10.0, "zero_init": True, "fix_depth_at": 0.5},
    # zero-init opens the gates within the first epochs (full scale, seed 0: 2 / 3 / 3 active
    # sub-layers from epoch 1 to 6) and then overshoots; fix the depth after a fifth of the budget
    "zero-init+early-fix": {"zero_init": True, "fix_depth_at": 0.2},
}


def recipe_settings(name: str) -> dict[str, Any]:
    """The settings of recipe ``name`` (a copy)."""
    return dict(RECIPES[name])
