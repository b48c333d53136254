"""Step sizes per sample: each sample its own time, step, error norm and accept/reject.

A sample's solution does not depend on its batch (float64, alone vs in a batch of 1024),
the step sequence is the shared-step controller's applied to each sample alone and equals
torchode's per-sample one where the controller settings match, finished samples cost
nothing, and backprop gives the gradients of the computed solution.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from infdepth.errors import InputError
from infdepth.ode import (
    RK4,
    Adjoint,
    Bosh3,
    Checkpointed,
    ConstantStepSize,
    Dopri5,
    Dopri8,
    PIController,
    Tsit5,
    odeint,
    solve,
)
from infdepth.ode._controller import PIController as _PI
from infdepth.ode._integrate import integrate
from infdepth.ode._odeint import _output_grid
from infdepth.ode._per_sample_step import PerSampleSteps
from infdepth.ode._stepping import Stats

F64 = torch.float64


def vdp(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Van der Pol with its mu carried as a third, constant component (rows independent)."""
    x, v, mu = y[:, 0], y[:, 1], y[:, 2]
    return torch.stack([v, mu * (1 - x * x) * v - x, torch.zeros_like(mu)], 1)


def vdp_start(mu: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.full_like(mu, 2.0), torch.zeros_like(mu), mu], 1)


T_OUT = torch.linspace(0, 6, 7, dtype=F64)


def test_sample_alone_equals_sample_in_a_batch_of_1024() -> None:
    mu = torch.linspace(0.5, 5, 1024, dtype=F64)
    y0 = vdp_start(mu)
    with torch.no_grad():
        batch = solve(vdp, y0, T_OUT, rtol=1e-7, atol=1e-9, dense=False)
        for b in (0, 137, 511, 1023):
            alone = solve(vdp, y0[b : b + 1], T_OUT, rtol=1e-7, atol=1e-9, dense=False)
            torch.testing.assert_close(alone.ys[:, 0], batch.ys[:, b], rtol=0, atol=1e-12)
            assert int(alone.stats.n_accepted) == int(batch.stats.n_accepted[b])
            assert int(alone.stats.n_rejected) == int(batch.stats.n_rejected[b])


@pytest.mark.parametrize("solver", [Bosh3(), Dopri5(), Tsit5(), Dopri8()], ids=lambda s: type(s).__name__)
def test_each_sample_takes_the_shared_controllers_steps_for_it_alone(solver) -> None:  # noqa: ANN001
    mu = torch.tensor([0.5, 2.0, 5.0], dtype=F64)
    y0 = vdp_start(mu)
    with torch.no_grad():
        sol = solve(vdp, y0, T_OUT, solver=solver, rtol=1e-6, atol=1e-8, dense=False)
        for b in range(3):
            stats = Stats()
            grid, _ = _output_grid(T_OUT, y0[b : b + 1])
            shared = integrate(vdp, y0[b : b + 1], grid, solver, _PI(rtol=1e-6, atol=1e-8),
                               max_steps=10_000, stats=stats)
            assert int(sol.stats.n_accepted[b]) == stats.accepted
            assert int(sol.stats.n_rejected[b]) == stats.rejected
            assert int(sol.stats.nfe[b]) == stats.nfe
            torch.testing.assert_close(sol.ys[:, b], shared[:, 0], rtol=0, atol=1e-10)
    # the samples do take different step sequences
    assert len(set(sol.stats.n_accepted.tolist())) == 3


def test_same_steps_as_torchode_per_sample() -> None:
    torchode = pytest.importorskip("torchode")
    mu = torch.linspace(0.5, 5, 16, dtype=F64)
    y0 = vdp_start(mu)
    t = torch.linspace(0, 10, 11, dtype=F64)
    ctrl = PIController(rtol=1e-6, atol=1e-6, shrink_after_accept=True)  # torchode's clipping
    with torch.no_grad():
        ours = solve(vdp, y0, t, controller=ctrl, dense=False)
        term = torchode.ODETerm(vdp)
        peer = torchode.AutoDiffAdjoint(
            torchode.Dopri5(term=term), torchode.IntegralController(atol=1e-6, rtol=1e-6, term=term))
        theirs = peer.solve(torchode.InitialValueProblem(y0=y0, t_eval=t.expand(16, -1)))
    assert torch.equal(ours.stats.n_accepted, theirs.stats["n_accepted"])
    assert torch.equal(ours.stats.n_accepted + ours.stats.n_rejected, theirs.stats["n_steps"])
    torch.testing.assert_close(ours.ys.transpose(0, 1), theirs.ys, rtol=0, atol=1e-10)
    assert len(set(ours.stats.n_accepted.tolist())) > 8  # really per sample


