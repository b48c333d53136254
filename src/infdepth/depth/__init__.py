"""Learned depth: the g-infinity meta-layer of "Going Deeper: Infinite Deep Neural Networks"."""

from infdepth.depth.gates import ExpGate, Gate, StretchedGate, make_gate
from infdepth.depth.growth import grow, register_parameters
from infdepth.depth.idempotent import FixedBatchNorm
from infdepth.depth.layer import InfiniteDepth, depth_layers, total_penalty
from infdepth.depth.merges import MERGES

__all__ = [
    "MERGES",
    "ExpGate",
    "FixedBatchNorm",
    "Gate",
    "InfiniteDepth",
    "StretchedGate",
    "depth_layers",
    "grow",
    "make_gate",
    "register_parameters",
    "total_penalty",
]
