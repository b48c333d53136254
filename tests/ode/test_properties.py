"""Property tests: random scalar linear problems on random irregular grids."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from infdepth.ode import Dopri5, Tsit5, odeint

D = torch.float64


@settings(max_examples=20, deadline=None, derandomize=True)
@given(
    rate=st.floats(-2.0, 1.0),
    gaps=st.lists(st.floats(0.01, 1.0), min_size=1, max_size=6),
    backwards=st.booleans(),
    tsit=st.booleans(),
)
def test_linear_problem_on_any_grid(rate: float, gaps: list[float], backwards: bool,
                                    tsit: bool) -> None:
    times = [0.0]
    for g in gaps:
        times.append(times[-1] + g)
    if backwards:
        times = [-x for x in times]
    t = torch.tensor(times, dtype=D)
    y = odeint(lambda t, y: rate * y, torch.ones(1, dtype=D), t,
               solver=Tsit5() if tsit else Dopri5(), rtol=1e-9, atol=1e-12)
    exact = torch.tensor([math.exp(rate * x) for x in times], dtype=D)
    torch.testing.assert_close(y[:, 0], exact, rtol=1e-6, atol=1e-9)
