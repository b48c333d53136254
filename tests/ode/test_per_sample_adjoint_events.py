"""Terminal events under the per-sample continuous adjoint (``solve(..., event=...,
adjoint=Adjoint())``).

Each sample's backward solve starts at its own event time ``t*`` with the adjoint the
implicit function theorem gives (``a(t*) = G_y - (c / D) dg/dy``, ``c = G_y . f* + G_t``,
``D = dg/dt + dg/dy . f*``): the falling ball's impact time and state against the analytic
gradients in ``h`` and ``g``, an MLP field with an event module holding parameters against
per-sample backprop and float64 central differences, several events, a steady state, and a
sample's gradient alone equal to its gradient in a batch of 64 with different event times.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from infdepth.errors import InputError
from infdepth.ode import Adjoint, Backprop, Event, SteadyState, solve
from infdepth.ode._adjoint import GradientMethod

F64 = torch.float64
G = 9.81


class Ball(nn.Module):
    """``(x, v)' = (v, -g)`` with a learnable ``g``."""

    def __init__(self, g: float = G) -> None:
        super().__init__()
        self.g = nn.Parameter(torch.tensor(g, dtype=F64))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.stack([y[:, 1], -self.g * torch.ones_like(y[:, 0])], 1)


def ground() -> Event:
    return Event(lambda t, y: y[:, 0], direction=-1, tol=1e-12)


def test_falling_ball_impact_time_and_state_gradients_in_h_and_g_are_analytic() -> None:
    """``t* = sqrt(2h/g)``, ``v* = -sqrt(2gh)``; an output at 0.3 before some impacts (then
    ``x = h - g 0.045``) and outputs after every impact (they hold the impact state)."""
    field = Ball()
    h = torch.tensor([0.3, 1.0, 2.0, 5.0], dtype=F64, requires_grad=True)
    y0 = torch.stack([h, torch.zeros_like(h)], 1)
    t0 = torch.tensor(0.0, dtype=F64, requires_grad=True)
    t = torch.stack([t0, torch.tensor(0.3, dtype=F64), torch.tensor(5.0, dtype=F64),
                     torch.tensor(10.0, dtype=F64)])
    sol = solve(field, y0, t, rtol=1e-11, atol=1e-13, event=ground(), adjoint=Adjoint())
    w = torch.tensor([1.0, 2.0, -3.0, 0.5], dtype=F64)
    loss = ((sol.event_t * w).sum() + (sol.event_y[:, 1] * w.flip(0)).sum()
            + sol.ys[1, :, 0].sum() + 0.25 * sol.ys[2:, :, 1].sum())
    gh, gg, gt0 = torch.autograd.grad(loss, (h, field.g, t0))
    hd = h.detach()
    ts = torch.sqrt(2 * hd / G)
    torch.testing.assert_close(sol.event_t.detach(), ts, rtol=1e-10, atol=0)
    before = (ts > 0.3).to(F64)  # the output at 0.3 precedes the impact (else: the impact x = 0)
    v_weight = w.flip(0) + 0.5  # event_y[:, 1] and the two outputs after the impact
    dv_dh, dv_dg = -G / torch.sqrt(2 * G * hd), -torch.sqrt(2 * hd) / (2 * math.sqrt(G))
    dt_dh, dt_dg = 1 / (G * ts), -ts / (2 * G)
    torch.testing.assert_close(gh, w * dt_dh + v_weight * dv_dh + before, rtol=1e-8, atol=1e-9)
    expected_g = (w * dt_dg + v_weight * dv_dg - 0.045 * before).sum()
    torch.testing.assert_close(gg, expected_g, rtol=1e-8, atol=1e-9)
    # a later start delays every impact by as much (t* - t0 fixed, v* unchanged) and raises
    # x(0.3) = h - g (0.3 - t0)^2 / 2 before the impact: dL/dt0 = sum(w) + g 0.3 per such
    torch.testing.assert_close(gt0, w.sum() + G * 0.3 * before.sum(), rtol=1e-8, atol=1e-9)
    assert sol.backward_nfe > 0


class Field(nn.Module):
    """An MLP plus a drift that carries every sample across the event surface."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2)).double()
        with torch.no_grad():
            self.net[2].weight.mul_(0.3)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        drift = torch.tensor([1.0, 0.2], dtype=y.dtype)
        return self.net(y) * 0.5 + drift


class Surface(nn.Module):
    """``g(t, y) = w . y + b + s t``: an event function holding parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1).double()
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor([[1.0, 0.3]]))
            self.lin.bias.fill_(-1.5)
        self.s = nn.Parameter(torch.tensor(0.1, dtype=F64))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.lin(y).squeeze(1) + self.s * t


