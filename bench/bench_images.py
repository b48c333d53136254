"""Training throughput of the g-infinity image network against the fixed-depth network.

Both networks have the same active depth (``ceil(w)`` blocks per layer against
that many always-on blocks) and the same training step: forward, cross-entropy
plus the block/w penalty, backward, Adadelta step, as :func:`infdepth.fit` takes it
on a step that neither logs nor checkpoints (the g-infinity layers read ``w`` once each,
in their forward, and produce their penalty there; growth is an event the attached
optimizer follows).  Steps of the two networks are interleaved so that load from
other processes hits both alike; the median step time is used.

Prints ``name: ratio`` lines, ratio = g-infinity step time / fixed-depth step time
(goal <= 1.03, issues 12 and 29), with the step time and images per second of each beside it
and the load average before and after (bench/_harness.py).

    python bench/bench_images.py [--repeats 15] [--quick] [--threads 1]
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch
import torch.nn.functional as F
from _harness import Harness, add_arguments

from infdepth.depth import InfiniteDepth, attach
from infdepth.depth.layer import depth_layers
from infdepth.experiments.depth.images import Config as ImagesConfig
from infdepth.experiments.depth.images import build_model, make_optimizer
from infdepth.models.going_deeper import GoingDeeperCNN
from infdepth.train import WithPenalty, penalty_modules, train_step

CASES = (
    # name, image shape, batch, active depth per layer
    ("digits_8x8_b64_depth1", (1, 8, 8), 64, 1),
    ("digits_8x8_b64_depth2", (1, 8, 8), 64, 2),
    ("mnist_28x28_b128_depth1", (1, 28, 28), 128, 1),
    ("mnist_28x28_b128_depth2", (1, 28, 28), 128, 2),
)


def _step_fn(model: GoingDeeperCNN, x: torch.Tensor, y: torch.Tensor):
    """One step of :func:`infdepth.fit` that neither logs nor checkpoints."""
    optimizer = make_optimizer(ImagesConfig(), model)
    attach(model, optimizer)  # as fit: sub-layers a forward builds join the optimizer
    net = WithPenalty(model)  # as fit: every penalty, a g-inf layer's from its forward

    def step() -> None:
        train_step(net, optimizer, F.cross_entropy, x, y)
        # as fit: each w after the update stays on the device (for a divergence message)
        [m.w.detach().clone() for _, m in penalty_modules(model) if isinstance(m, InfiniteDepth)]

    return step


def bench_case(h: Harness, shape: tuple[int, int, int], batch: int, depth: int) -> dict[str, float]:
    """Median step seconds of g-infinity and fixed depth at ``depth`` active blocks per layer."""
    x = torch.rand(batch, *shape)
    y = torch.randint(0, 10, (batch,))
    cfg = ImagesConfig()
    learned = build_model(replace(cfg, w0=depth - 0.5), shape, 10)
    fixed = build_model(replace(cfg, fixed_depth=depth), shape, 10)
    # keep w inside (depth - 1, depth] while timing: a tiny step on w only moves it a little
    steps = {"g-inf": _step_fn(learned, x, y), "fixed": _step_fn(fixed, x, y)}
    seconds = h.time(steps, warmup=3)
    actives = {layer.active_blocks for _, layer in depth_layers(learned)}
    if actives != {depth}:
        raise RuntimeError(f"w left the bracket of {depth} active blocks: {actives}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser, repeats=15, quick=3)
    parser.add_argument("--rounds", dest="repeats", type=int, help="old name of --repeats")
    args = parser.parse_args()
    h = Harness(args, "g-infinity image network training step / fixed-depth network")
    torch.manual_seed(0)
    for name, shape, batch, depth in CASES:
        seconds = bench_case(h, shape, batch, depth)
        h.times(name, seconds, "   (" + ", ".join(f"{k} {batch / v:.0f} img/s"
                                                 for k, v in seconds.items()) + ")")
        h.ratio(name, seconds["g-inf"] / seconds["fixed"], goal=("<=", 1.03))
    h.finish()


if __name__ == "__main__":
    main()
