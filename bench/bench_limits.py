"""Benchmark: our Euler-Maruyama for the ResNet depth-limit SDE against ``torchsde.sdeint``.

Same SDE (``dX = n^{-1/2} ||phi(X)|| dB``, Ito, diagonal noise), same method (Euler-Maruyama),
same number of steps and samples, one process, runs interleaved (bench/_harness.py).
Prints ``name: ratio`` lines with ratio = torchsde time / our time (higher is better for
us; goal >= 20, issue 12); ``#`` lines give the absolute times and the load average.

    python bench/bench_limits.py [--repeats 5] [--quick] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import torch
import torchsde
from _harness import Harness, add_arguments

from infdepth.limits import EulerMaruyama, ResNetSDE, simulate


class _TorchsdeResNetSDE(torch.nn.Module):
    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, width: int, activation: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.scale = 1.0 / math.sqrt(width)
        self.activation = activation

    def f(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(y)

    def g(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        vol = self.activation(y).norm(dim=-1, keepdim=True) * self.scale
        return vol.expand_as(y)


def bench_case(h: Harness, name: str, width: int, samples: int, steps: int,
               activation: str) -> dict[str, float]:
    t1 = 1.0
    dtype = torch.float32
    y0 = torch.randn(samples, width, dtype=dtype, generator=torch.Generator().manual_seed(0))
    sde = ResNetSDE.create(width, activation)
    gen = torch.Generator().manual_seed(1)

    def ours() -> object:
        return simulate(sde, y0, t1, steps, solver=EulerMaruyama(), generator=gen).y

    ref = _TorchsdeResNetSDE(width, sde.activation.fn)
    ts = torch.tensor([0.0, t1], dtype=dtype)

    def theirs() -> object:
        with torch.no_grad():
            return torchsde.sdeint(ref, y0, ts, method="euler", dt=t1 / steps)

    seconds = h.time({"ours": ours, "torchsde": theirs}, warmup=1)
    # sanity: both solve the same SDE (law of the log-norm at t1 agrees)
    a = simulate(sde, y0, t1, steps, generator=gen).values()[-1].norm(dim=-1).log()
    b = theirs()[-1].norm(dim=-1).log()  # type: ignore[index]
    tol = 6 * math.sqrt(float(a.var()) / samples) + 6 * math.sqrt(float(b.var()) / samples)
    if abs(float(a.mean()) - float(b.mean())) > tol:
        raise SystemExit(f"mismatch: mean log-norm {float(a.mean())} vs {float(b.mean())}")
    h.note(f"{name} check: mean log |X_1|: ours {float(a.mean()):.4f}, torchsde {float(b.mean()):.4f} "
           f"(agree within {tol:.2g}, 6 standard errors)")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser, repeats=3, quick=2)  # torchsde takes 0.7-4 s a call
    args = parser.parse_args()
    h = Harness(args, "limit SDE: Euler-Maruyama of infdepth.limits vs torchsde.sdeint")
    cases = [
        ("relu_n1_samples20000_steps1000", 1, 20_000, 1000, "relu"),
        ("relu_n4_samples20000_steps1000", 4, 20_000, 1000, "relu"),
        ("tanh_n4_samples2000_steps1000", 4, 2000, 1000, "tanh"),
        ("relu_n64_samples1000_steps500", 64, 1000, 500, "relu"),
        ("relu_n8_samples100_steps2000", 8, 100, 2000, "relu"),
    ]
    for name, width, samples, steps, act in cases:
        seconds = bench_case(h, name, width, samples, steps, act)
        h.times(name, seconds)
        h.ratio(name, seconds["torchsde"] / seconds["ours"], goal=(">=", 20.0))
    h.finish()


if __name__ == "__main__":
    main()
