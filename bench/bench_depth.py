"""Training-step time of InfiniteDepth against a hand-written static residual network.

For depth d in {1, 3, 5, 10} and width in {24, 256}, batch 1000: the g-infinity
layer with ``w = d - 0.01`` (so exactly d sub-layers run) against a plain
``x = relu(x + f_i(x))`` stack of d blocks, both trained with Adam and the same l2 on
each block's BatchNorm gamma.  Contenders run interleaved in one process; the
median of many repeats is compared.  Also: the cost of a growth event (5 new
sub-layers registered with the running optimizer) in training steps.

Also the cost of reading ``w`` on the host (``layer.depth``, no cache: the layer reads it
once in ``forward`` and once in ``penalty``) as a share of one training step.

Prints ``name: ratio`` lines (g-infinity time / static time; target <= 1.10), the
absolute times beside them, and the load average before and after.
Run: ``.venv/bin/python bench/bench_depth.py [--repeats N]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch import nn

from infdepth.depth import InfiniteDepth, depth_layers, grow, total_penalty


def block(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width), nn.Dropout(0.1))


class StaticResNet(nn.Module):
    """The hand-written baseline: d residual blocks, ReLU after each sum."""

    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(block(width) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for f in self.blocks:
            x = torch.relu(x + f(x))
        return x

    def penalty(self) -> torch.Tensor:
        return 1e-8 * sum(b[1].weight.square().sum() for b in self.blocks)


def make_step(model: nn.Module, penalty, x: torch.Tensor, y: torch.Tensor, after=None):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def step() -> None:
        loss = nn.functional.mse_loss(model(x), y) + penalty()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if after is not None:
            after(opt)

    return step, opt


def time_steps(step, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - start) / n


def bench_pair(width: int, depth: int, repeats: int, inner: int) -> tuple[float, float, float]:
    torch.manual_seed(0)
    x = torch.randn(1000, width)
    y = torch.randn(1000, width)
    layer = InfiniteDepth(lambda i: block(width), h="relu", w0=depth - 0.01, w_l2=1e-4, block_l2=1e-8, seed=0)
    layers = depth_layers(layer)  # as infdepth.train.fit does: traverse once
    ours, _ = make_step(
        layer, lambda: total_penalty(layer, layers), x, y, after=lambda opt: grow(layer, opt, layers)
    )
    static = StaticResNet(width, depth)
    theirs, _ = make_step(static, static.penalty, x, y)
    for s in (ours, theirs):
        time_steps(s, 3)
    a, b = [], []
    for _ in range(repeats):
        a.append(time_steps(ours, inner))
        b.append(time_steps(theirs, inner))
    # keep w pinned below the next integer so d sub-layers run throughout
    assert layer.active_blocks == depth, layer.active_blocks
    return statistics.median(a) / statistics.median(b), statistics.median(a), statistics.median(b)


def bench_w_read(layer: InfiniteDepth, n: int = 20_000) -> float:
    """Seconds of one host read of ``w`` (``layer.depth``)."""
    start = time.perf_counter()
    for _ in range(n):
        layer.depth  # noqa: B018 - the read is what is timed
    return (time.perf_counter() - start) / n


def bench_growth(width: int, repeats: int) -> float:
    """Seconds of one growth event (build 5 sub-layers, register them) over one training step."""
    torch.manual_seed(0)
    x = torch.randn(1000, width)
    y = torch.randn(1000, width)
    ratios = []
    for _ in range(repeats):
        layer = InfiniteDepth(lambda i: block(width), h="relu", w0=4.5, w_l2=1e-4, block_l2=1e-8, seed=0)
        step, opt = make_step(layer, lambda layer=layer: total_penalty(layer), x, y)
        t_step = time_steps(step, 5)
        with torch.no_grad():
            layer.w.fill_(5.5)
        start = time.perf_counter()
        grown = grow(layer, opt)
        t_grow = time.perf_counter() - start
        assert grown
        ratios.append(t_grow / t_step)
    return statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=7, help="interleaved timing rounds")
    parser.add_argument("--inner", type=int, default=10, help="steps per timing round")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, threads {torch.get_num_threads()}, batch 1000")
    print(f"# load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if os.getloadavg()[0] > 0.5:
        print("# WARNING: load above 0.5, timings are not comparable")
    probe = InfiniteDepth(lambda i: block(24), w0=1.0, seed=0)
    t_read = bench_w_read(probe)
    for width in (24, 256):
        for depth in (1, 3, 5, 10):
            ratio, t_ours, t_static = bench_pair(width, depth, args.repeats, args.inner)
            print(
                f"ginf_vs_static_step_w{width}_d{depth}: {ratio:.3f}  "
                f"(ours {t_ours * 1e3:.3f} ms, static {t_static * 1e3:.3f} ms, "
                f"2 host reads of w {2 * t_read / t_ours:.2%} of the step)"
            )
    print(f"# one host read of w: {t_read * 1e6:.2f} us")
    for width in (24, 256):
        print(f"growth_event_in_steps_w{width}: {bench_growth(width, args.repeats):.3f}")
    print(f"# load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