def _mlp_setup(batch: int = 6, seed: int = 3) -> tuple[Field, Surface, torch.Tensor,
                                                      torch.Tensor]:
    torch.manual_seed(seed)
    field, surface = Field(), Surface()
    y0 = torch.randn(batch, 2, dtype=F64) * 0.5
    t = torch.tensor([0.0, 0.8, 1.6, 6.0], dtype=F64)
    return field, surface, y0, t


def _mlp_loss(field: Field, surface: Surface, y0: torch.Tensor, t: torch.Tensor,
              method: GradientMethod, rows: slice | None = None, tol: float = 1e-11,
              first: int = 0) -> torch.Tensor:
    """A loss of every output, event time and state; sample ``b`` is the batch's
    ``first + b``-th (its weights)."""
    sol = solve(field, y0, t, rtol=tol, atol=tol * 1e-2, adjoint=method, dense=False,
                event=Event(surface, direction=1, tol=1e-12))
    assert (sol.event_index == 0).all()
    b = torch.arange(first, first + y0.shape[0], dtype=F64)
    w = torch.stack([torch.cos(b), torch.sin(b) + 0.5], 1)
    per = (sol.event_t * (0.5 + 0.1 * b) + (sol.event_y * w).sum(1)
           + (sol.ys[1:] * w).sum((0, 2)) + sol.event_y[:, 0] * sol.event_t)
    return per.sum() if rows is None else per[rows].sum()


def test_mlp_field_with_an_event_module_matches_backprop_and_central_differences() -> None:
    field, surface, y0, t = _mlp_setup()
    y0.requires_grad_(True)
    tensors = [y0, *field.parameters(), *surface.parameters()]
    grads = {}
    for method in (Backprop(), Adjoint()):
        loss = _mlp_loss(field, surface, y0, t, method)
        grads[type(method).__name__] = torch.autograd.grad(loss, tensors)
    sol = solve(field, y0.detach(), t, rtol=1e-11, atol=1e-13,
                event=Event(surface, direction=1, tol=1e-12))
    assert len(set(sol.event_t.tolist())) == y0.shape[0]  # each its own event time
    assert (sol.event_t > 1.6).sum() >= 2 and (sol.event_t < 1.6).sum() >= 2
    for adj, bp in zip(grads["Adjoint"], grads["Backprop"], strict=True):
        torch.testing.assert_close(adj, bp, rtol=1e-7, atol=1e-8)
    # float64 central differences: y0, f's first weight, the event's weight and time slope
    adj = dict(zip(("y0", "f", "ev", "s"), (grads["Adjoint"][0], grads["Adjoint"][1],
                                           grads["Adjoint"][6], grads["Adjoint"][5]), strict=True))
    eps = 1e-6
    with torch.no_grad():
        for name, q, idx in (("y0", y0, (2, 1)), ("f", field.net[0].weight, (3, 0)),
                             ("ev", surface.lin.weight, (0, 1)), ("s", surface.s, None)):
            flat, got = q.view(-1), adj[name].reshape(-1)
            j = 0 if idx is None else idx[0] * q.shape[-1] + idx[1]
            old = flat[j].item()
            flat[j] = old + eps
            up = _mlp_loss(field, surface, y0, t, Backprop())
            flat[j] = old - eps
            down = _mlp_loss(field, surface, y0, t, Backprop())
            flat[j] = old
            fd = float((up - down) / (2 * eps))
            assert abs(float(got[j]) - fd) < 1e-6 * max(1.0, abs(fd)), (name, float(got[j]), fd)


def test_a_samples_gradient_alone_equals_its_gradient_in_a_batch_of_64() -> None:
    field, surface, y0, t = _mlp_setup(batch=64, seed=5)
    y0.requires_grad_(True)
    sol = solve(field, y0.detach(), t, rtol=1e-10, atol=1e-12,
                event=Event(surface, direction=1, tol=1e-12))
    assert (sol.event_index == 0).all()
    assert float(sol.event_t.detach().max() - sol.event_t.detach().min()) > 1.5  # 0.26 to 2.27
    params = [*field.parameters(), *surface.parameters()]
    for b in (0, 17, 63):
        together = torch.autograd.grad(_mlp_loss(field, surface, y0, t, Adjoint(),
                                                 rows=slice(b, b + 1), tol=1e-10),
                                       [y0, *params])
        one = y0.detach()[b : b + 1].clone().requires_grad_(True)
        alone = torch.autograd.grad(_mlp_loss(field, surface, one, t, Adjoint(), tol=1e-10,
                                              first=b), [one, *params])
        torch.testing.assert_close(together[0][b : b + 1], alone[0], rtol=0, atol=1e-10)
        assert float(together[0][:b].abs().sum()) == 0.0  # the others' rows get nothing
        for p_together, p_alone in zip(together[1:], alone[1:], strict=True):
            torch.testing.assert_close(p_together, p_alone, rtol=0, atol=1e-10)


