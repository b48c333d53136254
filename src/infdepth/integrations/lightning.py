"""Learned depth under PyTorch Lightning: the :class:`LearnedDepth` callback.

``Trainer(callbacks=[LearnedDepth()])`` makes a ``LightningModule`` holding
:class:`~infdepth.InfiniteDepth` layers (or any module with a ``penalty()``) train as
:func:`infdepth.fit` does:

* the penalty of every submodule (:func:`infdepth.model_penalty`) is added to the loss
  that ``training_step`` returns (inside the DDP forward, where DDP sees ``w``'s use); a
  g-infinity layer's penalty comes with its forward, so ``w`` is read to the host once
  per layer and step (``w`` is logged as a tensor, read when Lightning writes its logs);
* every optimizer Lightning made is attached (:func:`infdepth.attach`): sub-layers built
  since the last step join it before the next step, and ``Trainer.fit(ckpt_path=...)``
  loads the optimizer state of a grown model;
* a layer's forward builds the sub-layers its ``w`` needs, and they join the optimizer
  before the update of that step; under DDP the layers also grow after every optimizer
  step and the wrapper is rebuilt after a growth (DDP fixes its parameter set when it is
  made), with unused sub-layers allowed (``find_unused_parameters=True``), so
  ``strategy="ddp"`` keeps the ranks in lockstep.  The sub-layer seed is a buffer, which
  DDP broadcasts from rank 0.

``LightningModule.load_from_checkpoint`` of a grown model needs nothing: the layers grow
to the sub-layers the checkpoint holds when its ``state_dict`` is loaded.

Lightning is imported by this module only (``pip install infdepth[lightning]``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer

from infdepth.depth.attach import Attachment, attach
from infdepth.depth.collect import collect_penalties
from infdepth.depth.growth import grow
from infdepth.depth.layer import depth_layers
from infdepth.train import model_penalty


class LearnedDepth(pl.Callback):
    """Penalty, growth and optimizer registration of learned depth for a Lightning ``Trainer``.

    Args:
        log: log each layer's ``w`` (as ``w/<layer name>``) and the penalty every step.
    """

    def __init__(self, *, log: bool = True) -> None:
        self.log = log
        self._attachments: list[Attachment] = []
        self._step: Any = None

    # ---------------------------------------------------------------- the penalty
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or "training_step" in vars(pl_module):
            return
        original = pl_module.training_step
        log = self.log

        @functools.wraps(original)
        def training_step(*args: Any, **kwargs: Any) -> Any:
            # each g-infinity layer's penalty comes with its forward, at the w it read there:
            # one host read of w per layer and step (w is logged as a tensor, read when
            # Lightning writes its logs)
            with collect_penalties() as produced:
                out = original(*args, **kwargs)
            penalty = model_penalty(pl_module, produced)
            if log:
                pl_module.log("penalty", penalty.detach(), on_step=True, on_epoch=False)
                for name, layer in depth_layers(pl_module):
                    pl_module.log(f"w/{name or 'layer'}", layer.w.detach(), on_step=True, on_epoch=False)
            if isinstance(out, Tensor):
                return out + penalty
            if isinstance(out, Mapping) and "loss" in out:
                return {**out, "loss": out["loss"] + penalty}
            return out  # None: the step is skipped

        pl_module.training_step = training_step  # type: ignore[method-assign]
        self._step = training_step

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._step is not None and vars(pl_module).get("training_step") is self._step:
            del pl_module.training_step
        self._step = None
        for attachment in self._attachments:
            attachment.remove()
        self._attachments = []

    # ---------------------------------------------------------------- growth
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after Lightning made the optimizers, before it loads their state (ckpt_path=)
        self._attachments = [attach(pl_module, opt) for opt in trainer.optimizers]
        grow(pl_module)
        self._rewrap(trainer, pl_module)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        # Lightning runs training_step inside optimizer.step(closure), after the attached
        # step pre-hook: the sub-layers that forward built join the optimizer here, after the
        # backward and before the update, so this step moves them (as a plain loop would)
        for attachment in self._attachments:
            if attachment.optimizer is optimizer:
                attachment.take_built()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Without DDP nothing is left to do (no read of w here).  A DDP wrapper must be
        # rebuilt over new sub-layers, in lockstep on every rank, before the next forward.
        if isinstance(trainer.strategy.model, DistributedDataParallel) and grow(pl_module):
            self._rewrap(trainer, pl_module)

    def _rewrap(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A new DDP wrapper over the grown module (unused sub-layers allowed), if DDP wraps it."""
        strategy = trainer.strategy
        if not isinstance(strategy.model, DistributedDataParallel):
            return
        kwargs = {**getattr(strategy, "_ddp_kwargs", {}), "find_unused_parameters": True}
        ids = getattr(strategy, "determine_ddp_device_ids", None)
        device_ids = ids() if ids is not None else None
        strategy.model = None  # the old wrapper's reducer goes with its last reference
        strategy.model = DistributedDataParallel(pl_module, device_ids=device_ids, **kwargs)