def test_finished_samples_cost_nothing_with_compaction() -> None:
    calls: list[int] = []

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls.append(y.shape[0])
        return vdp(t, y)

    y0 = vdp_start(torch.tensor([0.5, 5.0], dtype=F64))
    t = torch.tensor([[0.0, 0.0], [0.5, 8.0]], dtype=F64)  # sample 0 ends early
    with torch.no_grad():
        compact = solve(f, y0, t, dense=False)
        n_compact = list(calls)
        calls.clear()
        masked = solve(f, y0, t, compact=False, dense=False)
    assert sum(n_compact) == int(compact.stats.nfe.sum())
    assert n_compact[-1] == 1 and set(calls) == {2}
    torch.testing.assert_close(compact.ys, masked.ys, rtol=0, atol=0)
    assert torch.equal(compact.stats.nfe, masked.stats.nfe)


def test_a_field_with_per_row_data_is_told_about_compact() -> None:
    mu = torch.tensor([0.5, 5.0], dtype=F64)

    def per_row(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.stack([y[:, 1], mu * (1 - y[:, 0] ** 2) * y[:, 1] - y[:, 0]], 1)

    y0 = torch.tensor([[2.0, 0.0], [2.0, 0.0]], dtype=F64)
    t = torch.tensor([[0.0, 0.0], [0.5, 8.0]], dtype=F64)  # sample 0 finishes first
    with pytest.raises(InputError, match="compact=False"):
        solve(per_row, y0, t)
    assert solve(per_row, y0, t, compact=False).status.tolist() == [0, 0]


def test_odeint_per_sample_steps_returns_the_solutions_tensor() -> None:
    y0 = vdp_start(torch.tensor([0.5, 3.0], dtype=F64))
    tt = torch.stack([T_OUT, 2 * T_OUT], 1)  # per-sample grids
    with torch.no_grad():
        ys = odeint(vdp, y0, tt, per_sample_steps=True, rtol=1e-8, atol=1e-10)
        ref = odeint(vdp, y0, tt, rtol=1e-8, atol=1e-10)
    assert ys.shape == (7, 2, 3)
    torch.testing.assert_close(ys, ref, rtol=0, atol=1e-6)


def test_different_start_times_and_backward_in_time() -> None:
    y0 = torch.tensor([[1.0], [2.0]], dtype=F64)
    t = torch.tensor([[0.0, 1.0], [1.0, 2.5], [2.0, 3.0]], dtype=F64)
    with torch.no_grad():
        sol = solve(lambda t, y: -y * t.unsqueeze(1), y0, t, rtol=1e-10, atol=1e-12)
        exact = y0.T * torch.exp(-(t**2 - t[0] ** 2) / 2)
        torch.testing.assert_close(sol.ys[..., 0], exact, rtol=0, atol=1e-9)
        back = solve(lambda t, y: -y, y0, torch.tensor([1.0, 0.0], dtype=F64), rtol=1e-10,
                     atol=1e-12)
    torch.testing.assert_close(back.ys[-1], y0 * math.e, rtol=1e-9, atol=0)


def test_backprop_gradient_matches_the_analytic_one() -> None:
    rate = nn.Parameter(torch.tensor([0.5, 1.0, 2.0], dtype=F64))
    y0 = torch.tensor([[1.0], [2.0], [3.0]], dtype=F64, requires_grad=True)
    sol = solve(lambda t, y: -rate.unsqueeze(1) * y, y0, torch.tensor([0.0, 1.5], dtype=F64),
                rtol=1e-10, atol=1e-12, compact=False)  # f indexes rate by row
    sol.ys[-1].sum().backward()
    r = rate.detach()
    assert y0.grad is not None
    torch.testing.assert_close(y0.grad[:, 0], torch.exp(-1.5 * r), rtol=1e-8, atol=0)
    torch.testing.assert_close(rate.grad, -1.5 * y0.detach()[:, 0] * torch.exp(-1.5 * r),
                               rtol=1e-7, atol=0)


def test_checkpointed_gives_backprops_gradients_and_retakes_every_step() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 2)).double()
    y0 = torch.randn(5, 2, dtype=F64, requires_grad=True)
    t = torch.linspace(0, 2, 5, dtype=F64)
    params = [y0, *net.parameters()]
    grads, sols = [], []
    for method in (None, Checkpointed()):
        for q in params:
            q.grad = None
        sol = solve(lambda t, y: net(y), y0, t, rtol=1e-8, atol=1e-10, adjoint=method,
                    dense=False)
        assert sol.backward_nfe == 0
        sol.ys.square().sum().backward()
        grads.append(torch.cat([torch.as_tensor(q.grad).reshape(-1) for q in params]))
        sols.append(sol)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-14)
    assert sols[0].backward_nfe == 0
    passes = int((sols[1].stats.n_accepted + sols[1].stats.n_rejected).max())
    assert sols[1].backward_nfe == (Dopri5().stages - 1) * passes


