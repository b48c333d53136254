"""Run by the distributed tests, under torchrun or as a plain process.

Trains a small model with a g-infinity layer through ``infdepth.train.fit`` (so
growth happens) and saves each rank's final state to ``OUT/rank{RANK}.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from infdepth import distributed
from infdepth.depth import InfiniteDepth
from infdepth.train import FitConfig, fit


def main() -> None:
    out = Path(sys.argv[1])
    steps = int(sys.argv[2])
    impl = sys.argv[3] if len(sys.argv) > 3 else "default"  # default, foreach or fused
    torch.set_num_threads(1)
    ctx = distributed.setup("cpu")
    torch.manual_seed(0)
    layer = InfiniteDepth(
        lambda i: nn.Linear(8, 8), h="relu", w0=1.5, w_l2=1e-4, block_l2=1e-4, grow_step=2, seed=0
    )
    model = nn.Sequential(nn.Linear(4, 8), layer, nn.Linear(8, 1), nn.Flatten(0)).double()
    # w ascends its gradient with a large step, so that the layer grows within a few steps
    opt = torch.optim.Adam(
        [
            {"params": [p for n, p in model.named_parameters() if n != "1.w"]},
            {"params": [layer.w], "lr": 0.2, "maximize": True},
        ],
        lr=1e-2,
        **({} if impl == "default" else {impl: True}),
    )

    def batch(step: int):
        gen = torch.Generator().manual_seed(step)
        x = torch.randn(64, 4, generator=gen, dtype=torch.float64)
        return x, torch.sin(3 * x[:, 0]) * x[:, 1]

    fit(
        model,
        opt,
        batch,
        nn.MSELoss(),
        FitConfig(
            steps=steps, log_every=5, eval_every=5, checkpoint_every=5, out_dir=out / "run", progress=False
        ),
    )
    torch.save(
        {"state": model.state_dict(), "built": layer.built_blocks, "w": layer.depth, "w0": 1.5},
        out / f"rank{ctx.rank}.pt",
    )


if __name__ == "__main__":
    main()
