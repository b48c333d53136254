"""Time gradients against central finite differences of the same discrete solver (float64).

Every gradient method x fixed and adaptive steps x output times on and off step boundaries
x shared and per-sample grids, with ties between samples. ``Backprop`` and
``Checkpointed`` differentiate the discrete solution: they must reproduce the finite
differences to 1e-6 relative. ``Adjoint`` gives the gradient of the continuous problem:
it must agree to the solver's error (small steps, tight tolerances here).

Where two samples share an output time, moving one of them changes which time ends the
last step, so the discrete solution has a kink there; its central difference is the mean
of the two one-sided derivatives, which is what the solver's gradient is (the step end
moves with the mean of the tied times). With three or more tied times only their sum is
a derivative, and only the sum is checked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from infdepth.ode import (
    RK4,
    Adjoint,
    Backprop,
    Checkpointed,
    ConstantStepSize,
    Dopri5,
    Euler,
    Midpoint,
    PIController,
    RungeKutta,
    Tsit5,
    odeint,
)

D = torch.float64
A = torch.tensor([[-0.3, 1.0], [-1.0, -0.3]], dtype=D)
EPS = 1e-6  # below the slack of a last step (1e-4 of a step), far above round-off


def central_difference(loss: Callable[[torch.Tensor], torch.Tensor], t: torch.Tensor,
                       d: torch.Tensor) -> float:
    """Central difference along ``d``, extrapolated from steps ``EPS`` and ``EPS / 2``.

    At a step end the discrete solution is C1 but its one-sided second derivatives differ,
    which puts an O(EPS) term into a plain central difference; Richardson's combination
    removes it.
    """
    def diff(eps: float) -> float:
        return float((loss(t + eps * d) - loss(t - eps * d)) / (2 * eps))

    return 2 * diff(EPS / 2) - diff(EPS)


def field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Non-autonomous, nonlinear, and independent across rows (samples)."""
    return (y @ A.T) * (1 + 0.5 * torch.sin(t)) + 0.2 * torch.cos(3 * t) * torch.tanh(y)


