"""Training throughput of the g-infinity image network against the fixed-depth network.

Both networks have the same active depth (``ceil(w)`` blocks per layer against
that many always-on blocks) and the same training step: forward, cross-entropy
plus the block/w penalty, backward, Adadelta step (and, for g-infinity, the
growth check).  Steps of the two networks are interleaved so that load from
other processes hits both alike; the median step time is used.

Prints ``name: ratio`` lines, ratio = g-infinity step time / fixed-depth step time
(target <= 1.10), with the images per second of each beside it.

    python bench/bench_images.py [--rounds 15] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch
import torch.nn.functional as F

from infdepth.depth.growth import grow
from infdepth.depth.layer import depth_layers, total_penalty
from infdepth.experiments.images import GoingDeeperCNN, ImagesConfig, build_model, make_optimizer

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
        penalty = total_penalty(model) if learned else model.fixed_penalty()
        objective = loss if penalty is None else loss + penalty
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
        if learned:
            grow(model, optimizer)

    return step


def bench_case(shape: tuple[int, int, int], batch: int, depth: int, rounds: int) -> tuple[float, float]:
    """Median step seconds of (g-infinity, fixed depth) at ``depth`` active blocks per layer."""
    x = torch.rand(batch, *shape)
    y = torch.randint(0, 10, (batch,))
    cfg = ImagesConfig()
    learned = build_model(replace(cfg, w0=depth - 0.5), shape, 10)
    fixed = build_model(replace(cfg, fixed_depth=depth), shape, 10)
    # keep w inside (depth - 1, depth] while timing: a tiny step on w only moves it a little
    steps = {"learned": _step_fn(learned, x, y), "fixed": _step_fn(fixed, x, y)}
    for fn in steps.values():
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {"learned": [], "fixed": []}
    for _ in range(rounds):
        for name, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    actives = {layer.active_blocks for _, layer in depth_layers(learned)}
    if actives != {depth}:
        raise RuntimeError(f"w left the bracket of {depth} active blocks: {actives}")
    return statistics.median(times["learned"]), statistics.median(times["fixed"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=15, help="timed steps per network and case")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for name, shape, batch, depth in CASES:
        t_learned, t_fixed = bench_case(shape, batch, depth, args.rounds)
        print(
            f"{name}: {t_learned / t_fixed:.3f}   "
            f"(g-inf {batch / t_learned:.0f} img/s, fixed {batch / t_fixed:.0f} img/s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
