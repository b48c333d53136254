"""Step-size control: the controller's decisions on their own, and the shared defaults."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from infdepth.ode import (
    ConstantStepSize,
    Dopri5,
    NonFiniteStateError,
    ODEBlock,
    PIController,
    SolverError,
    odeint,
)
from infdepth.ode._controller import DEFAULT_ATOL, DEFAULT_RTOL, SLACK, AdaptiveSteps

D = torch.float64


def _steps(ctrl: PIController, h: float = 0.1, order: int = 5) -> AdaptiveSteps:
    return AdaptiveSteps(ctrl, order, torch.ones(4, dtype=D), h, None)


def test_accept_never_shrinks_and_reject_shrinks_within_bounds() -> None:
    ctrl = PIController()
    s = _steps(ctrl)
    assert s.judge(0.5, 0.1, 0.0)
    assert s.h == pytest.approx(0.1 * 0.9 * 0.5 ** (-1 / 5))
    assert s.judge(1e-30, 0.1, 0.0)
    assert s.h == pytest.approx(0.1 * ctrl.factor_max)  # growth clipped to factor_max
    assert s.judge(0.0, 0.1, 0.0)
    assert s.h == pytest.approx(0.1 * ctrl.factor_max)
    assert s.judge(1.0, 0.1, 0.0)
    assert s.h == pytest.approx(0.1)  # the optimum 0.09 is below 1x: an accepted step keeps h
    assert not s.judge(1.5, -0.1, 0.0)  # a decreasing step: its magnitude counts
    assert s.h == pytest.approx(0.1 * 0.9 * 1.5 ** (-1 / 5))
    assert not s.judge(1e12, 0.1, 0.0)
    assert s.h == pytest.approx(0.1 * ctrl.factor_min)  # shrinkage clipped to factor_min
    assert not s.judge(1.000001, 0.1, 0.0)
    assert s.h <= 0.1


def test_proportional_term_uses_the_last_accepted_ratio() -> None:
    ctrl = PIController(pcoeff=0.4, icoeff=0.3)
    s = _steps(ctrl, order=4)
    assert s.judge(0.5, 0.1, 0.0)
    assert not s.judge(2.0, 0.1, 0.0)  # a rejection leaves the last accepted ratio at 0.5
    assert s.judge(0.25, 0.1, 0.0)
    assert s.h == pytest.approx(0.1 * 0.9 * 0.25 ** (-0.7 / 4) * 0.5 ** (0.4 / 4))


def test_dtmax_bounds_every_proposal() -> None:
    s = _steps(PIController(dtmax=0.15), h=1.0)
    assert s.h == 0.15
    s.judge(1e-9, 0.15, 0.0)
    assert s.h == 0.15


def test_next_step_clips_to_the_end_within_the_slack() -> None:
    s = _steps(PIController(), h=0.1)
    assert s.next_step(0.0, 1.0, 1.0) == (0.1, False)
    assert s.next_step(1.0, 0.0, -1.0) == (-0.1, False)
    h, last = s.next_step(0.0, 0.1 * (1 + SLACK / 2), 1.0)
    assert last and h == 0.1 * (1 + SLACK / 2)  # stretched rather than a sliver step after it
    h, last = s.next_step(0.95, 1.0, 1.0)
    assert last and h == pytest.approx(0.05)  # shortened to end on the end
    assert s.next_step(0.0, 0.1 * (1 + 2 * SLACK), 1.0)[1] is False


def test_too_small_steps_and_non_finite_ratios_raise() -> None:
    with pytest.raises(SolverError, match="below the minimum"):
        _steps(PIController(dtmin=1e-3), h=1e-4).next_step(0.0, 1.0, 1.0)
    with pytest.raises(SolverError, match="too small to change t"):
        _steps(PIController(), h=1e-20).next_step(1.0, 2.0, 1.0)
    with pytest.raises(NonFiniteStateError, match="t=0.5"):
        _steps(PIController()).judge(math.nan, 0.1, 0.5)


def test_error_ratio_is_the_rms_of_the_scaled_error() -> None:
    ctrl = PIController(rtol=1e-3, atol=1e-6)
    s = _steps(ctrl)
    y0 = torch.tensor([1.0, -2.0, 0.0, 4.0], dtype=D)
    y1 = torch.tensor([1.5, -1.0, 0.0, 3.0], dtype=D)
    err = torch.tensor([1e-3, -1e-3, 1e-6, 0.0], dtype=D)
    scale = 1e-6 + 1e-3 * torch.maximum(y0.abs(), y1.abs())
    assert s.error_ratio(err, y0.abs(), y1.abs()) == pytest.approx(
        float((err / scale).square().mean().sqrt()), rel=1e-12)


def test_initial_step_uses_one_evaluation_or_dt0() -> None:
    calls = []

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls.append(float(t))
        return -y

    y0, t0 = torch.ones(3, dtype=D), torch.tensor(0.0, dtype=D)
    h = PIController().initial_step(f, t0, y0, -y0, 5, lambda x: x.square().mean(), 1.0)
    assert len(calls) == 1 and 0 < calls[0] and 0 < h < 1
    assert PIController(dt0=0.25).initial_step(f, t0, y0, -y0, 5, torch.mean, 1.0) == 0.25
    assert len(calls) == 1


def test_constant_step_ends() -> None:
    assert ConstantStepSize().step_ends(0.0, 1.0) is None
    assert ConstantStepSize(0.25).step_ends(0.0, 1.0) == [0.25, 0.5, 0.75, 1.0]
    assert ConstantStepSize(0.3).step_ends(0.0, 1.0) == pytest.approx([0.3, 0.6, 0.9, 1.0])
    # within the slack of a whole step: no sliver step at the end
    assert len(ConstantStepSize(0.25).step_ends(0.0, 1.0 + 0.25 * SLACK / 2) or []) == 4


def test_one_default_tolerance_pair() -> None:
    def default(fn: object, name: str) -> object:
        return inspect.signature(fn).parameters[name].default  # type: ignore[arg-type]

    assert (DEFAULT_RTOL, DEFAULT_ATOL) == (1e-6, 1e-8)
    for fn in (odeint, ODEBlock, PIController):
        assert default(fn, "rtol") == DEFAULT_RTOL, fn
        assert default(fn, "atol") == DEFAULT_ATOL, fn
    # and they are what a default solve uses: the same steps as the explicit pair
    y0, t = torch.ones(2, dtype=D), torch.tensor([0.0, 3.0], dtype=D)
    f = lambda t, y: torch.stack([y[1], -y[0]])
    implicit = odeint(f, y0, t, solver=Dopri5())
    explicit = odeint(f, y0, t, controller=PIController(rtol=1e-6, atol=1e-8))
    assert torch.equal(implicit, explicit)
    assert not torch.equal(implicit, odeint(f, y0, t, rtol=1e-3, atol=1e-4))
