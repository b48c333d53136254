"""Memory against depth: a ResNet of L blocks against an ODE block of L steps.

A training step (forward, cross-entropy, backward) of ``stem -> core -> head`` on a
batch, for three cores: a ResNet with L residual blocks (L parameter sets), an ODE
block integrated with L Euler steps and differentiated by backprop through the
solver, and the same ODE block with the continuous adjoint. The claim (Chen et al.
2018): the adjoint's memory does not grow with the number of steps.

Memory is the bytes of tensors autograd keeps for the backward pass (measured with
saved-tensor hooks; this is what grows with depth), and on CUDA also the peak
allocated memory of the step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from infdepth.errors import InputError
from infdepth.experiments.ode_common import check_int, count_params, save_figure
from infdepth.io import seed_everything, write_json
from infdepth.ode import Adjoint, Backprop, Euler, GradientMethod, ODEBlock

KINDS = ("resnet", "ode-backprop", "ode-adjoint")


@dataclass(frozen=True)
class MemoryConfig:
    """Depths to measure and the size of the network and batch."""

    depths: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)
    width: int = 64
    batch: int = 128
    inputs: int = 64
    classes: int = 10
    seed: int = 0
    device: str = "cpu"


@dataclass(frozen=True)
class MemoryRow:
    """One measurement."""

    kind: str
    depth: int
    saved_bytes: int
    cuda_peak_bytes: int | None
    params: int
    seconds: float


class Residual(nn.Module):
    """``h + f(h)`` with ``f = Linear -> tanh -> Linear``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.f = VectorField(width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = h + self.f(None, h)
        return out


class VectorField(nn.Module):
    """``f(t, h) = W2 tanh(W1 h + b1) + b2``, the same map a residual block adds."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(width, width)
        self.lin2 = nn.Linear(width, width)

    def forward(self, t: torch.Tensor | None, h: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.lin2(torch.tanh(self.lin1(h)))
        return out


def build(kind: str, depth: int, cfg: MemoryConfig) -> nn.Module:
    """``stem -> core -> head`` with the core of the given kind and depth."""
    core: nn.Module
    if kind == "resnet":
        core = nn.Sequential(*[Residual(cfg.width) for _ in range(depth)])
    else:
        method: GradientMethod = Adjoint() if kind == "ode-adjoint" else Backprop()
        # Euler steps of size 1 up to t1 = L: each step is one residual block h + f(h)
        core = ODEBlock(VectorField(cfg.width), t1=float(depth), solver=Euler(), step_size=1.0,
                        adjoint=method)
    return nn.Sequential(nn.Linear(cfg.inputs, cfg.width), core,
                         nn.Linear(cfg.width, cfg.classes))


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


def measure(kind: str, depth: int, cfg: MemoryConfig) -> MemoryRow:
    """Memory and time of one training step."""
    device = torch.device(cfg.device)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = build(kind, depth, cfg).to(device)
    x = torch.randn(cfg.batch, cfg.inputs, generator=gen).to(device)
    y = torch.randint(0, cfg.classes, (cfg.batch,), generator=gen).to(device)
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


def run_memory(cfg: MemoryConfig, out: Path, progress: bool = True) -> list[MemoryRow]:
    """Measure every kind at every depth; write ``summary.json`` and the figure."""
    seed_everything(cfg.seed)
    rows = []
    for kind in KINDS:  # warm up lazy initialisation so that the first timing is fair
        measure(kind, cfg.depths[0], cfg)
    jobs = [(k, d) for d in cfg.depths for k in KINDS]
    for kind, depth in tqdm(jobs, desc="memory", disable=not progress):
        rows.append(measure(kind, depth, cfg))
    summary = {
        "rows": [r.__dict__ for r in rows],
        "measure": "bytes of tensors saved for backward (autograd saved-tensor hooks)",
        "growth_ratio": {
            k: _ratio(rows, k, cfg.depths[-1], cfg.depths[0]) for k in KINDS
        },
    }
    write_json(out / "summary.json", summary)
    _plot(rows, out / "memory_vs_depth.png")
    return rows


def _ratio(rows: list[MemoryRow], kind: str, deep: int, shallow: int) -> float:
    by = {(r.kind, r.depth): r.saved_bytes for r in rows}
    return by[(kind, deep)] / by[(kind, shallow)]


def _plot(rows: list[MemoryRow], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
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


def table(rows: list[MemoryRow]) -> str:
    """A plain-text table: depth against MiB for each kind."""
    depths = sorted({r.depth for r in rows})
    by = {(r.kind, r.depth): r.saved_bytes / 2**20 for r in rows}
    lines = ["depth " + " ".join(f"{k:>14}" for k in KINDS)]
    for d in depths:
        lines.append(f"{d:>5} " + " ".join(f"{by[(k, d)]:>13.3f}M" for k in KINDS))
    return "\n".join(lines)


def check_config(cfg: MemoryConfig) -> None:
    """InputError on unusable settings."""
    if not cfg.depths:
        raise InputError("--depths must list at least one depth")
    for d in cfg.depths:
        check_int("--depths entry", d)
    check_int("--width", cfg.width)
    check_int("--batch", cfg.batch)
