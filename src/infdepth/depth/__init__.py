"""Learned depth: the g-infinity meta-layer of "Going Deeper: Infinite Deep Neural Networks"."""

from infdepth.depth.attach import Attachment, UnregisteredGrowthWarning, attach
from infdepth.depth.compiled import CompiledDepth
from infdepth.depth.gates import ExpGate, Gate, StretchedGate, make_gate
from infdepth.depth.growth import grow, register_parameters, update_average
from infdepth.depth.idempotent import FixedBatchNorm
from infdepth.depth.layer import InfiniteDepth, depth_layers, total_penalty
from infdepth.depth.merges import MERGES

__all__ = [
    "MERGES",
    "Attachment",
    "CompiledDepth",
    "ExpGate",
    "FixedBatchNorm",
    "Gate",
    "InfiniteDepth",
    "StretchedGate",
    "UnregisteredGrowthWarning",
    "attach",
    "depth_layers",
    "grow",
    "make_gate",
    "register_parameters",
    "total_penalty",
    "update_average",
]
