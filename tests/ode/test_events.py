"""Events: each sample stops where its event function changes sign.

The falling ball's impact time sqrt(2h/g) and its gradient in h and g (analytic, through
the implicit function theorem), a bouncing ball over several bounces against the analytic
series, torchdiffeq's odeint_event on the same problem, 1024 samples with different event
times in one call, event parameters held by a module, and steady states.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from infdepth.errors import InputError
from infdepth.ode import Bosh3, Dopri8, Event, Status, SteadyState, Tsit5, solve

F64 = torch.float64
T_SPAN = torch.tensor([0.0, 10.0], dtype=F64)


def falling(g: torch.Tensor):  # noqa: ANN201
    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.stack([y[:, 1], -g * torch.ones_like(y[:, 1])], 1)

    return f


def ground(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return y[:, 0]


def test_falling_ball_impact_time_and_its_gradient_in_h_and_g() -> None:
    g = torch.tensor(9.81, dtype=F64, requires_grad=True)
    h = torch.tensor([0.5, 1.0, 4.0], dtype=F64, requires_grad=True)
    y0 = torch.stack([h, torch.zeros_like(h)], 1)
    sol = solve(falling(g), y0, T_SPAN, event=Event(ground, direction=-1), rtol=1e-10,
                atol=1e-12)
    exact = torch.sqrt(2 * h.detach() / g.detach())
    assert sol.status.tolist() == [Status.EVENT] * 3
    torch.testing.assert_close(sol.event_t.detach(), exact, rtol=1e-10, atol=0)
    torch.testing.assert_close(sol.event_y[:, 0].detach(), torch.zeros(3, dtype=F64), rtol=0,
                               atol=1e-10)
    speed = sol.event_y[:, 1]  # impact speed -sqrt(2 g h): its gradient needs dt*/dtheta too
    (sol.event_t.sum() + speed.sum()).backward()
    gd = g.detach()
    dt_dh = 1 / (gd * exact)
    dv_dh = -gd / torch.sqrt(2 * gd * h.detach())
    torch.testing.assert_close(h.grad, dt_dh + dv_dh, rtol=1e-8, atol=0)
    dt_dg, dv_dg = -exact / (2 * gd), -h.detach() / torch.sqrt(2 * gd * h.detach())
    torch.testing.assert_close(g.grad, (dt_dg + dv_dg).sum(), rtol=1e-8, atol=0)


def test_outputs_after_the_event_hold_the_event_state() -> None:
    y0 = torch.tensor([[1.0, 0.0]], dtype=F64)
    t = torch.linspace(0, 1, 11, dtype=F64)
    sol = solve(falling(torch.tensor(9.81, dtype=F64)), y0, t, event=Event(ground),
                rtol=1e-10, atol=1e-12)
    t_hit = math.sqrt(2 / 9.81)
    before = t <= t_hit
    torch.testing.assert_close(sol.ys[before, 0, 0], 1 - 9.81 * t[before] ** 2 / 2)
    assert torch.equal(sol.ys[~before, 0], sol.event_y[0].expand(int((~before).sum()), 2))


def bounce_times(h: float, g: float, e: float, n: int) -> list[float]:
    t1 = math.sqrt(2 * h / g)
    v = g * t1
    times = [t1]
    for _ in range(n - 1):
        v *= e
        times.append(times[-1] + 2 * v / g)
    return times


def test_bouncing_ball_over_several_bounces_matches_the_analytic_series() -> None:
    g, e, n = 9.81, 0.8, 5
    f = falling(torch.tensor(g, dtype=F64))
    heights = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    y = torch.stack([heights, torch.zeros(3, dtype=F64)], 1)
    t = torch.zeros(3, dtype=F64)
    found = []
    for _ in range(n):
        span = torch.stack([t, t + 10.0])
        sol = solve(f, y, span, event=Event(ground, direction=-1), rtol=1e-10, atol=1e-12)
        assert sol.status.tolist() == [Status.EVENT] * 3
        t = sol.event_t.detach()
        found.append(t)
        y = sol.event_y.detach() * torch.tensor([0.0, -e], dtype=F64)  # on the ground, bounced
    for b, h in enumerate(heights.tolist()):
        exact = torch.tensor(bounce_times(h, g, e, n), dtype=F64)
        torch.testing.assert_close(torch.stack(found)[:, b], exact, rtol=1e-9, atol=0)


def test_agrees_with_torchdiffeqs_odeint_event() -> None:
    torchdiffeq = pytest.importorskip("torchdiffeq")
    g = torch.tensor(9.81, dtype=F64)
    y0 = torch.tensor([[2.0, 1.5]], dtype=F64)  # thrown upwards

    def f1(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.stack([y[..., 1], -g * torch.ones_like(y[..., 1])], -1)

    t_theirs, _ = torchdiffeq.odeint_event(
        f1, y0[0], torch.tensor(0.0, dtype=F64), event_fn=lambda t, y: y[0], method="dopri5",
        rtol=1e-10, atol=1e-12)
    ours = solve(falling(g), y0, T_SPAN, event=Event(ground, direction=-1), rtol=1e-10,
                 atol=1e-12)
    exact = (1.5 + math.sqrt(1.5**2 + 2 * 9.81 * 2)) / 9.81
    assert abs(float(ours.event_t[0]) - float(t_theirs)) < 1e-9
    assert abs(float(ours.event_t[0]) - exact) < 1e-10


def test_1024_samples_with_different_event_times_in_one_call() -> None:
    h = torch.linspace(0.1, 10.0, 1024, dtype=F64)
    y0 = torch.stack([h, torch.zeros_like(h)], 1)
    with torch.no_grad():
        sol = solve(falling(torch.tensor(9.81, dtype=F64)), y0, T_SPAN,
                    event=Event(ground, direction=-1, tol=1e-12), rtol=1e-9, atol=1e-11,
                    dense=False)
    assert (sol.status == Status.EVENT).all()
    torch.testing.assert_close(sol.event_t, torch.sqrt(2 * h / 9.81), rtol=1e-9, atol=0)
    # each stopped on its own: steps grow with the height, not with the batch's worst
    assert sol.stats.n_accepted.min() < sol.stats.n_accepted.max()


class Wall(nn.Module):
    """An event at a learned height: the parameter lives in the event, not in the state."""

    def __init__(self) -> None:
        super().__init__()
        self.height = nn.Parameter(torch.tensor(0.3, dtype=F64))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y[:, 0] - self.height


def test_event_parameters_held_by_a_module_get_gradients() -> None:
    wall = Wall()
    y0 = torch.tensor([[1.0, 0.0], [2.0, 0.0]], dtype=F64)
    sol = solve(falling(torch.tensor(9.81, dtype=F64)), y0, T_SPAN,
                event=Event(wall, direction=-1), rtol=1e-10, atol=1e-12)
    drop = y0[:, 0] - 0.3
    t_hit = torch.sqrt(2 * drop / 9.81)
    torch.testing.assert_close(sol.event_t.detach(), t_hit, rtol=1e-10, atol=0)
    sol.event_t.sum().backward()
    torch.testing.assert_close(wall.height.grad, (-1 / (9.81 * t_hit)).sum(), rtol=1e-8, atol=0)


def test_direction_selects_the_crossing() -> None:
    y0 = torch.tensor([[1.0, 0.0]], dtype=F64)  # cos t, sin-like: x crosses 0 down at pi/2

    def osc(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.stack([y[:, 1], -y[:, 0]], 1)

    up = solve(osc, y0, T_SPAN, event=Event(ground, direction=1), rtol=1e-10, atol=1e-12)
    down = solve(osc, y0, T_SPAN, event=Event(ground, direction=-1), rtol=1e-10, atol=1e-12)
    assert abs(float(down.event_t[0]) - math.pi / 2) < 1e-9
    assert abs(float(up.event_t[0]) - 3 * math.pi / 2) < 1e-9


def test_steady_state_stops_each_sample_when_f_is_small() -> None:
    rate = torch.tensor([1.0, 3.0], dtype=F64)
    y0 = torch.stack([torch.ones(2, dtype=F64), rate], 1)

    def decay(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.stack([-y[:, 1] * y[:, 0], torch.zeros_like(y[:, 1])], 1)

    sol = solve(decay, y0, torch.tensor([0.0, 50.0], dtype=F64), event=SteadyState(atol=1e-4))
    assert sol.status.tolist() == [Status.EVENT, Status.EVENT]
    # |f| = rate * exp(-rate t) / sqrt(2) (rms of two components) first below 1e-4
    crossing = torch.log(rate / (1e-4 * math.sqrt(2))) / rate
    assert (sol.event_t >= crossing).all() and (sol.event_t < 1.6 * crossing).all()
    assert sol.event_t[1] < sol.event_t[0]


def test_bad_event_input_names_the_argument() -> None:
    y0, t = torch.ones(2, 1), torch.tensor([0.0, 1.0])
    with pytest.raises(InputError, match=r"event fn returned \(2, 1\)"):
        solve(lambda t, y: -y, y0, t, event=Event(lambda t, y: y))
    with pytest.raises(InputError, match="direction=2"):
        Event(ground, direction=2)
    with pytest.raises(InputError, match="tol=nan"):
        Event(ground, tol=float("nan"))
    with pytest.raises(InputError, match="event="):
        solve(lambda t, y: -y, y0, t, event=ground)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="atol=-1"):
        SteadyState(atol=-1)


def test_non_terminal_event_records_every_crossing_with_gradients() -> None:
    omega = torch.tensor([1.0, 1.7, 2.3], dtype=F64, requires_grad=True)

    def osc(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # x = cos(omega t)
        w = y[:, 2]
        return torch.stack([y[:, 1], -w * w * y[:, 0], torch.zeros_like(w)], 1)

    y0 = torch.stack([torch.ones(3, dtype=F64), torch.zeros(3, dtype=F64), omega], 1)
    t = torch.tensor([0.0, 10.0], dtype=F64)
    sol = solve(osc, y0, t, event=Event(ground, direction=-1, terminal=False), rtol=1e-10,
                atol=1e-12)
    assert sol.status.tolist() == [Status.OK] * 3 and torch.isnan(sol.event_t).all()
    rows, times = sol.crossings
    expected_rows, expected_t = [], []
    for b, w in enumerate(omega.tolist()):  # downward zeros of cos: (pi/2 + 2 pi k) / w
        k = 0
        while (math.pi / 2 + 2 * math.pi * k) / w < 10:
            expected_rows.append(b)
            expected_t.append((math.pi / 2 + 2 * math.pi * k) / w)
            k += 1
    assert rows.tolist() == expected_rows
    torch.testing.assert_close(times.detach(), torch.tensor(expected_t, dtype=F64), rtol=1e-9,
                               atol=0)
    times.sum().backward()  # dt/domega = -t / omega
    exact = torch.zeros(3, dtype=F64).index_add(
        0, rows, -times.detach() / omega.detach()[rows])
    torch.testing.assert_close(omega.grad, exact, rtol=1e-6, atol=0)


@pytest.mark.parametrize("compact", [True, False])
@pytest.mark.parametrize("solver", [Bosh3(), Tsit5(), Dopri8()], ids=lambda s: type(s).__name__)
def test_events_with_every_adaptive_solver_compact_or_masked(solver, compact: bool) -> None:  # noqa: ANN001
    h = torch.tensor([0.5, 2.0, 8.0], dtype=F64)
    y0 = torch.stack([h, torch.zeros_like(h)], 1)
    t = torch.stack([torch.zeros(3, dtype=F64), torch.tensor([0.1, 5.0, 5.0], dtype=F64)])
    sol = solve(falling(torch.tensor(9.81, dtype=F64)), y0, t, solver=solver, compact=compact,
                event=Event(ground, direction=-1), rtol=1e-10, atol=1e-12)
    assert sol.status.tolist() == [Status.OK, Status.EVENT, Status.EVENT]  # 0 ends before
    torch.testing.assert_close(sol.event_t[1:], torch.sqrt(2 * h[1:] / 9.81), rtol=1e-9, atol=0)
    assert abs(float(sol.ys[-1, 0, 0]) - (0.5 - 9.81 * 0.01 / 2)) < 1e-10


def test_masked_events_show_f_the_whole_batch() -> None:
    g = torch.tensor([9.81, 1.62, 24.8], dtype=F64)  # per-row data: needs compact=False
    seen: set[int] = set()

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        seen.add(y.shape[0])
        return torch.stack([y[:, 1], -g], 1)

    h = torch.tensor([1.0, 2.0, 3.0], dtype=F64, requires_grad=True)
    y0 = torch.stack([h, torch.zeros_like(h)], 1)
    sol = solve(f, y0, T_SPAN, event=Event(ground, direction=-1), compact=False, rtol=1e-10,
                atol=1e-12)
    sol.event_t.sum().backward()
    assert seen == {3}
    t_hit = torch.sqrt(2 * h.detach() / g)
    torch.testing.assert_close(sol.event_t.detach(), t_hit, rtol=1e-10, atol=0)
    torch.testing.assert_close(h.grad, 1 / (g * t_hit), rtol=1e-8, atol=0)
