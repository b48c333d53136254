"""The per-sample loop's outputs stored a few steps at a time (issue 26, ``SampleOutputs``).

Every output equals the solution's dense interpolant (``Solution.evaluate``, built from the
accepted steps by other code) at its time, up to rounding: several outputs inside one step,
rows that store nothing, compactions, events between output times, DOP853's steps with and
without their dense stages. And storing the outputs of up to ``PENDING_STEPS`` steps at
once gives what storing each step's at once gives (``PENDING_STEPS = 1``), gradients
included: the values to rounding (the dense output's weights are one matrix product, which
rounds by its column count), everything else exactly.
"""

from __future__ import annotations

import pytest
import torch

import infdepth.ode._outputs as outputs
from infdepth.ode import Dopri5, Dopri8, Event, Tsit5, solve

F64 = torch.float64


def vdp(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x, v, mu = y.unbind(1)
    return torch.stack([v, mu * (1 - x * x) * v - x, torch.zeros_like(mu)], 1)


def ball(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.stack([y[:, 1], torch.full_like(t, -9.81) + 0.5 * torch.sin(3 * t),
                        torch.zeros_like(t)], 1)


def _solve(case: str, solver: object, compact: bool, grad: bool, dense: bool = False
           ) -> list[torch.Tensor]:
    batch = 48
    mu = torch.linspace(0.5, 6.0, batch, dtype=F64).requires_grad_(grad)
    if case == "vdp":  # 120 output times: several inside one step
        y0 = torch.stack([torch.full_like(mu, 2.0), torch.zeros_like(mu), mu], 1)
        t = torch.linspace(0.0, 8.0, 120, dtype=F64)
        sol = solve(vdp, y0, t, solver=solver, rtol=1e-6, atol=1e-8, compact=compact,
                    dense=dense)
    else:  # balls stopped by their events at different times, between output times
        y0 = torch.stack([mu, torch.zeros_like(mu), torch.zeros_like(mu)], 1)
        t = torch.linspace(0.0, 1.2, 30, dtype=F64)
        sol = solve(ball, y0, t, solver=solver, event=Event(lambda t, y: y[:, 0], direction=-1),
                    rtol=1e-7, atol=1e-9, compact=compact, dense=dense)
    out = [sol.ys, sol.status, sol.stats.n_accepted, sol.stats.n_rejected, sol.event_t]
    if dense:  # the interpolant at every output time (NaN past a sample's stop)
        with torch.no_grad():
            out.append(torch.stack([sol.evaluate(tj) for tj in t]))
    if grad:
        out.append(torch.autograd.grad(sol.ys.square().sum(), mu)[0])
    return [x.detach() for x in out]


@pytest.mark.parametrize("case", ["vdp", "ball"])
@pytest.mark.parametrize(("solver", "compact", "grad"), [
    (Dopri5(), False, False), (Dopri5(), True, False), (Tsit5(), False, True),
    (Dopri5(), True, True), (Dopri8(), False, False), (Dopri8(), True, False)])
def test_outputs_stored_together_equal_those_stored_per_step(
        monkeypatch: pytest.MonkeyPatch, case: str, solver: object, compact: bool,
        grad: bool) -> None:
    with torch.set_grad_enabled(grad):
        together = _solve(case, solver, compact, grad)
        monkeypatch.setattr(outputs, "PENDING_STEPS", 1)
        each = _solve(case, solver, compact, grad)
    ys, status, acc, rej, event_t = together[:5]
    assert torch.equal(status, each[1]) and torch.equal(acc, each[2])
    assert torch.equal(rej, each[3])
    torch.testing.assert_close(event_t, each[4], rtol=0, atol=0, equal_nan=True)
    assert bool(ys.isfinite().all())
    torch.testing.assert_close(ys, each[0], rtol=1e-13, atol=1e-13)
    if grad:
        torch.testing.assert_close(together[5], each[5], rtol=1e-11, atol=1e-12)
    if case == "ball":
        assert bool((status == 1).all())  # every ball stopped at its event


@pytest.mark.parametrize("case", ["vdp", "ball"])
@pytest.mark.parametrize(("solver", "compact"), [
    (Dopri5(), False), (Dopri5(), True), (Tsit5(), True), (Dopri8(), False), (Dopri8(), True)])
def test_outputs_are_the_dense_interpolant(case: str, solver: object, compact: bool) -> None:
    with torch.no_grad():
        ys, status, _, _, event_t, interp = _solve(case, solver, compact, False, dense=True)
    inside = interp.isfinite().all(-1)
    if case == "ball":  # past its event a sample holds its event state
        t = torch.linspace(0.0, 1.2, 30, dtype=F64)
        inside = inside & (t.unsqueeze(1) <= event_t.unsqueeze(0))
        assert bool((status == 1).all()) and 0 < int(inside.sum()) < inside.numel()
        held = ys[-1].expand_as(ys)
        torch.testing.assert_close(ys[~inside], held[~inside], rtol=0, atol=0)
    else:
        assert bool(inside.all())
    torch.testing.assert_close(ys[inside], interp[inside], rtol=1e-12, atol=1e-12)
