"""Memory against depth: a ResNet of L blocks against an ODE block of L steps.

A training step (forward, cross-entropy, backward) of ``stem -> core -> head`` on a
batch, for three cores: a ResNet with L residual blocks (L parameter sets), an ODE
block integrated with L Euler steps and differentiated by backprop through the
solver, and the same ODE block with the continuous adjoint. The claim (Chen et al.
2018): the adjoint's memory does not grow with the number of steps.

Memory is the bytes of tensors autograd keeps for the backward pass (measured with
saved-tensor hooks; this is what grows with depth), and on CUDA also the peak
allocated memory of the step. Nothing is trained, so the command runs in one process.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from infdepth.errors import check_allocatable, check_device, check_int, check_items
from infdepth.experiments._common import (
    RunContext,
    add_config_arguments,
    add_run_arguments,
    config_dict,
    count_params,
    int_list,
    option,
    pyplot,
    run_from_args,
    save_figure,
)
from infdepth.io import seed_everything, write_json
from infdepth.models.odenet import memory_probe
from infdepth.runfolder import open_run

KINDS = ("resnet", "ode-backprop", "ode-adjoint")


@dataclass(frozen=True)
class Config:
    """Depths to measure and the size of the network and batch."""

    depths: tuple[int, ...] = option((1, 2, 4, 8, 16, 32, 64, 128),
                                     "comma-separated depths L (ResNet blocks = Euler steps)", type=int_list)
    width: int = option(64, "hidden width of every block")
    batch: int = option(128, "batch size of the training step")
    inputs: int = option(64, "input features", cli=False)
    classes: int = option(10, "classes of the head", cli=False)
    seed: int = option(0, "seed of weights and data")
    device: str = option("cpu", "torch device, e.g. cpu or cuda")

    def __post_init__(self) -> None:
        # an ODE block stops after 10,000 steps, and depth L is L Euler steps
        check_items("--depths", self.depths, lambda name, d: check_int(name, d, low=1, high=10_000))
        check_int("--width", self.width, low=1)
        check_int("--batch", self.batch, low=1)
        check_int("inputs", self.inputs, low=1)
        check_int("classes", self.classes, low=2)
        check_int("--seed", self.seed, low=0)
        check_device("--device", self.device)
        check_allocatable(f"--width={self.width}", 2 * self.width * self.width)
        deepest = max(self.depths)
        check_allocatable(f"--depths={deepest} with --width={self.width}", 2 * deepest * self.width**2)
        check_allocatable(f"--batch={self.batch}", self.batch * max(self.width, self.inputs) * deepest)


@dataclass(frozen=True)
class MemoryRow:
    """One measurement."""

    kind: str
    depth: int
    saved_bytes: int
    cuda_peak_bytes: int | None
    params: int
    seconds: float


class _SavedBytes:
    """Sum of distinct storages autograd saves for backward."""

    def __init__(self) -> None:
        self.storages: dict[int, int] = {}

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        storage = x.untyped_storage()
        self.storages[storage.data_ptr()] = storage.nbytes()
        return x

    @staticmethod
    def unpack(x: torch.Tensor) -> torch.Tensor:
        return x

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def measure(kind: str, depth: int, config: Config) -> MemoryRow:
    """Memory and time of one training step."""
    device = torch.device(config.device)
    gen = torch.Generator().manual_seed(config.seed)
    model = memory_probe(kind, depth, width=config.width, inputs=config.inputs,
                         classes=config.classes).to(device)
    x = torch.randn(config.batch, config.inputs, generator=gen).to(device)
    y = torch.randint(0, config.classes, (config.batch,), generator=gen).to(device)
    loss_fn = nn.CrossEntropyLoss()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    saved = _SavedBytes()
    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
        loss = loss_fn(model(x), y)
    loss.backward()
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = int(torch.cuda.max_memory_allocated(device)) if cuda else None
    return MemoryRow(kind, depth, saved.total, peak, count_params(model), seconds)


def run(config: Config, ctx: RunContext) -> dict[str, Any]:
    """Measure every kind at every depth; write ``summary.json`` and ``memory_vs_depth.png``."""
    open_run(ctx.out, {**config_dict(config), "world_size": ctx.dist.world}, resume=False,
             overwrite=ctx.overwrite, can_resume=False)
    seed_everything(config.seed)
    for kind in KINDS:  # warm up lazy initialisation so that the first timing is fair
        measure(kind, config.depths[0], config)
    jobs = [(k, d) for d in config.depths for k in KINDS]
    rows = [measure(kind, depth, config)
            for kind, depth in tqdm(jobs, desc="memory", disable=not (ctx.progress and ctx.is_main))]
    summary = {
        "rows": [asdict(r) for r in rows],
        "measure": "bytes of tensors saved for backward (autograd saved-tensor hooks)",
        "growth_ratio": {k: _ratio(rows, k, config.depths[-1], config.depths[0]) for k in KINDS},
        "world_size": ctx.dist.world,
    }
    if ctx.is_main:
        write_json(ctx.out / "summary.json", summary)
        _plot(rows, ctx.out / "memory_vs_depth.png")
    return summary


def _ratio(rows: list[MemoryRow], kind: str, deep: int, shallow: int) -> float:
    by = {(r.kind, r.depth): r.saved_bytes for r in rows}
    return by[(kind, deep)] / by[(kind, shallow)]


def _plot(rows: list[MemoryRow], path: Path) -> None:
    fig, ax = pyplot().subplots(figsize=(5.5, 3.8))
    labels = {"resnet": "ResNet (L blocks)", "ode-backprop": "ODE block, backprop",
              "ode-adjoint": "ODE block, adjoint"}
    for kind in KINDS:
        pts = [(r.depth, r.saved_bytes / 2**20) for r in rows if r.kind == kind]
        ax.plot(*zip(*pts, strict=True), marker="o", label=labels[kind])
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("depth L (blocks or Euler steps)")
    ax.set_ylabel("memory saved for backward (MiB)")
    ax.set_title("Training-step memory against depth")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    save_figure(fig, path)


def table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table: depth against MiB for each kind (``rows`` as in ``summary.json``)."""
    depths = sorted({r["depth"] for r in rows})
    by = {(r["kind"], r["depth"]): r["saved_bytes"] / 2**20 for r in rows}
    lines = ["depth " + " ".join(f"{k:>14}" for k in KINDS)]
    for d in depths:
        lines.append(f"{d:>5} " + " ".join(f"{by[(k, d)]:>13.3f}M" for k in KINDS))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``ode memory``: one per :class:`Config` field, and the run folder."""
    add_config_arguments(parser, Config)
    add_run_arguments(parser, "runs/ode-memory")


def main(args: argparse.Namespace) -> int:
    """Validate the flags, measure, print the table."""
    summary, ctx = run_from_args(Config, run, args)
    ctx.say(table(summary["rows"]))
    ctx.say(f"wrote {ctx.out / 'summary.json'} and {ctx.out / 'memory_vs_depth.png'}")
    return 0


def register(sub: Any) -> None:
    """Add ``memory`` to the ``ode`` subcommands (not data-parallel: exits 2 under torchrun)."""
    p = sub.add_parser(
        "memory", help="memory of a training step against depth",
        description="Memory a training step keeps for backward (and the CUDA peak): ResNet with L "
        "blocks, ODE block with L Euler steps by backprop, and by the adjoint.",
    )
    add_arguments(p)
    p.set_defaults(func=main)
