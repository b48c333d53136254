"""``ODEBlock(..., until=...)``: depth until converged, each sample on its own steps.

The field relaxes each sample to its steady state, ``dy/dt = b - k y`` (``y* = b/k``), with
``k`` per sample carried in the state and ``b`` a parameter of the field; from ``y0 = 0`` the
slope is ``|f(t)| = b e^{-k t}``, so the time where ``rms(f)`` (over the two state components,
the second being ``k`` with slope 0) falls to ``tol`` is ``log(b / (sqrt(2) tol)) / k``.
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
    Backprop,
    Checkpointed,
    Event,
    KenCarp4,
    KineticEnergy,
    ODEBlock,
    SteadyState,
)
from infdepth.ode._per_sample_step import rms_rows

F64 = torch.float64
TOL = 1e-8
RATES = (0.5, 1.0, 2.0, 4.0)


class Relax(nn.Module):
    """``d(y, k)/dt = (b - k y, 0)``: rows independent, ``k`` per sample in the state."""

    def __init__(self, b: float = 1.0) -> None:
        super().__init__()
        self.b = nn.Parameter(torch.tensor(b, dtype=F64))

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        y, k = h[:, 0], h[:, 1]
        return torch.stack([self.b - k * y, torch.zeros_like(k)], 1)


def start(rates: tuple[float, ...] = RATES) -> torch.Tensor:
    k = torch.tensor(rates, dtype=F64)
    return torch.stack([torch.zeros_like(k), k], 1)


def time_to_tol(k: torch.Tensor, slope0: torch.Tensor | float = 1.0) -> torch.Tensor:
    """When ``rms(f) = |f(0)| e^{-k t} / sqrt(2)`` falls to ``TOL``."""
    return torch.log(slope0 / (math.sqrt(2) * TOL) * torch.ones_like(k)) / k


def block(until: SteadyState | Event, *, t1: float = 100.0, field: Relax | None = None,
          **kw: object) -> ODEBlock:
    return ODEBlock(Relax() if field is None else field, t1=t1, rtol=1e-10, atol=1e-12,
                    until=until, **kw)  # type: ignore[arg-type]


def test_each_sample_stops_after_its_own_steady_time_in_its_own_state() -> None:
    h0 = start()
    k = h0[:, 1]
    blk = block(SteadyState(atol=TOL))
    out = blk(h0)
    depths = blk.last_depths
    assert depths is not None and depths.converged.all()
    crossing = time_to_tol(k)
    # the stop is the end of the first accepted step where rms(f) < tol: after the crossing,
    # by less than one step (k * overshoot measured 0.27-1.18)
    assert (depths.t >= crossing * (1 - 1e-12)).all(), (depths.t, crossing)
    assert (k * (depths.t - crossing) < 1.5).all(), (depths.t, crossing)
    assert len(set(depths.t.tolist())) == len(RATES)
    # the output is the state at the sample's own stopping time (analytic), converged
    exact = (1 - torch.exp(-k * depths.t)) / k
    torch.testing.assert_close(out[:, 0], exact, rtol=0, atol=1e-9)
    assert (rms_rows(blk.func(depths.t, out)) < TOL).all()
    assert (depths.stats.n_accepted > 0).all() and blk.nfe_forward > 0


def test_a_sample_stops_as_it_would_alone() -> None:
    h0 = start()
    blk = block(SteadyState(atol=TOL))
    out = blk(h0)
    assert blk.last_depths is not None
    together = blk.last_depths.t
    for b in range(len(RATES)):
        alone = blk(h0[b : b + 1])
        assert blk.last_depths.t[0] == together[b]
        torch.testing.assert_close(alone[0], out[b], rtol=0, atol=1e-14)


def test_an_event_on_the_slope_stops_at_the_time_to_tolerance() -> None:
    """A terminal ``Event`` is root-found: the stopping time is analytic to the solver's
    tolerance. Here ``y* = 0`` (``b = 0``, ``y0 = 1``), so the relative tolerance bounds the
    error of the small slope (with ``y* != 0`` the slope ``b - k y`` near ``TOL`` loses digits
    to cancellation: time error ~ state error / ``TOL``)."""
    field = Relax(b=0.0)
    blk = ODEBlock(field, t1=100.0, rtol=1e-10, atol=1e-14, until=Event(
        lambda t, h: rms_rows(field(t, h)) - TOL, direction=-1, tol=1e-12))
    h0 = start()
    h0[:, 0] = 1.0
    out = blk(h0)
    assert blk.last_depths is not None and blk.last_depths.converged.all()
    k = h0[:, 1]
    # the time error is the state's global relative error over k (measured 1.8e-8 relative)
    torch.testing.assert_close(blk.last_depths.t, time_to_tol(k, k), rtol=1e-7, atol=0)
    torch.testing.assert_close(rms_rows(field(blk.last_depths.t, out)),
                               torch.full_like(k, TOL), rtol=1e-6, atol=0)


LEVEL = 0.4


def test_an_event_module_joins_the_blocks_parameters() -> None:
    class Threshold(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.level = nn.Parameter(torch.tensor(LEVEL, dtype=F64))

        def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
            return h[:, 0] - self.level

    threshold = Threshold()
    blk = block(Event(threshold, direction=1))
    assert any(p is threshold.level for p in blk.parameters())
    out = blk(start())
    # y(t*) = level, and its time t* = -log(1 - level k) / k where level k < 1; a level of
    # exactly 1 / k (the steady state) would be a tangency within the solver's tolerance
    # (the dense output inside a step may touch it), so no rate sits on it
    k = start()[:, 1]
    reached = k * LEVEL < 1
    assert blk.last_depths is not None
    assert blk.last_depths.converged.tolist() == reached.tolist()
    torch.testing.assert_close(out[reached, 0], torch.full_like(k[reached], LEVEL), rtol=0, atol=1e-9)
    torch.testing.assert_close(blk.last_depths.t[reached], -torch.log(1 - LEVEL * k[reached]) / k[reached],
                               rtol=1e-8, atol=0)
    (g,) = torch.autograd.grad(out[reached, 0].sum(), threshold.level)
    assert float(g) == pytest.approx(int(reached.sum()), rel=1e-9)  # y* = level: gradient 1 each


@pytest.mark.parametrize("adjoint", [Backprop(), Checkpointed(), Adjoint()],
                         ids=["backprop", "checkpointed", "adjoint"])
def test_gradients_match_finite_differences(adjoint: Backprop | Checkpointed | Adjoint) -> None:
    """The output ``y(t_stop) = (b/k)(1 - e^{-k t_stop})``: its gradients at each sample's own
    stopping time (the step-end stop is not differentiated), within 2e-7 of those of the
    steady state ``b/k`` (``1/k`` in ``b``, ``-b/k^2`` in ``k``), and against float64 central
    differences of the block itself."""
    h0 = start().requires_grad_(True)
    field = Relax()
    blk = block(SteadyState(atol=TOL), adjoint=adjoint, field=field)
    loss = blk(h0)[:, 0].sum()
    g_h0, g_b = torch.autograd.grad(loss, (h0, field.b))
    assert blk.last_depths is not None
    k, t = h0[:, 1].detach(), blk.last_depths.t
    decay = torch.exp(-k * t)
    # measured 4e-10 and 3e-11; those of a solve to t1 differ by 2e-7 and 8e-9
    torch.testing.assert_close(g_h0[:, 1], -(1 - decay) / k**2 + t * decay / k, rtol=1e-8, atol=0)
    assert float(g_b) == pytest.approx(float(((1 - decay) / k).sum()), rel=1e-9)
    torch.testing.assert_close(g_h0[:, 1], -1 / k**2, rtol=1e-6, atol=0)
    eps = 1e-6
    with torch.no_grad():
        for b in range(len(RATES)):
            up, down = h0.detach().clone(), h0.detach().clone()
            up[b, 1] += eps
            down[b, 1] -= eps
            fd = (blk(up)[:, 0].sum() - blk(down)[:, 0].sum()) / (2 * eps)
            assert float(g_h0[b, 1]) == pytest.approx(float(fd), rel=1e-6, abs=1e-9), b
        field.b.add_(eps)
        hi = blk(h0)[:, 0].sum()
        field.b.sub_(2 * eps)
        lo = blk(h0)[:, 0].sum()
        field.b.add_(eps)
    assert float(g_b) == pytest.approx(float((hi - lo) / (2 * eps)), rel=1e-6)
    assert (blk.nfe_backward > 0) == (not isinstance(adjoint, Backprop))


def test_a_sample_not_converged_by_t1_stops_there_with_the_gradient_in_t1() -> None:
    h0 = start((0.05, 4.0))  # steady only after t = 361 for k = 0.05
    blk = block(SteadyState(atol=TOL), t1=20.0, learn_t1=True)
    with torch.no_grad():
        blk.t1.fill_(20.0)
    out = blk(h0)
    depths = blk.last_depths
    assert depths is not None
    assert depths.converged.tolist() == [False, True]
    assert float(depths.t[0]) == 20.0 and float(depths.t[1]) < 20.0
    assert float(out[0, 0].detach()) == pytest.approx((1 - math.exp(-1.0)) / 0.05, rel=1e-9)
    (g,) = torch.autograd.grad(out[:, 0].sum(), blk.t1)
    assert float(g) == pytest.approx(math.exp(-1.0), rel=1e-8)  # dy/dt1 = f(t1), one sample


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"until": "steady"}, "until='steady'"),
    ({"until": SteadyState(atol=TOL), "solver": RK4()}, "solver=RK4"),
    ({"until": SteadyState(atol=TOL), "solver": KenCarp4()}, "solver=KenCarp4"),
    ({"until": SteadyState(atol=TOL), "step_size": 0.1}, "step_size=0.1"),
    ({"until": SteadyState(atol=TOL), "regularisers": [KineticEnergy(0.1)]}, "regularisers"),
    ({"until": Event(lambda t, h: h[:, 0], terminal=False)}, "terminal=False"),
    ({"until": []}, r"until=\[\] is not accepted"),
    ({"until": [SteadyState(atol=TOL), "steady"]}, r"until\[1\]='steady'"),
    ({"until": [SteadyState(atol=TOL), Event(lambda t, h: h[:, 0], terminal=False)]},
     r"until\[1\]=Event\(\.\.\., terminal=False\)"),
])
def test_bad_until_input_names_the_argument(kwargs: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        ODEBlock(Relax(), t1=1.0, **kwargs)


class Level(nn.Module):
    """``h_0 - level``: an event function holding a parameter."""

    def __init__(self, level: float = LEVEL) -> None:
        super().__init__()
        self.level = nn.Parameter(torch.tensor(level, dtype=F64))

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return h[:, 0] - self.level


def test_a_list_of_conditions_stops_each_sample_at_its_earliest() -> None:
    """``until=[SteadyState, Event(level), Event(never)]``: ``y`` rises from 0 to ``1/k``; the
    samples with ``level k < 1`` cross the level first (analytic time), the one with ``k = 4``
    (``1/k = 0.25 < level``) stops on the steady state; ``last_depths.event`` says which."""
    level = Level()
    never = Level(5.0)
    blk = block([SteadyState(atol=TOL), Event(level, direction=1), Event(never, direction=1)])
    assert any(p is level.level for p in blk.parameters())
    assert any(p is never.level for p in blk.parameters())
    h0 = start()
    out = blk(h0)
    depths = blk.last_depths
    assert depths is not None
    k = h0[:, 1]
    assert depths.event.tolist() == [1, 1, 1, 0]
    assert depths.converged.all()
    crosses = k * LEVEL < 1
    torch.testing.assert_close(depths.t[crosses], -torch.log(1 - LEVEL * k[crosses]) / k[crosses],
                               rtol=1e-8, atol=0)
    torch.testing.assert_close(out[crosses, 0], torch.full_like(k[crosses], LEVEL), rtol=0,
                               atol=1e-9)
    assert float(depths.t[3]) >= float(time_to_tol(k[3:]))
    # a sample alone stops as in the batch
    for b in range(len(RATES)):
        alone = blk(h0[b : b + 1])
        assert blk.last_depths is not None and blk.last_depths.event.tolist() == [
            depths.event[b].item()]
        torch.testing.assert_close(alone[0], out[b], rtol=0, atol=1e-14)
    # t1 before every stop: each sample runs to it, event -1
    short = block([SteadyState(atol=TOL), Event(Level(), direction=1)], t1=0.1)
    short(h0)
    assert short.last_depths is not None and short.last_depths.event.tolist() == [-1] * 4
    assert not short.last_depths.converged.any()


@pytest.mark.parametrize("adjoint", [Checkpointed(), Adjoint()], ids=["checkpointed", "adjoint"])
def test_a_list_of_conditions_gradients_match_backprop(adjoint: Checkpointed | Adjoint) -> None:
    """The gradients in ``h0``, the field's ``b``, the level (an event module's parameter) and
    a learned ``t1`` that one sample reaches: every method the same (float64)."""
    grads = []
    for method in (Backprop(), adjoint):
        field, level = Relax(), Level(1.0)
        blk = block([SteadyState(atol=TOL), Event(level, direction=1)], t1=2.0, field=field,
                    learn_t1=True, adjoint=method)
        # y = (1 - e^{-k t}) / k crosses 1 at 1.05 and 1.39 (k = 0.1, 0.5), not before t1 = 2
        # for k = 0.9 (at 2.56), and k = 12 (1/k < 1) is steady at 1.51
        h0 = start((0.1, 0.5, 0.9, 12.0)).requires_grad_(True)
        out = blk(h0)
        assert blk.last_depths is not None
        assert blk.last_depths.event.tolist() == [1, 1, -1, 0]
        w = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=F64)
        loss = (out[:, 0] * w).sum() + out[:, 0].square().sum()
        grads.append(torch.autograd.grad(loss, (h0, field.b, level.level, blk.t1)))
    for got, expected in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-9)
    assert float(grads[0][2].abs()) > 0.1 and float(grads[0][3].abs()) > 0.01