def autonomous(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return y @ A.T + 0.2 * torch.tanh(y)


@dataclass(frozen=True)
class Setting:
    solver: RungeKutta
    step_size: float | None = None
    controller: PIController | ConstantStepSize | None = None
    rtol: float = 1e-10
    atol: float = 1e-10
    f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None  # None: field


FIXED = {
    "euler-h0.125": Setting(Euler(), 0.125),
    "midpoint-h0.125": Setting(Midpoint(), 0.125),
    "rk4-h0.125": Setting(RK4(), 0.125),
    "dopri5-fixed-h0.125": Setting(Dopri5(), 0.125),
    "rk4-output-to-output": Setting(RK4(), controller=ConstantStepSize()),
}
# adaptive steps pinned at dtmax (every step accepted, none grows): step ends on multiples
ADAPTIVE_ON_GRID = {
    "dopri5-dtmax0.125": Setting(Dopri5(), controller=PIController(rtol=1e-3, atol=1e-3,
                                                                     dt0=0.125, dtmax=0.125)),
}
# free step-size control: with a field that depends on t the step sizes depend on t0 (the
# controller is not differentiated, so the t0 derivative is off by about the tolerance);
# an autonomous field makes the discrete solution differentiable in every time
ADAPTIVE = {
    "dopri5": Setting(Dopri5(), f=autonomous),
    "tsit5": Setting(Tsit5(), f=autonomous),
}
EXACT_SETTINGS = {**FIXED, **ADAPTIVE_ON_GRID, **ADAPTIVE}

SHARED = {
    "on-boundaries": [0.0, 0.5, 0.75, 1.0],   # multiples of 0.125
    "off-boundaries": [0.0, 0.3, 0.61, 0.95],
    "decreasing": [0.0, -0.25, -0.7, -1.0],
}
# columns are samples; ties: 0.5 (a step end, samples 0 and 1), 1.0 (the last time,
# samples 0 and 2), 0.3 (inside a step, samples 2 and 3)
PER_SAMPLE = {
    "ties": [[0.0, 0.0, 0.0, 0.0],
             [0.5, 0.5, 0.3, 0.3],
             [1.0, 0.95, 1.0, 0.8]],
}


def _solve(t: torch.Tensor, y0: torch.Tensor, s: Setting, method: object) -> torch.Tensor:
    return odeint(s.f or field, y0, t, solver=s.solver, step_size=s.step_size,
                  controller=s.controller, rtol=s.rtol, atol=s.atol,
                  adjoint=method)  # type: ignore[arg-type]


def _loss_fn(t: torch.Tensor, y0: torch.Tensor, s: Setting, method: object
             ) -> Callable[[torch.Tensor], torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    weights = torch.randn(t.shape[0], *y0.shape, dtype=D, generator=gen)

    def loss(times: torch.Tensor) -> torch.Tensor:
        ys = _solve(times, y0, s, method)
        return (weights * ys).sum() + 0.1 * ys.square().sum()

    return loss


def _directions(t: torch.Tensor) -> list[torch.Tensor]:
    """Unit perturbations: each time alone, except a per-sample grid's shared first row."""
    dirs = []
    if t.ndim == 2:
        first = torch.zeros_like(t)
        first[0] = 1.0
        dirs.append(first)
    for idx in range(t.shape[0] * (t.shape[1] if t.ndim == 2 else 1)):
        e = torch.zeros_like(t).reshape(-1)
        e[idx] = 1.0
        e = e.view_as(t)
        if t.ndim == 2 and bool(e[0].any()):
            continue
        dirs.append(e)
    return dirs


def _check(t_list: list[float] | list[list[float]], s: Setting, method: object,
           rel: float) -> None:
    t = torch.tensor(t_list, dtype=D)
    y0 = torch.tensor([1.0, 0.5], dtype=D)
    if t.ndim == 2:
        y0 = torch.tensor([[1.0, 0.5], [0.3, -0.8], [-0.6, 0.2], [0.9, 0.9]], dtype=D)
    loss = _loss_fn(t, y0, s, method)
    tg = t.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(tg), tg)
    got, want = [], []
    with torch.no_grad():
        for d in _directions(t):
            want.append(central_difference(loss, t, d))
            got.append(float((grad * d).sum()))
    scale = max(abs(x) for x in want)
    for g, w in zip(got, want, strict=True):
        assert abs(g - w) <= rel * max(abs(w), 1e-3 * scale), (got, want)


@pytest.mark.parametrize("grid", list(SHARED), ids=list(SHARED))
@pytest.mark.parametrize("setting", list(EXACT_SETTINGS), ids=list(EXACT_SETTINGS))
@pytest.mark.parametrize("method", [Backprop(), Checkpointed()], ids=["backprop", "checkpointed"])
def test_shared_grid_time_gradients_are_exact(method: object, setting: str, grid: str) -> None:
    _check(SHARED[grid], EXACT_SETTINGS[setting], method, rel=1e-6)


@pytest.mark.parametrize("grid", list(PER_SAMPLE), ids=list(PER_SAMPLE))
@pytest.mark.parametrize("setting", list(EXACT_SETTINGS), ids=list(EXACT_SETTINGS))
@pytest.mark.parametrize("method", [Backprop(), Checkpointed()], ids=["backprop", "checkpointed"])
def test_per_sample_time_gradients_are_exact(method: object, setting: str, grid: str) -> None:
    _check(PER_SAMPLE[grid], EXACT_SETTINGS[setting], method, rel=1e-6)


ADJOINT_SETTINGS = {
    "rk4-h0.0125": Setting(RK4(), 0.0125),
    "dopri5": Setting(Dopri5()),
}


@pytest.mark.parametrize("grid", ["on-boundaries", "off-boundaries", "ties"])
@pytest.mark.parametrize("setting", list(ADJOINT_SETTINGS), ids=list(ADJOINT_SETTINGS))
def test_adjoint_time_gradients_match_to_the_solver_error(setting: str, grid: str) -> None:
    t = SHARED.get(grid) or PER_SAMPLE[grid]
    _check(t, ADJOINT_SETTINGS[setting], Adjoint(rtol=1e-10, atol=1e-10), rel=1e-5)


def test_issue_14_case_fixed_step_on_a_boundary() -> None:
    """``y' = Ay``, ``t = [0, 0.4, 1]``, RK4 ``h = 0.005``: 0.4 ends a step."""
    t = torch.tensor([0.0, 0.4, 1.0], dtype=D, requires_grad=True)
    y0 = torch.tensor([1.0, 0.5], dtype=D)
    ys = odeint(lambda t, y: y @ A.T, y0, t, solver=RK4(), step_size=0.005)
    (g,) = torch.autograd.grad(ys[1].sum(), t)
    # only the output at 0.4 is in the loss: d/dt1 = f(y(0.4)) summed, d/dt0 = -that
    slope = float((ys[1].detach() @ A.T).sum())
    assert g[1].item() == pytest.approx(slope, rel=1e-9)
    assert g[0].item() == pytest.approx(-slope, rel=1e-6)  # autonomous: shift invariance
    assert g[2].item() == 0.0


def test_issue_14_case_tie_goes_to_its_own_sample() -> None:
    """Two samples end at t = 1; a loss on sample 0 only moves sample 0's end time."""
    t = torch.tensor([[0.0, 0.0], [0.3, 0.45], [1.0, 1.0]], dtype=D, requires_grad=True)
    y0 = torch.tensor([[1.0, 0.5], [0.2, -0.4]], dtype=D)
    ys = odeint(lambda t, y: y @ A.T, y0, t, rtol=1e-10, atol=1e-10)
    (g,) = torch.autograd.grad(ys[:, 0].sum(), t)
    slope = float((ys[2, 0].detach() @ A.T).sum())
    assert g[2, 0].item() == pytest.approx(slope, rel=1e-6)
    assert abs(g[2, 1].item()) < 1e-6 * abs(slope)
    assert g[1, 1].item() == 0.0


def test_three_tied_times_share_a_derivative() -> None:
    """Only the sum over a group of three tied times is a derivative: check the sum."""
    t = torch.tensor([[0.0, 0.0, 0.0], [0.6, 0.4, 0.6], [1.0, 1.0, 1.0]], dtype=D)
    y0 = torch.tensor([[1.0, 0.5], [0.3, -0.8], [-0.6, 0.2]], dtype=D)
    s = Setting(Euler(), 0.25)
    loss = _loss_fn(t, y0, s, Backprop())
    tg = t.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(tg), tg)
    d = torch.zeros_like(t)
    d[2] = 1.0
    with torch.no_grad():
        fd = central_difference(loss, t, d)
    assert float(grad[2].sum()) == pytest.approx(fd, rel=1e-6)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    gaps=st.lists(st.sampled_from([0.125, 0.25, 0.1, 0.3, 0.0625]), min_size=2, max_size=4),
    solver=st.sampled_from([Euler(), Midpoint(), RK4(), Dopri5()]),
    method=st.sampled_from([Backprop(), Checkpointed()]),
)
def test_any_grid_on_or_off_a_fixed_step_grid(gaps: list[float], solver: RungeKutta,
                                             method: object) -> None:
    """Output times made of multiples of the step (on boundaries) mixed with others."""
    times = [0.0]
    for gap in gaps:
        times.append(times[-1] + gap)
    _check(times, Setting(solver, 0.125), method, rel=1e-6)
