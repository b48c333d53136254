"""Events sampled inside each step (two crossings in one step) and several events per solve.

A crossing pair inside one step, with the same sign at both ends of the step, against the
analytic times (terminal: the first in the direction; non-terminal: both, with their
gradient in a frequency held by the event module); balls that stop on different events of
one solve against their analytic times; gradients of the event time and state through the
multi-event path against float64 central differences; bad input.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from infdepth.errors import InputError
from infdepth.ode import (
    Bosh3,
    Dopri5,
    Dopri8,
    Event,
    PIController,
    Status,
    SteadyState,
    Tsit5,
    solve,
)

F64 = torch.float64
G = 9.81
C = 0.5  # sin(omega x) = C
SOLVERS = [Bosh3(), Dopri5(), Tsit5(), Dopri8()]


def clock(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x' = 1``: ``x = t``, and every step's dense output is exact."""
    return torch.ones_like(y)


class Wave(nn.Module):
    """``sin(omega x) - C``: crossings at ``(asin C + 2 pi k) / omega`` (up) and
    ``(pi - asin C + 2 pi k) / omega`` (down); ``omega`` a parameter of the event."""

    def __init__(self, omega: float) -> None:
        super().__init__()
        self.omega = nn.Parameter(torch.tensor(omega, dtype=F64))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.omega * y[:, 0]) - C


def one_step(solver: object, wave: Wave, span: float = 2.0, **kw: object) -> object:
    """``x = t`` over [0, span] in one step (dt0 = span; the error estimate is zero)."""
    y0 = torch.zeros(1, 1, dtype=F64)
    sol = solve(clock, y0, torch.tensor([0.0, span], dtype=F64), solver=solver,  # type: ignore[arg-type]
                controller=PIController(rtol=1e-3, atol=1e-3, dt0=span), **kw)  # type: ignore[arg-type]
    assert int(sol.stats.n_accepted[0]) == 1
    return sol


UP, DOWN = math.asin(C) / 3.0, (math.pi - math.asin(C)) / 3.0  # omega = 3, both in [0, 2]


@pytest.mark.parametrize("compact", [True, False])
@pytest.mark.parametrize("solver", SOLVERS, ids=lambda s: type(s).__name__)
def test_two_crossings_inside_one_step_are_both_recorded(solver: object, compact: bool) -> None:
    wave = Wave(3.0)
    # sin(3x) - C is negative at both ends of [0, 2]: no sign change between the step's ends
    assert math.sin(6.0) - C < 0 and -C < 0
    sol = one_step(solver, wave, event=Event(wave, terminal=False), compact=compact)
    rows, times = sol.crossings  # type: ignore[attr-defined]
    assert rows.tolist() == [0, 0]
    torch.testing.assert_close(times.detach(), torch.tensor([UP, DOWN], dtype=F64), rtol=0,
                               atol=1e-10)
    times.sum().backward()  # t = const / omega: dt/domega = -t / omega
    assert wave.omega.grad is not None
    assert float(wave.omega.grad) == pytest.approx(-(UP + DOWN) / 3.0, rel=1e-8)