def _two_walls_loss(method: GradientMethod, field: Ball, h: torch.Tensor, v0: torch.Tensor,
                    ceiling: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    y0 = torch.stack([h, v0], 1)
    up = Event(lambda t, y: y[:, 0] - ceiling, direction=1, tol=1e-12)
    apex_never = SteadyState(atol=1e-30, rtol=0.0)  # never reached: rides along
    sol = solve(field, y0, torch.tensor([0.0, 0.2, 10.0], dtype=F64), rtol=1e-11, atol=1e-13,
                event=[ground(), up, apex_never], adjoint=method)
    w = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=F64)
    loss = ((sol.event_t * w).sum() + sol.event_y.square().sum() + sol.ys[1].sum())
    return loss, sol.event_index


def test_several_events_the_fired_one_decides_the_stop_and_its_gradient() -> None:
    """Balls thrown up stop on the ground or on a ceiling: the fired event's function gives
    ``t*`` and its gradient (the ceiling's height a tensor the loss sees through a closure,
    named with ``Adjoint(params=...)``)."""
    grads = {}
    for method_name in ("Backprop", "Adjoint"):
        field = Ball()
        h = torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=F64, requires_grad=True)
        v0 = torch.tensor([1.0, 8.0, 2.0, 9.0], dtype=F64, requires_grad=True)
        ceiling = torch.tensor(4.0, dtype=F64, requires_grad=True)
        method: GradientMethod = (Backprop() if method_name == "Backprop" else
                                  Adjoint(params=[field.g, ceiling]))
        loss, index = _two_walls_loss(method, field, h, v0, ceiling)
        assert index.tolist() == [0, 1, 0, 1]
        grads[method_name] = torch.autograd.grad(loss, (h, v0, field.g, ceiling))
    for adj, bp in zip(grads["Adjoint"], grads["Backprop"], strict=True):
        torch.testing.assert_close(adj, bp, rtol=1e-7, atol=1e-8)
    assert float(grads["Adjoint"][3].abs()) > 0.1  # the ceiling moves the stops it decides


class Relax(nn.Module):
    """``d(y, k)/dt = (b - k y, 0)``: each sample relaxes to ``b / k``."""

    def __init__(self) -> None:
        super().__init__()
        self.b = nn.Parameter(torch.tensor(1.0, dtype=F64))

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.b - h[:, 1] * h[:, 0], torch.zeros_like(h[:, 1])], 1)


def test_a_steady_state_stop_gives_backprops_gradient() -> None:
    """The stop at a step's end is not differentiated in time: both methods give the gradient
    of the state at each sample's own stopping time."""
    grads = {}
    for method in (Backprop(), Adjoint()):
        field = Relax()
        k = torch.tensor([0.5, 1.0, 2.0], dtype=F64, requires_grad=True)
        h0 = torch.stack([torch.zeros_like(k), k], 1)
        sol = solve(field, h0, torch.tensor([0.0, 1.0, 100.0], dtype=F64), rtol=1e-11,
                    atol=1e-13, event=SteadyState(atol=1e-6), adjoint=method)
        assert (sol.event_index == 0).all()
        loss = sol.ys[-1, :, 0].sum() + sol.ys[1, :, 0].square().sum()
        grads[type(method).__name__] = torch.autograd.grad(loss, (k, field.b))
    for adj, bp in zip(grads["Adjoint"], grads["Backprop"], strict=True):
        torch.testing.assert_close(adj, bp, rtol=1e-7, atol=1e-9)


