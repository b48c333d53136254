"""torch.compile (inductor) against eager: one training step of the g-infinity CNN, of the
fixed-depth CNN of the same depth, and of a neural-ODE spiral model.

A g-infinity layer compiles with the model: its one host read of ``w`` is a graph break
that hands the graph the active depth, and the sub-layers and gates are compiled (one
graph per depth; see docs/learned-depth.md).  ``ginf_over_fixed_compile_gain`` is the
g-infinity CNN's compiled/eager divided by the fixed CNN's (goal <= 1.05, issue 29: learned
depth gains from compiling as a fixed network does); ``..._compiled_depth`` the same with
:class:`~infdepth.depth.CompiledDepth`, which reads the depths before the compiled call so
the layers make no graph break.  The ODE block's fixed-step solver is unrolled into
the graph (one graph break, at the read of its time grid).  Compilation happens in a
warm-up step outside the timing (its time is printed).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn.functional as F
from _harness import Harness, add_arguments
from torch import nn

from infdepth import ODEBlock, attach
from infdepth.depth import CompiledDepth
from infdepth.experiments.depth.images import Config as ImagesConfig
from infdepth.experiments.depth.images import build_model
from infdepth.ode import RK4
from infdepth.train import WithPenalty, train_step


def _train_step(
    model: nn.Module, run: nn.Module, x: torch.Tensor, y: torch.Tensor,
    loss_fn: Callable[..., torch.Tensor],
) -> Callable[[], None]:
    """:func:`infdepth.fit`'s step (attached optimizer, penalties from the forward) on ``run``."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    attach(model, opt)
    net = WithPenalty(run)

    def step() -> None:
        train_step(net, opt, loss_fn, x, y)

    return step


class Spiral(nn.Module):
    """``y^3 -> Linear(2, 50) -> tanh -> Linear(50, 2)``, the torchdiffeq spiral field."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 50), nn.Tanh(), nn.Linear(50, 2))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y**3)


def _pair(h: Harness, name: str, model: nn.Module, x, y, loss_fn,
          compile_fn: Callable[[nn.Module], nn.Module] = torch.compile) -> dict[str, float]:
    eager = _train_step(model, model, x, y, loss_fn)
    compiled = _train_step(model, compile_fn(model), x, y, loss_fn)
    start = time.perf_counter()
    compiled()
    h.note(f"{name}: first compiled step (compilation) {time.perf_counter() - start:.1f} s")
    seconds = h.time({"compiled": compiled, "eager": eager}, warmup=2)
    h.times(name, seconds)
    h.ratio(f"{name}_compiled_over_eager", seconds["compiled"] / seconds["eager"])
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, repeats=5, quick=2)
    h = Harness(parser.parse_args(), "torch.compile (inductor) training step / eager")
    torch.manual_seed(0)
    x, y = torch.rand(128, 1, 28, 28), torch.randint(0, 10, (128,))
    cnn = build_model(replace(ImagesConfig(), w0=1.5), (1, 28, 28), 10)  # 2 active sub-layers per layer
    ginf = _pair(h, "ginf_cnn_mnist_b128", cnn, x, y, F.cross_entropy)
    torch.manual_seed(0)
    fixed = build_model(replace(ImagesConfig(), fixed_depth=2), (1, 28, 28), 10)
    static = _pair(h, "fixed_cnn_mnist_b128", fixed, x, y, F.cross_entropy)
    h.ratio("ginf_over_fixed_compile_gain",
            (ginf["compiled"] / ginf["eager"]) / (static["compiled"] / static["eager"]), goal=("<=", 1.05))
    # the depths read before the compiled call: no graph break in the layers
    whole = _pair(h, "ginf_cnn_mnist_b128_compiled_depth", cnn, x, y, F.cross_entropy, CompiledDepth)
    h.ratio("ginf_compiled_depth_over_fixed_compile_gain",
            (whole["compiled"] / whole["eager"]) / (static["compiled"] / static["eager"]), goal=("<=", 1.05))
    torch.manual_seed(0)
    # 15 RK4 steps, unrolled into one graph: the compile takes about a second and a half per step
    block = ODEBlock(Spiral(), t1=1.5, solver=RK4(), step_size=0.1)
    _pair(h, "spiral_ode_rk4_b512", block, torch.randn(512, 2), torch.randn(512, 2), F.mse_loss)
    h.finish()


if __name__ == "__main__":
    main()