def test_output_time_gradients_match_finite_differences() -> None:
    """Per-sample grids with their own start times: every time gets the derivative of the
    computed solution (steps move with the start, the last step ends on the last time)."""
    torch.manual_seed(0)
    w = torch.randn(2, 2, dtype=F64) * 0.5
    y0 = torch.randn(3, 2, dtype=F64)
    base = torch.tensor([[0.0, 0.1, -0.2], [0.4, 0.9, 0.3], [1.3, 1.7, 2.0]], dtype=F64)

    def loss(tt: torch.Tensor) -> torch.Tensor:
        sol = solve(lambda t, y: torch.tanh(y @ w), y0, tt, rtol=1e-9, atol=1e-11, dense=False)
        return sol.ys.square().sum()

    tt = base.clone().requires_grad_(True)
    loss(tt).backward()
    fd = torch.zeros_like(base)
    with torch.no_grad():
        for i in range(3):
            for b in range(3):
                step = torch.zeros_like(base)
                step[i, b] = 1e-6
                fd[i, b] = (loss(base + step) - loss(base - step)) / 2e-6
    torch.testing.assert_close(tt.grad, fd, rtol=1e-6, atol=1e-8)


def test_throw_false_keeps_the_other_samples() -> None:
    def blowup(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y * y * torch.tensor([1.0, 0.0, 0.0], dtype=y.dtype).unsqueeze(1) - torch.tensor(
            [0.0, 1.0, 1.0], dtype=y.dtype).unsqueeze(1) * y

    y0 = torch.tensor([[2.0], [1.0], [1.0]], dtype=F64)  # sample 0: y = 2/(1-2t), blows at 0.5
    t = torch.linspace(0, 1, 5, dtype=F64)
    with torch.no_grad():
        sol = solve(blowup, y0, t, throw=False, max_steps=500, compact=False)
        assert int(sol.status[0]) in (2, 3, 4) and sol.status[1:].tolist() == [0, 0]
        torch.testing.assert_close(sol.ys[-1, 1:, 0], torch.full((2,), math.exp(-1), dtype=F64))
        assert torch.isnan(sol.ys[-1, 0]).all() and torch.isfinite(sol.ys[:3, 0]).all()
        with pytest.raises(Exception, match="sample 0") as info:
            solve(blowup, y0, t, max_steps=500, compact=False)
        assert "throw=False" in str(info.value)
        capped = solve(lambda t, y: -y, y0[1:], t, throw=False, max_steps=3)
        assert capped.status.tolist() == [2, 2]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"solver": RK4()}, "RK4"),
        ({"controller": ConstantStepSize(0.1)}, "ConstantStepSize.*fixed steps"),
        ({"adjoint": Adjoint}, "adjoint=.*not accepted"),  # the class, not an instance
        ({"rtol": float("nan")}, "rtol=nan"),
        ({"atol": float("inf")}, "atol=inf"),
        ({"max_steps": 0}, "max_steps=0"),
        ({"compact": "yes"}, "compact='yes'"),
        ({"throw": None}, "throw=None"),
    ],
)
def test_bad_input_names_the_argument(kwargs: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        solve(lambda t, y: -y, torch.ones(2, 1), torch.tensor([0.0, 1.0]), **kwargs)


def test_bad_input_through_odeint() -> None:
    y0, t = torch.ones(2, 1), torch.tensor([0.0, 1.0])
    with pytest.raises(InputError, match="step_size=0.1"):
        odeint(lambda t, y: -y, y0, t, per_sample_steps=True, step_size=0.1, solver=RK4())
    with pytest.raises(InputError, match="per_sample_steps='yes'"):
        odeint(lambda t, y: -y, y0, t, per_sample_steps="yes")  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"returned shape \(1, 1\)"):
        solve(lambda t, y: -y[:1], y0, torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize("factor_max", [10.0, 1e80, math.inf])
def test_judge_gives_factor_max_for_a_zero_ratio(factor_max: float) -> None:
    """A zero (or subnormal) error ratio grows the step by ``factor_max`` (finite: the ratio
    need not be clipped to 1e-300 first, and is not), and a ratio from 1e-300 on is judged
    the same with and without that clip."""
    ctrl = PIController(rtol=1e-6, atol=1e-6, factor_max=factor_max)
    steps = PerSampleSteps(ctrl, 5)
    assert steps._unclipped == (factor_max == 10.0)
    r = torch.tensor([0.0, 1e-310, 1e-300, 1e-3, 0.5, 2.0], dtype=F64)
    h = torch.full_like(r, 0.1)
    ok, h_next, _ = steps.judge(r, h, torch.ones_like(r))
    expected = 0.1 * (r.clamp(min=1e-300) ** -0.2 * 0.9).clamp(1.0, factor_max)
    expected[-1] = 0.1 * max(0.2, 2.0**-0.2 * 0.9)
    assert ok.tolist() == [True] * 5 + [False]
    torch.testing.assert_close(h_next, expected, rtol=1e-15, atol=0)