def test_hidden_event_parameters_are_refused() -> None:
    """(Non-terminal events are accepted since issue 26: tests/ode/test_adjoint_crossings.py.)"""
    y0 = torch.ones(2, 2, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    level = torch.tensor(0.5, dtype=F64, requires_grad=True)
    hidden = Event(lambda t, y: y[:, 0] - level, direction=-1)
    with pytest.raises(InputError, match=r"event\[0\]'s fn uses tensors that require grad"):
        solve(Ball(), y0, t, adjoint=Adjoint(), event=hidden)
    field = Ball()
    sol = solve(field, y0, torch.tensor([0.0, 3.0], dtype=F64), adjoint=Adjoint(
        params=[field.g, level]), event=hidden)
    sol.event_t.sum().backward()
    # t* = sqrt(2 (1 - level) / g) past v0 = 1: x = 1 + t - g t^2 / 2 = level
    assert level.grad is not None and float(level.grad) < 0


@pytest.mark.parametrize("compact", [True, False], ids=["compact", "masked"])
def test_backwards_in_time_and_masked_rows_match_backprop(compact: bool) -> None:
    """The ball integrated backwards from ``t = 0`` (``x = h - g t^2 / 2`` reaches 0 at
    ``t* = -sqrt(2h/g)``), outputs on both sides of the stops, a sample that never stops
    (``h`` beyond reach by ``t = -1``), under ``compact`` and with ``f`` seeing the whole
    batch: the adjoint equals backprop, and ``t*`` its analytic gradient in ``h``."""
    grads = {}
    for method in (Backprop(), Adjoint()):
        field = Ball()
        h = torch.tensor([0.5, 2.0, 1.0, 9.0], dtype=F64, requires_grad=True)
        y0 = torch.stack([h, torch.zeros_like(h)], 1)
        sol = solve(field, y0, torch.tensor([0.0, -0.4, -1.0], dtype=F64), rtol=1e-11,
                    atol=1e-13, event=Event(lambda t, y: y[:, 0], direction=-1, tol=1e-12),
                    adjoint=method, compact=compact)
        assert sol.event_index.tolist() == [0, 0, 0, -1]
        w = torch.tensor([1.0, 2.0, -1.5, 0.0], dtype=F64)
        loss = ((torch.nan_to_num(sol.event_t) * w).sum() + (sol.ys[1:] * 0.3).sum()
                + sol.event_y[:, 1].square().sum())
        grads[type(method).__name__] = torch.autograd.grad(loss, (h, field.g))
    for adj, bp in zip(grads["Adjoint"], grads["Backprop"], strict=True):
        torch.testing.assert_close(adj, bp, rtol=1e-7, atol=1e-8)
    field = Ball()
    h = torch.tensor([0.5, 2.0], dtype=F64, requires_grad=True)
    sol = solve(field, torch.stack([h, torch.zeros_like(h)], 1),
                torch.tensor([0.0, -1.0], dtype=F64), rtol=1e-11, atol=1e-13,
                event=Event(lambda t, y: y[:, 0], direction=-1, tol=1e-12), adjoint=Adjoint(),
                compact=compact)
    (gh,) = torch.autograd.grad(sol.event_t.sum(), h)
    torch.testing.assert_close(gh, -1 / torch.sqrt(2 * G * h.detach()), rtol=1e-8, atol=0)


class StiffBall(Ball):
    """The ball with a decaying third component ``z' = -k z``, ``k`` the fourth (constant)."""

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z, k = y[:, 2], y[:, 3]
        return torch.cat([super().forward(t, y[:, :2]), torch.stack([-k * z, 0 * k], 1)], 1)


def test_a_failed_sample_beside_stopped_ones_keeps_the_outputs_it_reached() -> None:
    """``throw=False``: a stiff sample that hits ``max_steps`` gets the gradient of the
    outputs it reached, the stopped one its own (as backprop gives)."""
    grads = {}
    for method in (Backprop(), Adjoint()):
        field = StiffBall()
        h = torch.tensor([1.0, 1.0], dtype=F64, requires_grad=True)
        y0 = torch.stack([h, torch.zeros_like(h), torch.ones_like(h),
                          torch.tensor([0.0, 1e4], dtype=F64)], 1)
        sol = solve(field, y0, torch.tensor([0.0, 0.3, 5.0], dtype=F64), rtol=1e-9,
                    atol=1e-11, max_steps=40, throw=False, adjoint=method,
                    event=Event(lambda t, y: y[:, 0], direction=-1, tol=1e-12))
        assert sol.status.tolist() == [1, 2]  # EVENT, MAX_STEPS
        reached = torch.isfinite(sol.ys)
        loss = sol.ys[reached].sum() + sol.event_t[0] * 2.0
        grads[type(method).__name__] = torch.autograd.grad(loss, (h, field.g))
    for adj, bp in zip(grads["Adjoint"], grads["Backprop"], strict=True):
        torch.testing.assert_close(adj, bp, rtol=1e-7, atol=1e-8)
