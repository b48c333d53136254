"""Training-step time of InfiniteDepth against a hand-written static residual network.

For depth d in {1, 3, 5, 10} and width in {24, 256}, batch 1000: the g-infinity
layer with ``w = d - 0.01`` (so exactly d sub-layers run) against a plain
``x = relu(x + f_i(x))`` stack of d blocks, both trained with Adam and the same l2 on
each block's BatchNorm gamma.  Contenders run interleaved in one process; the
median of many repeats is compared.  Also: the cost of a growth event (5 new
sub-layers registered with the running optimizer) in training steps.

Both networks train with :func:`infdepth.train.train_step` on :class:`~infdepth.train.WithPenalty`
plus the bookkeeping :func:`infdepth.fit` does on a step that neither logs nor checkpoints
(the log window's running sums of loss and penalty, on the device), the g-infinity
model attached to its optimizer (:func:`infdepth.attach`), as ``fit`` does.

Also the cost of reading ``w`` on the host (``layer.depth``, no cache: the layer reads it
once per step, in ``forward``, and produces its penalty from that value) as a share of one
training step.

Prints ``name: ratio`` lines (g-infinity time / static time; goals of issue 29: <= 1.10 at
width 24, <= 1.03 at width 256),
the absolute times beside them, and the load average before and after (bench/_harness.py).
Run: ``.venv/bin/python bench/bench_depth.py [--repeats N] [--quick] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _harness import Harness, add_arguments
from torch import nn

from infdepth.depth import InfiniteDepth, attach, grow
from infdepth.train import WithPenalty, train_step

GOALS = {24: 1.10, 256: 1.03}  # g-infinity step / static step (issue 29)


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


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """One step of :func:`infdepth.fit` on a step that neither logs nor checkpoints."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    attach(model, opt)
    net = WithPenalty(model)
    loss_fn = nn.functional.mse_loss

    window: dict[str, torch.Tensor] = {}

    def step() -> None:
        _, loss, penalty = train_step(net, opt, loss_fn, x, y)
        with torch.no_grad():  # fit's log window (no host read on a step that does not log)
            window["loss"] = window.get("loss", 0) + loss.detach()
            if penalty is not None:
                window["penalty"] = window.get("penalty", 0) + penalty.detach()

    return step, opt


def time_steps(step, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - start) / n


def bench_pair(h: Harness, width: int, depth: int, inner: int) -> dict[str, float]:
    """Median seconds of one training step of each network (interleaved rounds)."""
    torch.manual_seed(0)
    x = torch.randn(1000, width)
    y = torch.randn(1000, width)
    layer = InfiniteDepth(lambda i: block(width), h="relu", w0=depth - 0.01, w_l2=1e-4, block_l2=1e-8, seed=0)
    ours, _ = make_step(layer, x, y)
    static = StaticResNet(width, depth)
    theirs, _ = make_step(static, x, y)
    seconds = h.time({"ginf": ours, "static": theirs}, inner=inner, warmup=3)
    # keep w pinned below the next integer so d sub-layers run throughout
    assert layer.active_blocks == depth, layer.active_blocks
    return seconds


def count_step(step) -> tuple[int, float]:
    """(aten operators, Python function calls) of one step: a measure no load disturbs."""
    import cProfile
    import pstats

    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            Count.ops += 1
            return func(*args, **(kwargs or {}))

    with Count():
        step()
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(10):
        step()
    profile.disable()
    return Count.ops, pstats.Stats(profile).total_calls / 10  # type: ignore[attr-defined]


def bench_counts(h: Harness, width: int, depth: int) -> None:
    """Print the operators and Python calls of a g-infinity and a static step (warm)."""
    torch.manual_seed(0)
    x, y = torch.randn(1000, width), torch.randn(1000, width)
    layer = InfiniteDepth(lambda i: block(width), h="relu", w0=depth - 0.01, w_l2=1e-4, block_l2=1e-8, seed=0)
    counts = {}
    for name, model in (("ginf", layer), ("static", StaticResNet(width, depth))):
        step, _ = make_step(model, x, y)
        for _ in range(3):
            step()
        counts[name] = count_step(step)
    h.note(f"per step, width {width}, depth {depth}: " + ", ".join(
        f"{k} {ops} aten operators and {calls:.0f} Python calls" for k, (ops, calls) in counts.items()))


def bench_w_read(layer: InfiniteDepth, n: int = 20_000) -> float:
    """Seconds of one host read of ``w`` (``layer.depth``)."""
    start = time.perf_counter()
    for _ in range(n):
        layer.depth  # noqa: B018 - the read is what is timed
    return (time.perf_counter() - start) / n


def bench_growth(width: int, repeats: int) -> tuple[float, float, float]:
    """Seconds of one growth event (build 5 sub-layers, register them) over one training step."""
    torch.manual_seed(0)
    x = torch.randn(1000, width)
    y = torch.randn(1000, width)
    ratios, grows, steps = [], [], []
    for _ in range(repeats):
        layer = InfiniteDepth(lambda i: block(width), h="relu", w0=4.5, w_l2=1e-4, block_l2=1e-8, seed=0)
        step, opt = make_step(layer, x, y)
        t_step = time_steps(step, 5)
        with torch.no_grad():
            layer.w.fill_(5.5)
        start = time.perf_counter()
        grown = grow(layer, opt)
        t_grow = time.perf_counter() - start
        assert grown
        ratios.append(t_grow / t_step)
        grows.append(t_grow)
        steps.append(t_step)
    return statistics.median(ratios), statistics.median(grows), statistics.median(steps)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser, repeats=7, quick=2)
    parser.add_argument("--inner", type=int, default=10, help="steps per timing round")
    args = parser.parse_args()
    h = Harness(args, "learned depth: InfiniteDepth training step / static ResNet, batch 1000")
    probe = InfiniteDepth(lambda i: block(24), w0=1.0, seed=0)
    t_read = bench_w_read(probe)
    for width in (24, 256):
        for depth in (1, 3, 5, 10):
            name = f"ginf_vs_static_step_w{width}_d{depth}"
            seconds = bench_pair(h, width, depth, args.inner)
            h.times(name, seconds,
                    f"; 1 host read of w {t_read / seconds['ginf']:.2%} of the g-inf step")
            h.ratio(name, seconds["ginf"] / seconds["static"], goal=("<=", GOALS[width]))
    h.note(f"one host read of w: {t_read * 1e6:.2f} us")
    bench_counts(h, 24, 1)
    for width in (24, 256):
        ratio, t_grow, t_step = bench_growth(width, h.repeats)
        name = f"growth_event_in_steps_w{width}"
        h.times(name, {"growth event": t_grow, "training step": t_step})
        h.ratio(name, ratio, goal=("<=", 1.0))
    h.finish()


if __name__ == "__main__":
    main()