@pytest.mark.parametrize("solver", SOLVERS, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize(("direction", "first"), [(1, UP), (-1, DOWN), (0, UP)])
def test_a_terminal_event_stops_at_the_first_crossing_inside_the_step(
        solver: object, direction: int, first: float) -> None:
    wave = Wave(3.0)
    sol = one_step(solver, wave, event=Event(wave, direction=direction))
    assert sol.status.tolist() == [Status.EVENT]  # type: ignore[attr-defined]
    assert abs(float(sol.event_t[0].detach()) - first) < 1e-10  # type: ignore[attr-defined]
    assert abs(float(sol.event_y[0, 0].detach()) - first) < 1e-10  # type: ignore[attr-defined]
    sol.event_t.sum().backward()  # type: ignore[attr-defined]
    assert float(wave.omega.grad) == pytest.approx(-first / 3.0, rel=1e-8)


def test_samples_per_step_one_tests_the_ends_only() -> None:
    """The documented limit: with samples at the step's ends only, the pair is missed."""
    wave = Wave(3.0)
    sol = one_step(Dopri5(), wave, event=Event(wave, samples_per_step=1))
    assert sol.status.tolist() == [Status.OK]  # type: ignore[attr-defined]


def test_many_crossings_of_a_fast_oscillation_in_few_steps() -> None:
    """sin(omega t) - C over [0, 10] at omega = 4: 13 crossings, found in 5 steps of 2 with
    16 samples per step (crossings at least 0.26 apart, sub-intervals 0.125 wide)."""
    wave = Wave(4.0)
    y0 = torch.zeros(1, 1, dtype=F64)
    sol = solve(clock, y0, torch.tensor([0.0, 10.0], dtype=F64), controller=PIController(
        rtol=1e-3, atol=1e-3, dt0=2.0, dtmax=2.0), event=Event(
            wave, terminal=False, samples_per_step=16))
    assert int(sol.stats.n_accepted[0]) == 5
    exact = sorted([(math.asin(C) + 2 * math.pi * k) / 4.0 for k in range(7)]
                   + [(math.pi - math.asin(C) + 2 * math.pi * k) / 4.0 for k in range(7)])
    exact = [x for x in exact if x < 10.0]
    _, times = sol.crossings
    assert len(exact) == 13
    torch.testing.assert_close(times.detach(), torch.tensor(exact, dtype=F64), rtol=0, atol=1e-10)


@pytest.mark.parametrize("solver", SOLVERS, ids=lambda s: type(s).__name__)
def test_two_terminal_events_in_one_step_stop_at_the_earlier(solver: object) -> None:
    late = Event(lambda t, y: y[:, 0] - 0.7, direction=1)
    wave = Wave(3.0)
    for events, index in (([late, Event(wave, direction=-1), Event(wave, direction=1)], 2),
                          ([Event(wave, direction=1), late], 0)):
        sol = one_step(solver, wave, event=events)
        assert sol.event_index.tolist() == [index]  # type: ignore[attr-defined]
        assert abs(float(sol.event_t[0].detach()) - UP) < 1e-10  # type: ignore[attr-defined]


def ball(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.stack([y[:, 1], torch.full_like(y[:, 1], -G)], 1)


class Ceiling(nn.Module):
    def __init__(self, height: float) -> None:
        super().__init__()
        self.height = nn.Parameter(torch.tensor(height, dtype=F64))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y[:, 0] - self.height


def ground(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return y[:, 0]


def apex(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return y[:, 1]


def thrown(v0: torch.Tensor, ceiling: Ceiling, **kw: object):  # noqa: ANN201
    """Balls from height 1 thrown up at ``v0``: ground (0), ceiling (1), apex (2,
    non-terminal)."""
    y0 = torch.stack([torch.ones_like(v0), v0], 1)
    events = [Event(ground, direction=-1), Event(ceiling, direction=1),
              Event(apex, direction=-1, terminal=False)]
    return solve(ball, y0, torch.tensor([0.0, 10.0], dtype=F64), event=events, rtol=1e-10,
                 atol=1e-12, **kw)


@pytest.mark.parametrize("compact", [True, False])
def test_samples_stop_on_different_events_of_one_solve(compact: bool) -> None:
    v0 = torch.tensor([0.0, 2.0, 8.0, 5.0], dtype=F64)
    h = 3.0
    sol = thrown(v0, Ceiling(h), compact=compact)
    top = 1 + v0**2 / (2 * G)  # 1, 1.2, 4.26, 2.27: only the third reaches the ceiling
    assert sol.status.tolist() == [Status.EVENT] * 4
    assert sol.event_index.tolist() == [0, 0, 1, 0]
    t_ground = (v0 + torch.sqrt(v0**2 + 2 * G)) / G
    t_ceiling = (v0 - torch.sqrt((v0**2 - 2 * G * (h - 1)).clamp(min=0))) / G
    exact = torch.where(top > h, t_ceiling, t_ground)
    torch.testing.assert_close(sol.event_t.detach(), exact, rtol=1e-10, atol=0)
    # the apex (v = 0 downwards) is recorded before each stop: not for v0 = 0 (v starts at
    # 0), not for the ball stopped at the ceiling on its way up
    rows, times = sol.crossings
    assert rows.tolist() == [1, 3] and sol.crossing_event.tolist() == [2, 2]
    torch.testing.assert_close(times.detach(), v0[[1, 3]] / G, rtol=1e-10, atol=0)


def test_steady_state_in_a_list_and_a_single_event_index() -> None:
    rate = torch.tensor([1.0, 1.0], dtype=F64)

    def decay(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -rate[: y.shape[0], None] * y

    y0 = torch.tensor([[1.0], [0.4]], dtype=F64)  # only the first crosses 0.5
    half = Event(lambda t, y: y[:, 0] - 0.5, direction=-1)
    sol = solve(decay, y0, torch.tensor([0.0, 50.0], dtype=F64),
                event=(half, SteadyState(atol=1e-3)), rtol=1e-10, atol=1e-12)
    assert sol.event_index.tolist() == [0, 1]
    assert abs(float(sol.event_t[0].detach()) - math.log(2)) < 1e-9
    assert float(sol.event_t[1].detach()) > math.log(0.4 / 1e-3)  # |f| = y < 1e-3 there
    single = solve(decay, y0, torch.tensor([0.0, 50.0], dtype=F64), event=half)
    assert single.event_index.tolist() == [0, -1]
    assert single.status.tolist() == [Status.EVENT, Status.OK]


def test_gradients_through_several_events_match_central_differences() -> None:
    def loss(v0: torch.Tensor, height: float) -> torch.Tensor:
        ceiling = Ceiling(height)
        sol = thrown(v0, ceiling)
        assert sol.event_index.tolist() == [0, 1, 0]
        rows, times = sol.crossings
        return sol.event_t.sum() + sol.event_y[:, 1].square().sum() + times.sum(), ceiling

    v0 = torch.tensor([1.0, 8.0, 4.0], dtype=F64, requires_grad=True)
    value, ceiling = loss(v0, 3.0)
    value.backward()
    eps = 1e-6
    with torch.no_grad():
        for b in range(3):
            step = torch.zeros(3, dtype=F64)
            step[b] = eps
            fd = (loss(v0 + step, 3.0)[0] - loss(v0 - step, 3.0)[0]) / (2 * eps)
            assert float(v0.grad[b]) == pytest.approx(float(fd), rel=1e-6)
        fd_h = (loss(v0, 3.0 + eps)[0] - loss(v0, 3.0 - eps)[0]) / (2 * eps)
    assert float(ceiling.height.grad) == pytest.approx(float(fd_h), rel=1e-6)


def test_bad_event_lists_and_samples_name_the_argument() -> None:
    y0, t = torch.ones(2, 1), torch.tensor([0.0, 1.0])
    with pytest.raises(InputError, match=r"event\[1\]="):
        solve(lambda t, y: -y, y0, t, event=[Event(ground), ground])  # type: ignore[list-item]
    with pytest.raises(InputError, match=r"event=\[\] is not accepted"):
        solve(lambda t, y: -y, y0, t, event=[])
    with pytest.raises(InputError, match="samples_per_step=0"):
        Event(ground, samples_per_step=0)
    with pytest.raises(InputError, match="samples_per_step=True"):
        Event(ground, samples_per_step=True)
    with pytest.raises(InputError, match="samples_per_step=2.5"):
        Event(ground, samples_per_step=2.5)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="event="):
        solve(lambda t, y: -y, y0, t, event="ground")  # type: ignore[arg-type]


def test_the_root_costs_one_certifying_call_after_the_samples() -> None:
    """The falling ball's crossing comes from the samples' polynomial (exact for an event
    linear in the state): after one batched call per step (its samples), the root takes a
    single call of ``fn`` (two points ``tol`` apart that bracket it)."""
    calls = []

    def counted(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls.append(y.shape[0])
        return y[:, 0]

    for h0 in (0.3, 2.0, 9.0):
        calls.clear()
        y0 = torch.tensor([[h0, 0.0]], dtype=F64)
        with torch.no_grad():
            sol = solve(ball, y0, torch.tensor([0.0, 10.0], dtype=F64),
                        event=Event(counted, direction=-1), rtol=1e-8, atol=1e-10)
        assert abs(float(sol.event_t[0]) - math.sqrt(2 * h0 / G)) < 1e-10
        steps = int(sol.stats.n_accepted[0] + sol.stats.n_rejected[0])
        assert calls[0] == 1 and calls[1 : 1 + steps] == [4] * steps  # start, then 4 per step
        assert calls[1 + steps :] == [2]  # the root: one call on two points


def test_backwards_in_time_crossings_come_in_the_order_of_integration() -> None:
    y0 = torch.tensor([[2.0]], dtype=F64)  # x' = 1 from t = 2 down to 0: x = t
    wave = Wave(3.0)
    t = torch.tensor([2.0, 0.0], dtype=F64)
    ctrl = PIController(rtol=1e-3, atol=1e-3, dt0=2.0)
    sol = solve(clock, y0, t, controller=ctrl, event=Event(wave, terminal=False))
    assert int(sol.stats.n_accepted[0]) == 1
    torch.testing.assert_close(sol.crossings[1].detach(), torch.tensor([DOWN, UP], dtype=F64),
                               rtol=0, atol=1e-10)
    sol = solve(clock, y0, t, controller=ctrl, event=Event(wave, direction=1))
    # going backwards, the first crossing met in direction 1 (sin(3x) - C rising as t falls)
    assert abs(float(sol.event_t[0].detach()) - DOWN) < 1e-10
