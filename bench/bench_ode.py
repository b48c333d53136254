"""Neural-ODE solve speed: infdepth.ode against torchdiffeq, in one process.

Problem (issue 4): MLP 4 -> 32 -> 4 with tanh, batch 64, dopri5, rtol = atol = 1e-6,
t in [0, 1]. Three cases: forward alone (no autograd), forward + backward through
the adjoint, forward + backward through the solver (backprop). Prints the NFE of
each side and lines ``name: ratio`` with ratio = torchdiffeq time / our time.

    python bench/bench_ode.py [--repeats 20] [--threads 1] [--t1 1.0]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from infdepth.ode import Adjoint, Dopri5, odeint

TOL = 1e-6


class Field(nn.Module):
    """The vector field ``f(t, y) = W2 tanh(W1 y + b1) + b2``; counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 4))
        self.nfe = 0

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        out: torch.Tensor = self.net(y)
        return out


def _time_pair(ours: Callable[[], None], theirs: Callable[[], None],
               repeats: int) -> tuple[float, float]:
    """Median seconds of each, runs interleaved so that load changes hit both alike."""
    ours()  # warm up
    theirs()
    t_ours, t_theirs = [], []
    for _ in range(repeats):
        for fn, out in ((ours, t_ours), (theirs, t_theirs)):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(t_ours), statistics.median(t_theirs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per case")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--t1", type=float, default=1.0,
                        help="end time (the issue's problem: 1; longer spans take more steps)")
    args = parser.parse_args(argv)
    try:
        import torchdiffeq
    except ImportError:
        print("torchdiffeq is not installed (pip install -e '.[bench]'); nothing to compare")
        return 0
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    field = Field()
    y0 = torch.randn(64, 4)
    t = torch.tensor([0.0, args.t1])

    def ours_fwd() -> None:
        with torch.no_grad():
            odeint(field, y0, t, solver=Dopri5(), rtol=TOL, atol=TOL)

    def theirs_fwd() -> None:
        with torch.no_grad():
            torchdiffeq.odeint(field, y0, t, method="dopri5", rtol=TOL, atol=TOL)

    def ours_adj() -> None:
        y = odeint(field, y0, t, solver=Dopri5(), rtol=TOL, atol=TOL, adjoint=Adjoint())
        y[-1].square().sum().backward()

    def theirs_adj() -> None:
        y = torchdiffeq.odeint_adjoint(field, y0, t, method="dopri5", rtol=TOL, atol=TOL)
        y[-1].square().sum().backward()

    def ours_bp() -> None:
        y = odeint(field, y0, t, solver=Dopri5(), rtol=TOL, atol=TOL)
        y[-1].square().sum().backward()

    def theirs_bp() -> None:
        y = torchdiffeq.odeint(field, y0, t, method="dopri5", rtol=TOL, atol=TOL)
        y[-1].square().sum().backward()

    cases = {
        "forward": (ours_fwd, theirs_fwd),
        "forward+backward adjoint": (ours_adj, theirs_adj),
        "forward+backward backprop": (ours_bp, theirs_bp),
    }
    print(f"torch {torch.__version__}, torchdiffeq {torchdiffeq.__version__}, "
          f"threads {args.threads}, repeats {args.repeats}, t in [0, {args.t1:g}]")
    for name, (ours, theirs) in cases.items():
        nfe = []
        for fn in (ours, theirs):
            field.nfe = 0
            field.zero_grad()
            fn()
            nfe.append(field.nfe)
        t_ours, t_theirs = _time_pair(ours, theirs, args.repeats)
        print(f"# {name}: ours {t_ours * 1e3:.2f} ms (NFE {nfe[0]}), "
              f"torchdiffeq {t_theirs * 1e3:.2f} ms (NFE {nfe[1]}), "
              f"NFE difference {abs(nfe[0] - nfe[1]) / nfe[1]:.1%}")
        print(f"{name}: {t_theirs / t_ours:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
