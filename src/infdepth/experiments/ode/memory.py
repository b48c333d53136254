"""Memory against depth: a ResNet of L blocks against an ODE block of L steps.

A training step (forward, cross-entropy, backward) of ``stem -> core -> head`` on a
batch, for three cores: a ResNet with L residual blocks (L parameter sets), an ODE
block integrated with L Euler steps and differentiated by backprop through the
solver, and the same ODE block with the continuous adjoint. The claim (Chen et al.
2018): the adjoint's memory does not grow with the number of steps.

Memory is the bytes of tensors autograd keeps for the backward pass (measured with
saved-tensor hooks; this is what grows with depth), and on CUDA also the peak
allocated memory of the step. Nothing is trained, so the command runs in one process.

Its flags: :mod:`infdepth.experiments.ode.memory_config` (torch-free, so that ``--help`` imports
no torch).
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

from infdepth.experiments._common import (
    RunContext,
    config_dict,
    count_params,
    pyplot,
    run_from_args,
    save_figure,
)
from infdepth.experiments.ode.memory_config import (  # noqa: F401  (the flags' half, re-exported)
    Config,
    add_arguments,
    register,
)
from infdepth.io import seed_everything, write_json
from infdepth.models.odenet import memory_probe
from infdepth.runfolder import open_run

KINDS = ("resnet", "ode-backprop", "ode-adjoint")


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


def main(args: argparse.Namespace) -> int:
    """Validate the flags, measure, print the table."""
    summary, ctx = run_from_args(Config, run, args)
    ctx.say(table(summary["rows"]))
    ctx.say(f"wrote {ctx.out / 'summary.json'} and {ctx.out / 'memory_vs_depth.png'}")
    return 0
