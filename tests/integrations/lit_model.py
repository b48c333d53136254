"""A small LightningModule with a learned-depth layer whose w grows within a few steps."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from infdepth import InfiniteDepth


class Net(pl.LightningModule):
    def __init__(self, w0: float = 1.0, reward: float = 1.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = InfiniteDepth(lambda i: nn.Sequential(nn.Linear(6, 6), nn.Tanh()), h="relu",
                                   w0=w0, w_l2=1e-2, block_l2=1e-3)
        self.net = nn.Sequential(nn.Linear(3, 6), self.layer, nn.Linear(6, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        # the -w term rewards depth: with w's learning rate of 1, w passes a chunk of
        # sub-layers within a few steps, so growth happens during training
        return nn.functional.mse_loss(self(x), y) - self.hparams.reward * self.layer.w

    def configure_optimizers(self) -> torch.optim.Optimizer:
        others = [p for n, p in self.named_parameters() if not n.endswith("layer.w")]
        return torch.optim.Adam([{"params": others, "lr": 1e-2}, {"params": [self.layer.w], "lr": 1.0}])


def data(batch_size: int = 8, n: int = 24) -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=gen)
    y = x.sum(1, keepdim=True).sin()
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def trainer(**kw: object) -> pl.Trainer:
    options: dict[str, object] = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                                      enable_progress_bar=False, enable_model_summary=False)
    options.update(kw)
    return pl.Trainer(**options)  # type: ignore[arg-type]
