"""Benchmark: our Euler-Maruyama for the ResNet depth-limit SDE against ``torchsde.sdeint``.

Same SDE (``dX = n^{-1/2} ||phi(X)|| dB``, Ito, diagonal noise), same method (Euler-Maruyama),
same number of steps and samples, one process. Prints ``name: ratio`` lines with
ratio = torchsde time / our time (higher is better for us); ``#`` lines give the raw times.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torchsde

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


def _best_of(fn: Callable[[], object], repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_case(width: int, samples: int, steps: int, activation: str,
               repeats: int = 2) -> tuple[float, float]:
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

    ours()  # warm-up
    theirs()
    t_ours = _best_of(ours, repeats)
    t_theirs = _best_of(theirs, repeats)
    # sanity: both solve the same SDE (law of the log-norm at t1 agrees)
    a = simulate(sde, y0, t1, steps, generator=gen).values()[-1].norm(dim=-1).log()
    b = theirs()[-1].norm(dim=-1).log()  # type: ignore[index]
    tol = 6 * math.sqrt(float(a.var()) / samples) + 6 * math.sqrt(float(b.var()) / samples)
    if abs(float(a.mean()) - float(b.mean())) > tol:
        raise SystemExit(f"mismatch: mean log-norm {float(a.mean())} vs {float(b.mean())}")
    return t_ours, t_theirs


def main() -> None:
    torch.set_num_threads(1)
    cases = [
        ("relu_n1_samples20000_steps1000", 1, 20_000, 1000, "relu"),
        ("relu_n4_samples20000_steps1000", 4, 20_000, 1000, "relu"),
        ("tanh_n4_samples2000_steps1000", 4, 2000, 1000, "tanh"),
        ("relu_n64_samples1000_steps500", 64, 1000, 500, "relu"),
        ("relu_n8_samples100_steps2000", 8, 100, 2000, "relu"),
    ]
    for name, width, samples, steps, act in cases:
        t_ours, t_theirs = bench_case(width, samples, steps, act)
        print(f"# {name}: ours {t_ours:.3f}s torchsde {t_theirs:.3f}s", flush=True)
        print(f"{name}: {t_theirs / t_ours:.2f}", flush=True)


if __name__ == "__main__":
    main()
