"""Where ``w``'s gradient comes from: the parts of ``dL/dw`` per g-infinity layer.

The objective of a g-infinity network is ``data loss + sum over layers of (w_l2 * w**2 +
block_l2 * sum_i delta_w(i + eps) * l2(block i))``; each part pulls ``w`` its own way.
:func:`dw_parts` measures the three on a batch without changing the model or the random
streams of the training it observes, so a run that logs them trains exactly as one that
does not.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from infdepth.depth.layer import depth_layers
from infdepth.depth.penalty import w_scale

#: the parts of dL/dw, in the order they are reported
PARTS = ("data", "w_l2", "block_l2")


def dw_parts(
    model: nn.Module, x: Tensor, y: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor]
) -> dict[str, dict[str, float]]:
    """``{layer name: {"data", "w_l2", "block_l2": d/dw of that part}}`` on the batch ``(x, y)``.

    The data part is taken in training mode (dropout on, BatchNorm on batch statistics), as
    the optimizer sees it; the model's buffers (running statistics), its mode and every
    random generator are restored afterwards.  Layers whose ``w`` does not train (a fixed
    depth) are left out.
    """
    layers = [(name or "layer", layer) for name, layer in depth_layers(model) if layer.w.requires_grad]
    if not layers:
        return {}
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    modes = {name: m.training for name, m in model.named_modules()}
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            model.train()
            data = torch.autograd.grad(loss_fn(model(x), y), [layer.w for _, layer in layers],
                                       allow_unused=True)
            parts: dict[str, dict[str, float]] = {}
            for (name, layer), g_data in zip(layers, data):
                w_part = 2 * w_scale(layer) * layer.depth
                (g_pen,) = torch.autograd.grad(layer.penalty(), [layer.w], allow_unused=True)
                total = 0.0 if g_pen is None else float(g_pen)
                parts[name] = {"data": 0.0 if g_data is None else float(g_data), "w_l2": w_part,
                               "block_l2": total - w_part}
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in buffers:
                    b.copy_(buffers[name])
        for name, m in model.named_modules():
            m.training = modes.get(name, m.training)
    return parts
