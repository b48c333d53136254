"""``Solution.evaluate(t)`` under the per-sample continuous adjoint (``solve(...,
adjoint=Adjoint())``).

Each differentiated call solves the adjoint system of every sample backwards from its query
time to its start (``_adjoint_evaluate.py``). Checked in float64 against the closed form of
``dy/dt = a y`` (``y0``, ``a``, the query times and the start times; shared and per-sample
grids), against backprop through the same solve and central differences for an MLP field
(compact and masked), alone against inside a batch, and at the edges (a query time at the
start, outside a sample's steps, after a terminal event).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from infdepth.ode import Adjoint, Backprop, Event, solve
from infdepth.ode._adjoint import GradientMethod

F64 = torch.float64


class Linear(nn.Module):
    """``dy/dt = a y`` with a learnable ``a``."""

    def __init__(self, a: float = -0.8) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=F64))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.a * y


@pytest.mark.parametrize("per_sample_grid", [False, True], ids=["shared-grid", "own-grids"])
def test_linear_ode_evaluate_gradients_match_the_closed_form(per_sample_grid: bool) -> None:
    """``y(t_q) = y0 exp(a (t_q - t_0))``: ``dy/dy0 = exp(a (t_q - t_0))``, ``dy/da = (t_q -
    t_0) y``, ``dy/dt_q = a y`` and ``dy/dt_0 = -a y``, every sample at its own ``t_q``
    between output times."""
    field = Linear()
    y0 = torch.tensor([[1.0], [2.0], [-0.5], [3.0]], dtype=F64, requires_grad=True)
    if per_sample_grid:
        starts = torch.tensor([0.0, 0.3, -0.2, 0.1], dtype=F64, requires_grad=True)
        t = torch.stack([starts, starts.detach() + 1.0, starts.detach() + 2.0])
    else:
        starts = torch.tensor(0.0, dtype=F64, requires_grad=True)
        t = torch.stack([starts, torch.tensor(1.0, dtype=F64), torch.tensor(2.0, dtype=F64)])
    sol = solve(field, y0, t, rtol=1e-11, atol=1e-13, adjoint=Adjoint())
    tq = (sol.ts[0].detach() + torch.tensor([0.35, 1.7, 0.9, 1.25], dtype=F64)
          ).requires_grad_(True)
    w = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=F64)
    before = sol.backward_nfe
    loss = (sol.evaluate(tq)[:, 0] * w).sum()
    gy0, ga, gtq, gt0 = torch.autograd.grad(loss, (y0, field.a, tq, starts))
    assert sol.backward_nfe > before  # the adjoint solved backwards from tq
    a = -0.8
    span = tq.detach() - sol.ts[0].detach()
    y = y0.detach()[:, 0] * torch.exp(a * span)
    torch.testing.assert_close(sol.evaluate(tq.detach())[:, 0], y, rtol=1e-9, atol=0)
    torch.testing.assert_close(gy0[:, 0], w * torch.exp(a * span), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(ga, (w * span * y).sum(), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(gtq, w * a * y, rtol=1e-8, atol=1e-10)
    expected_t0 = -w * a * y
    torch.testing.assert_close(gt0, expected_t0 if per_sample_grid else expected_t0.sum(),
                               rtol=1e-8, atol=1e-10)


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.net = nn.Sequential(nn.Linear(3, 24), nn.Tanh(), nn.Linear(24, 3)).double()

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y) * (1 + 0.5 * torch.sin(t)).unsqueeze(1)


def _mlp_grads(method: GradientMethod, compact: bool, y0: torch.Tensor, tq: torch.Tensor,
               field: Mlp) -> list[torch.Tensor]:
    y0 = y0.clone().requires_grad_(True)
    tq = tq.clone().requires_grad_(True)
    t = torch.tensor([0.0, 1.0, 2.5], dtype=F64)
    sol = solve(field, y0, t, rtol=1e-10, atol=1e-12, adjoint=method, compact=compact)
    w = torch.linspace(-1.0, 2.0, 3, dtype=F64)
    loss = (sol.evaluate(tq) * w).sum() + sol.evaluate(0.6).square().sum() + sol.ys[1].sum()
    return list(torch.autograd.grad(loss, (y0, tq, *field.parameters())))


@pytest.mark.parametrize("compact", [True, False], ids=["compact", "masked"])
def test_mlp_evaluate_gradients_match_backprop_and_central_differences(compact: bool) -> None:
    """Two calls of ``evaluate`` (per-sample times and a shared one) and an output in one
    loss: the adjoint's gradients equal backprop's through the same solve (to the solver's
    error) and float64 central differences."""
    field = Mlp()
    torch.manual_seed(4)
    y0 = torch.randn(6, 3, dtype=F64)
    tq = torch.tensor([0.2, 0.7, 1.3, 1.9, 2.4, 1.0], dtype=F64)
    adj = _mlp_grads(Adjoint(), compact, y0, tq, field)
    bp = _mlp_grads(Backprop(), compact, y0, tq, field)
    for x, ref in zip(adj, bp, strict=True):
        torch.testing.assert_close(x, ref, rtol=1e-7, atol=1e-8)
    weight = field.net[0].weight
    eps = 1e-6

    def loss_at(y0_: torch.Tensor, tq_: torch.Tensor) -> float:
        with torch.no_grad():
            sol = solve(field, y0_, torch.tensor([0.0, 1.0, 2.5], dtype=F64), rtol=1e-12,
                        atol=1e-14, compact=compact)
            w = torch.linspace(-1.0, 2.0, 3, dtype=F64)
            return float((sol.evaluate(tq_) * w).sum() + sol.evaluate(0.6).square().sum()
                         + sol.ys[1].sum())

    e = torch.zeros_like(y0)
    e[2, 1] = eps
    fd_y0 = (loss_at(y0 + e, tq) - loss_at(y0 - e, tq)) / (2 * eps)
    assert adj[0][2, 1].item() == pytest.approx(fd_y0, rel=1e-6)
    e_t = torch.zeros_like(tq)
    e_t[3] = eps
    fd_t = (loss_at(y0, tq + e_t) - loss_at(y0, tq - e_t)) / (2 * eps)
    assert adj[1][3].item() == pytest.approx(fd_t, rel=1e-6)
    with torch.no_grad():
        weight[1, 2] += eps
        up = loss_at(y0, tq)
        weight[1, 2] -= 2 * eps
        down = loss_at(y0, tq)
        weight[1, 2] += eps
    assert adj[2][1, 2].item() == pytest.approx((up - down) / (2 * eps), rel=1e-6)


def test_a_samples_evaluate_gradient_does_not_depend_on_its_batch() -> None:
    """Sample 5 of a batch of 32 (query times spread over the solve) and the same sample
    alone: its ``y0`` gradient and its share of the parameter gradient agree to 1e-10."""
    field = Mlp()
    torch.manual_seed(5)
    y0 = torch.randn(32, 3, dtype=F64) * 2
    tq = torch.linspace(0.1, 2.4, 32, dtype=F64)
    t = torch.tensor([0.0, 2.5], dtype=F64)
    b = 5
    grads = []
    for rows in (slice(None), slice(b, b + 1)):
        y = y0[rows].clone().requires_grad_(True)
        sol = solve(field, y, t, rtol=1e-9, atol=1e-11, adjoint=Adjoint())
        out = sol.evaluate(tq[rows])
        mask = torch.zeros(out.shape[0], 1, dtype=F64)
        mask[b if out.shape[0] > 1 else 0] = 1.0
        grads.append(torch.autograd.grad((out * mask).sum(), (y, *field.parameters())))
    batch, alone = grads
    torch.testing.assert_close(batch[0][b], alone[0][0], rtol=1e-10, atol=1e-12)
    assert batch[0].abs().sum() == batch[0][b].abs().sum()  # the others get nothing
    for x, ref in zip(batch[1:], alone[1:], strict=True):
        torch.testing.assert_close(x, ref, rtol=1e-10, atol=1e-12)


def test_edges_start_time_outside_and_after_a_terminal_event() -> None:
    """A query at a sample's start gives ``dy/dy0 = 1`` and no parameter gradient; one
    outside a sample's steps gives NaN and no gradient to that sample; a query before a
    terminal event, with the event time in the same loss, equals backprop."""
    field = Linear()
    y0 = torch.tensor([[1.0], [2.0], [3.0]], dtype=F64, requires_grad=True)
    sol = solve(field, y0, torch.tensor([0.0, 1.0], dtype=F64), rtol=1e-10, atol=1e-12,
                adjoint=Adjoint())
    tq = torch.tensor([0.0, 1.5, 0.5], dtype=F64)
    out = sol.evaluate(tq)
    assert torch.isnan(out[1]).all() and torch.isfinite(out[[0, 2]]).all()
    gy0, ga = torch.autograd.grad(out[[0, 2]].sum(), (y0, field.a))
    torch.testing.assert_close(gy0[:, 0], torch.tensor([1.0, 0.0, torch.exp(torch.tensor(
        -0.4, dtype=F64))], dtype=F64), rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(ga, 0.5 * out[2, 0].detach(), rtol=1e-8, atol=1e-12)

    grads = {}
    for method in (Backprop(), Adjoint()):
        field = Linear()
        y0 = torch.tensor([[1.0], [2.0], [3.0]], dtype=F64, requires_grad=True)
        event = Event(lambda t, y: y[:, 0] - 0.9, direction=-1, tol=1e-12)
        sol = solve(field, y0, torch.tensor([0.0, 3.0], dtype=F64), rtol=1e-10, atol=1e-12,
                    event=event, adjoint=method)
        loss = sol.evaluate(0.1).sum() + sol.event_t.sum()
        grads[type(method).__name__] = torch.autograd.grad(loss, (y0, field.a))
    for x, ref in zip(grads["Adjoint"], grads["Backprop"], strict=True):
        torch.testing.assert_close(x, ref, rtol=1e-7, atol=1e-9)


def test_no_graph_without_anything_to_differentiate() -> None:
    """Without inputs that require grad (or under ``no_grad``) ``evaluate`` builds no node,
    so nothing waits for a backward solve."""
    y0 = torch.ones(2, 1, dtype=F64)
    sol = solve(lambda t, y: -y, y0, torch.tensor([0.0, 1.0], dtype=F64),
                adjoint=Adjoint(params=[]))
    assert not sol.evaluate(0.5).requires_grad
    field = Linear()
    sol = solve(field, y0, torch.tensor([0.0, 1.0], dtype=F64), adjoint=Adjoint())
    assert sol.evaluate(0.5).requires_grad
    with torch.no_grad():
        assert not sol.evaluate(0.5).requires_grad


def test_query_times_alone_take_one_call_of_f_and_no_backward_solve() -> None:
    """When only the query times need a gradient it is ``G . f(t_q, y(t_q))``, one batched
    call of ``f``; outside a sample's steps it is zero."""
    y0 = torch.tensor([[1.0], [2.0]], dtype=F64)
    sol = solve(lambda t, y: -0.5 * y, y0, torch.tensor([0.0, 1.0], dtype=F64), rtol=1e-10,
                atol=1e-12, adjoint=Adjoint(params=[]))
    tq = torch.tensor([0.4, 1.5], dtype=F64, requires_grad=True)
    out = sol.evaluate(tq)
    before = sol.backward_nfe
    (gtq,) = torch.autograd.grad(out, tq, torch.full_like(out, 3.0))  # NaN row's cotangent too
    assert sol.backward_nfe == before + 1
    torch.testing.assert_close(gtq, torch.tensor([3.0 * -0.5 * torch.exp(torch.tensor(
        -0.2, dtype=F64)), 0.0], dtype=F64), rtol=1e-8, atol=0)
