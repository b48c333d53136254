"""The Solution object: outputs, dense interpolant, per-sample statistics and status."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from infdepth.errors import InputError
from infdepth.ode import Dopri8, SampleStats, Solution, Status, Tsit5, solve

F64 = torch.float64


def test_solution_fields_and_dense_interpolant() -> None:
    rate = torch.tensor([0.5, 1.0, 2.0], dtype=F64)
    y0 = torch.stack([torch.ones(3, dtype=F64), rate], 1)

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.stack([-y[:, 1] * y[:, 0], torch.zeros_like(y[:, 0])], 1)

    t = torch.linspace(0, 2, 5, dtype=F64)
    for solver in (Tsit5(), Dopri8()):
        sol = solve(f, y0, t, solver=solver, rtol=1e-10, atol=1e-12)
        assert isinstance(sol, Solution) and isinstance(sol.stats, SampleStats)
        assert sol.ts.shape == (5, 3) and sol.ys.shape == (5, 3, 2)
        assert sol.status.tolist() == [Status.OK] * 3
        assert torch.isnan(sol.event_t).all()
        for tq in (0.0, 0.3, 1.234, 2.0):
            exact = torch.exp(-rate * tq)
            torch.testing.assert_close(sol.evaluate(tq)[:, 0], exact, rtol=1e-9, atol=0)
        per = torch.tensor([0.1, 0.7, 1.9], dtype=F64)
        torch.testing.assert_close(sol.evaluate(per)[:, 0], torch.exp(-rate * per), rtol=1e-9,
                                   atol=0)
        assert torch.isnan(sol.evaluate(2.5)).all()
        # stiffer samples need more steps; the counters say so, and add up
        assert (sol.stats.n_accepted.diff() > 0).all()
        extra = len(solver.tableau.dense_c)
        steps = sol.stats.n_accepted + sol.stats.n_rejected
        lo, hi = 2 + (solver.stages - 1) * steps, 2 + (solver.stages - 1 + extra) * steps
        assert ((sol.stats.nfe >= lo) & (sol.stats.nfe <= hi)).all()


def test_evaluate_needs_dense_and_sane_times() -> None:
    sol = solve(lambda t, y: -y, torch.ones(2, 1), torch.tensor([0.0, 1.0]), dense=False)
    with pytest.raises(InputError, match="dense=True"):
        sol.evaluate(0.5)
    sol = solve(lambda t, y: -y, torch.ones(2, 1), torch.tensor([0.0, 1.0]))
    with pytest.raises(InputError, match=r"t of shape \(3,\)"):
        sol.evaluate(torch.zeros(3))


def test_evaluate_is_differentiable() -> None:
    y0 = torch.tensor([[1.0], [2.0]], dtype=F64, requires_grad=True)
    sol = solve(lambda t, y: -y, y0, torch.tensor([0.0, 1.0], dtype=F64), rtol=1e-10,
                atol=1e-12)
    sol.evaluate(0.4).sum().backward()
    torch.testing.assert_close(y0.grad, torch.full((2, 1), math.exp(-0.4), dtype=F64),
                               rtol=1e-9, atol=0)


def test_neural_field_alone_equals_in_a_batch_to_1e_12() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 4)).double()
    y0 = torch.randn(1024, 4, dtype=F64)
    t = torch.linspace(0, 1, 3, dtype=F64)
    with torch.no_grad():
        batch = solve(lambda t, y: net(y), y0, t, rtol=1e-8, atol=1e-10, dense=False)
        for b in (0, 700):
            alone = solve(lambda t, y: net(y), y0[b : b + 1], t, rtol=1e-8, atol=1e-10,
                          dense=False)
            torch.testing.assert_close(alone.ys[:, 0], batch.ys[:, b], rtol=0, atol=1e-12)


def test_compaction_and_masking_give_the_same_gradients() -> None:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2)).double()

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # speed s = y[:, 2] per sample
        return torch.cat([y[:, 2:] * net(y), torch.zeros_like(y[:, 2:])], 1)

    y0 = torch.cat([torch.randn(6, 2, dtype=F64), torch.linspace(0.2, 4, 6, dtype=F64)[:, None]], 1)
    t = torch.linspace(0, 1, 4, dtype=F64)
    grads = []
    for compact in (True, False):
        net.zero_grad()
        sol = solve(f, y0, t, rtol=1e-8, atol=1e-10, compact=compact, dense=False)
        sol.ys.square().sum().backward()
        grads.append(torch.cat([torch.as_tensor(p.grad).reshape(-1) for p in net.parameters()]))
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-14)


def test_float32_states_keep_float64_times() -> None:
    y0 = torch.tensor([[1.0], [2.0]])
    sol = solve(lambda t, y: -y, y0, torch.tensor([0.0, 1.0]))
    assert sol.ys.dtype == torch.float32 and sol.ts.dtype == F64
    torch.testing.assert_close(sol.ys[-1], y0 * math.exp(-1), rtol=1e-5, atol=0)


def test_the_failure_codes_come_after_the_ends_that_are_not_failures() -> None:
    # the solve and Solution tell a failed sample by `status > Status.EVENT`
    ended_well = {Status.OK, Status.EVENT}
    assert all((s > Status.EVENT) == (s not in ended_well) for s in Status)
    assert max(ended_well) == Status.EVENT
