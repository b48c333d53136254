"""Training throughput of the g-infinity image network against the fixed-depth network.

Both networks have the same active depth (``ceil(w)`` blocks per layer against
that many always-on blocks) and the same training step: forward, cross-entropy
plus the block/w penalty, backward, Adadelta step (and, for g-infinity, the
growth check).  Steps of the two networks are interleaved so that load from
other processes hits both alike; the median step time is used.

Prints ``name: ratio`` lines, ratio = g-infinity step time / fixed-depth step time
(goal <= 1.03, issue 12), with the step time and images per second of each beside it
and the load average before and after (bench/_harness.py).

    python bench/bench_images.py [--repeats 15] [--quick] [--threads 1]
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch
import torch.nn.functional as F
from _harness import Harness, add_arguments

from infdepth.depth.growth import grow
from infdepth.depth.layer import depth_layers
from infdepth.experiments.depth.images import Config as ImagesConfig
from infdepth.experiments.depth.images import build_model, make_optimizer
from infdepth.models.going_deeper import GoingDeeperCNN
from infdepth.train import model_penalty

CASES = (
    # name, image shape, batch, active depth per layer
    ("digits_8x8_b64_depth1", (1, 8, 8), 64, 1),
    ("digits_8x8_b64_depth2", (1, 8, 8), 64, 2),
    ("mnist_28x28_b128_depth1", (1, 28, 28), 128, 1),
    ("mnist_28x28_b128_depth2", (1, 28, 28), 128, 2),
)


def _step_fn(model: GoingDeeperCNN, x: torch.Tensor, y: torch.Tensor):
    optimizer = make_optimizer(ImagesConfig(), model)
    learned = bool(depth_layers(model))

    def step() -> None:
        out = model(x)
        loss = F.cross_entropy(out, y)
        penalty = model_penalty(model)  # as fit: every submodule's penalty()
        objective = loss if penalty is None else loss + penalty
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
        if learned:
            grow(model, optimizer)

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
