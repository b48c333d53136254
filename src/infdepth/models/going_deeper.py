"""The all-g-infinity CNN of "Going Deeper" (section IV.B; REFERENCE.md section 1,
``experiment_01_mnist.py``), and the same CNN at a fixed depth.

frozen random Conv2D(c, 3x3, same) -> g-inf ``dcnn0`` [Conv2D(c) -> Dropout -> BatchNorm],
h = ReLU -> MaxPool 2x2 -> frozen Conv2D(2c) -> g-inf ``dcnn1`` [Conv2D(2c) -> Dropout ->
BatchNorm] -> MaxPool 2x2 -> Flatten -> frozen Dense(units) -> g-inf ``dfc0`` [Dense(units)
-> Dropout -> BatchNorm] -> frozen Dense(classes).  Every trainable weight is inside a
g-infinity layer.  With ``fixed_depth=K`` each g-infinity layer is replaced by ``K``
always-on residual blocks without a gate (``K = 0``: the layer is the identity).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from infdepth.depth.layer import InfiniteDepth
from infdepth.errors import InputError, check_int
from infdepth.models._keras import BN_EPS, BN_MOMENTUM, glorot

#: the g-infinity layers, in order
LAYERS = ("dcnn0", "dcnn1", "dfc0")


def conv_block(channels: int, dropout: float) -> nn.Module:
    """``f_i`` of a convolutional g-inf layer: Conv2D(3x3, same) -> Dropout -> BatchNorm (Keras)."""
    return nn.Sequential(
        glorot(nn.Conv2d(channels, channels, 3, padding=1)),
        nn.Dropout(dropout),
        nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM),
    )


def dense_block(units: int, dropout: float) -> nn.Module:
    """``f_i`` of the dense g-inf layer: Dense -> Dropout -> BatchNorm (Keras momentum and eps)."""
    return nn.Sequential(
        glorot(nn.Linear(units, units)),
        nn.Dropout(dropout),
        nn.BatchNorm1d(units, eps=BN_EPS, momentum=BN_MOMENTUM),
    )


class ResidualStack(nn.Module):
    """``depth`` always-on residual blocks, ``x <- relu(x + f_i(x))``: the no-gate baseline.

    ``depth = 0`` is the identity (no block, no ReLU): the layer is switched off.
    """

    def __init__(self, block: Callable[[int], nn.Module], depth: int, gamma_l2: float = 0.0) -> None:
        super().__init__()
        check_int("fixed_depth", depth, low=0)
        self.blocks = nn.ModuleList(block(i) for i in range(depth))
        self.gamma_l2 = gamma_l2

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = torch.relu(x + block(x))
        return x

    def penalty(self) -> Tensor | None:
        """``gamma_l2 * sum(gamma^2)`` over the blocks' BatchNorms (the g-inf block penalty, no gate)."""
        terms = [m.weight.square().sum() for m in self.modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        return self.gamma_l2 * torch.stack(terms).sum() if terms else None


class GoingDeeperCNN(nn.Module):
    """The paper's MNIST network; outputs logits (the frozen softmax layer without the softmax).

    Args:
        image_shape: ``(channels, height, width)`` of the inputs.
        classes: number of classes.
        channels: feature maps of the first conv stage (the second has twice as many).
        dense_units: width of the dense stage.
        dropout: dropout inside each sub-layer.
        conv_w_l2, dense_w_l2: l2 factor on ``w`` of the conv and dense g-inf layers.
        gamma_l2: l2 factor on each sub-layer's BatchNorm gamma.
        w0: initial ``w`` of every g-inf layer.
        grow_step: sub-layers built per growth chunk.
        fixed_depth: ``None`` for learned depth, else the always-on blocks of every layer,
            or one count per layer (``dcnn0, dcnn1, dfc0``).
        seed: seed of the sub-layers' initialisation.
        zero_init, penalty_gate: of every g-inf layer (:class:`InfiniteDepth`).
        alpha: stretch of the gate (1: the paper's ``exp`` gate).
        amp: bfloat16 autocast in ``forward``.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        classes: int,
        *,
        channels: int = 30,
        dense_units: int = 256,
        dropout: float = 0.25,
        conv_w_l2: float = 5e-5,
        dense_w_l2: float = 1e-3,
        gamma_l2: float = 1e-8,
        w0: float = 1.0,
        grow_step: int = 5,
        fixed_depth: int | tuple[int, int, int] | None = None,
        seed: int = 0,
        zero_init: bool = False,
        penalty_gate: str = "attached",
        alpha: float = 1.0,
        amp: bool = False,
    ) -> None:
        super().__init__()
        c_in, height, width = image_shape
        ch, units, p = channels, dense_units, dropout
        self.amp = amp

        if isinstance(fixed_depth, tuple) and len(fixed_depth) != len(LAYERS):
            raise InputError(f"fixed_depth={fixed_depth} is not accepted; expected one count per layer "
                             f"({', '.join(LAYERS)})")

        def layer(block: Callable[[int], nn.Module], w_l2: float, k: int) -> nn.Module:
            if fixed_depth is not None:
                depth = fixed_depth[k] if isinstance(fixed_depth, tuple) else fixed_depth
                return ResidualStack(block, depth, gamma_l2)
            return InfiniteDepth(block, h="relu", w0=w0, w_l2=w_l2, block_l2=gamma_l2,
                                 grow_step=grow_step, seed=seed * 10 + k, zero_init=zero_init,
                                 penalty_gate=penalty_gate, gate="exp" if alpha == 1.0 else "stretched",
                                 alpha=alpha)

        self.stem0 = glorot(nn.Conv2d(c_in, ch, 3, padding=1), frozen=True)
        self.dcnn0 = layer(lambda i: conv_block(ch, p), conv_w_l2, 0)
        self.stem1 = glorot(nn.Conv2d(ch, 2 * ch, 3, padding=1), frozen=True)
        self.dcnn1 = layer(lambda i: conv_block(2 * ch, p), conv_w_l2, 1)
        flat = 2 * ch * (height // 4) * (width // 4)
        if flat == 0:
            raise InputError(f"images of {height}x{width} are too small for two 2x2 poolings")
        self.fc = glorot(nn.Linear(flat, units), frozen=True)
        self.dfc0 = layer(lambda i: dense_block(units, p), dense_w_l2, 2)
        self.head = glorot(nn.Linear(units, classes), frozen=True)

    def forward(self, x: Tensor) -> Tensor:
        # channels-last convolutions are faster on CPU (oneDNN) and on recent GPUs
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.amp):
            x = F.max_pool2d(self.dcnn0(self.stem0(x)), 2)
            x = F.max_pool2d(self.dcnn1(self.stem1(x)), 2)
            x = self.dfc0(self.fc(x.flatten(1)))
            return self.head(x).float()

    def used_parameters(self) -> int:
        """Trainable parameters in use: the active sub-layers' (and ``w``) of every depth layer."""
        used = 0
        for name in LAYERS:
            layer = getattr(self, name)
            if isinstance(layer, InfiniteDepth):
                used += layer.used_parameters
            else:
                used += sum(p.numel() for p in layer.parameters() if p.requires_grad)
        return used
