"""Multi-process training through ``torch.distributed`` (torchrun): the small seam ``fit`` uses.

Under ``torchrun`` the environment names the rank and world size; :func:`setup`
initialises the process group (NCCL on CUDA, gloo on CPU).  Without it everything
here is a no-op and training runs in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistContext:
    """Rank and world size of this process (``rank=0, world=1`` when not distributed)."""

    rank: int = 0
    world: int = 1

    @property
    def enabled(self) -> bool:
        """True when more than one process trains together."""
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """True on the process that writes metrics, checkpoints and figures."""
        return self.rank == 0

    def shard(self, x: Tensor) -> Tensor:
        """This rank's contiguous slice of a global batch (first dimension)."""
        if not self.enabled:
            return x
        return x.tensor_split(self.world)[self.rank]

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel (unused sub-layers allowed), or as is."""
        if not self.enabled or not any(p.requires_grad for p in model.parameters()):
            return model  # nothing to average (e.g. a fixed-depth-0 network: every weight frozen)
        device_ids = [model_device(model).index] if model_device(model).type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)

    def rewrap(self, wrapped: nn.Module, model: nn.Module) -> nn.Module:
        """A fresh DDP wrapper after ``model`` grew.

        DDP fixes its parameter set (and gradient buckets) at construction, so new
        sub-layers need a new wrapper.  Its constructor broadcasts rank 0's parameters,
        which also re-asserts that every rank holds the same values.  The old wrapper goes
        with the caller's last reference to it, and its reducer's destructor removes the
        gradient hooks it put on the shared parameters (public behaviour, no private call;
        tests/distributed/test_ddp.py checks the old wrapper is gone and growth keeps the
        ranks identical).
        """
        del wrapped
        return self.wrap(model)

    def barrier(self) -> None:
        """Wait for every rank (no-op in one process)."""
        if self.enabled:
            dist.barrier()


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameterless model)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def setup(device: str = "cpu") -> DistContext:
    """Join the process group if launched by torchrun; return this process's context.

    Uses NCCL for CUDA devices and gloo otherwise.  Safe to call twice.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return DistContext(rank=dist.get_rank(), world=dist.get_world_size())


def current() -> DistContext:
    """The context of an already initialised process group (or the single-process one)."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(rank=dist.get_rank(), world=dist.get_world_size())
    return DistContext()


def local_device(device: str) -> str:
    """Map ``"cuda"`` to this rank's GPU under torchrun (``cuda:LOCAL_RANK``)."""
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return device


def all_equal_depths(depths: list[float]) -> list[float]:
    """Rank 0's depths on every rank, so that growth decisions are taken in lockstep."""
    ctx = current()
    if not ctx.enabled or not depths:
        return depths
    t = torch.tensor(depths, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.broadcast(t, src=0)
    return t.cpu().tolist()


def mean_over_ranks(values: dict[str, Tensor | float]) -> dict[str, float]:
    """Average scalar metrics over the ranks (one collective); floats as they are in one process."""
    ctx = current()
    if not ctx.enabled or not values:
        return {k: float(v) for k, v in values.items()}
    t = torch.stack([torch.as_tensor(v, dtype=torch.float64).reshape(()).cpu() for v in values.values()])
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return dict(zip(values, (t / ctx.world).cpu().tolist()))
