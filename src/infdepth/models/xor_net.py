"""The XOR network of "Going Deeper" (section IV.A, REFERENCE.md section 1).

Frozen random Dense(inputs -> width, ReLU) -> g-infinity layer
[f_i = Dense(width) -> BatchNorm (gamma l2) -> Dropout, h = ReLU] -> frozen random
Dense(width -> 1).  Only the g-infinity layer trains; the output is a logit.
"""

from __future__ import annotations

import torch
from torch import nn

from infdepth.depth.layer import InfiniteDepth
from infdepth.models._keras import BN_EPS, BN_MOMENTUM, glorot
from infdepth.models.xor_inputs import INPUTS as INPUTS  # re-exported: the network's default


def xor_block(width: int, dropout: float) -> nn.Module:
    """``f_i``: Dense(width) -> BatchNorm (Keras momentum and eps) -> Dropout."""
    return nn.Sequential(
        glorot(nn.Linear(width, width)),
        nn.BatchNorm1d(width, eps=BN_EPS, momentum=BN_MOMENTUM),
        nn.Dropout(dropout),
    )


def xor_net(
    *,
    width: int = 24,
    dropout: float = 0.1,
    w0: float = 1.0,
    w_l2: float = 1e-4,
    gamma_l2: float = 1e-8,
    grow_step: int = 5,
    seed: int = 0,
    inputs: int = INPUTS,
) -> nn.Sequential:
    """The paper's XOR network, initialised from ``seed``; only the g-infinity layer trains."""
    torch.manual_seed(seed)
    stem = glorot(nn.Linear(inputs, width), frozen=True)
    head = glorot(nn.Linear(width, 1), frozen=True)
    layer = InfiniteDepth(
        lambda i: xor_block(width, dropout),
        h="relu",
        w0=w0,
        w_l2=w_l2,
        block_l2=gamma_l2,
        grow_step=grow_step,
        seed=seed,
    )
    return nn.Sequential(stem, nn.ReLU(), layer, head, nn.Flatten(0))
