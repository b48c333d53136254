"""Run by ``test_ode_per_sample_ranks.py``: one float64 batch of Van der Pol problems, each
process solving its contiguous slice, under torchrun (gloo) or as one plain process.

``python ode_per_sample_worker.py OUT`` solves the slice ``tensor_split(batch, world)[rank]``
(the split the ODE experiments use) twice: with per-sample steps (``infdepth.ode.solve``,
outputs and the gradient of their sum in ``y0``) and with the shared steps of ``odeint``.
The slices are gathered to rank 0 in rank order, which saves the whole batch to
``OUT/solved.pt``, with the sample count each rank held.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from infdepth.ode import odeint, solve

F64 = torch.float64
BATCH = 64
T_OUT = torch.linspace(0, 6, 7, dtype=F64)
RTOL, ATOL = 1e-7, 1e-9


def vdp(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Van der Pol with its mu carried as a third, constant component (rows independent)."""
    x, v, mu = y[:, 0], y[:, 1], y[:, 2]
    return torch.stack([v, mu * (1 - x * x) * v - x, torch.zeros_like(mu)], 1)


def batch() -> torch.Tensor:
    """``(BATCH, 3)`` starts ``(2, 0, mu)``, mu spread over [0.5, 5] (the stiff end on the
    last rank's slice)."""
    mu = torch.linspace(0.5, 5.0, BATCH, dtype=F64)
    return torch.stack([torch.full_like(mu, 2.0), torch.zeros_like(mu), mu], 1)


def solve_slice(y0: torch.Tensor) -> dict[str, torch.Tensor]:
    """The slice's per-sample outputs ``(T, n, 3)`` and their ``y0`` gradient, its per-sample
    accepted steps, and its shared-step outputs."""
    start = y0.clone().requires_grad_(True)
    sol = solve(vdp, start, T_OUT, rtol=RTOL, atol=ATOL, dense=False)
    (grad,) = torch.autograd.grad(sol.ys.sum(), start)
    with torch.no_grad():
        shared = odeint(vdp, y0, T_OUT, rtol=RTOL, atol=ATOL)
    return {"per_sample": sol.ys.detach(), "grad": grad, "accepted": sol.stats.n_accepted,
            "shared": shared}


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    ranked = dist.is_torchelastic_launched()
    if ranked:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if ranked else (0, 1)
    mine = solve_slice(torch.tensor_split(batch(), world)[rank])
    gathered: list[dict[str, torch.Tensor] | None] = [None] * world
    if ranked:
        dist.all_gather_object(gathered, mine)
        dist.destroy_process_group()
    else:
        gathered = [mine]
    if rank == 0:
        parts = [g for g in gathered if g is not None]
        whole = {k: torch.cat([p[k] for p in parts], dim=1 if parts[0][k].ndim == 3 else 0)
                 for k in mine}
        whole["shard_sizes"] = torch.tensor([p["grad"].shape[0] for p in parts])
        out.mkdir(parents=True, exist_ok=True)
        torch.save(whole, out / "solved.pt")


if __name__ == "__main__":
    main()
