"""Solvers are their tableaus: nothing is looked up by name or identity."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from infdepth.ode import Bosh3, ButcherTableau, Euler, RungeKutta, odeint
from infdepth.ode import Dopri5 as BuiltinDopri5
from infdepth.ode import _tableaus as tab

D = torch.float64


def _field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.stack([y[1], -torch.sin(y[0])]) * (1 + 0.1 * t)


def test_a_user_solver_named_like_a_builtin_gets_its_own_answer() -> None:
    @dataclass(frozen=True)
    class Dopri5(RungeKutta):  # same name as the built-in, Bogacki-Shampine's tableau
        tableau: ClassVar[ButcherTableau] = tab.BOSH3
        order: ClassVar[int] = 3

    y0 = torch.tensor([1.0, 0.0], dtype=D)
    t = torch.tensor([0.0, 0.7, 2.0], dtype=D)
    builtin = odeint(_field, y0, t, solver=BuiltinDopri5(), step_size=0.25)
    mine = odeint(_field, y0, t, solver=Dopri5(), step_size=0.25)
    bosh3 = odeint(_field, y0, t, solver=Bosh3(), step_size=0.25)
    torch.testing.assert_close(mine, bosh3, rtol=0, atol=0)
    assert not torch.equal(mine, builtin)
    # and the built-in still gives its own answer afterwards
    torch.testing.assert_close(odeint(_field, y0, t, solver=BuiltinDopri5(), step_size=0.25),
                               builtin, rtol=0, atol=0)


def test_step_tensors_follow_the_tableau_values() -> None:
    @dataclass(frozen=True)
    class Euler2(RungeKutta):
        tableau: ClassVar[ButcherTableau] = ButcherTableau(c=(0.0,), a=(), b=(1.0,))
        order: ClassVar[int] = 1

    y0 = torch.tensor([1.0, 0.5], dtype=D)
    t = torch.tensor([0.0, 1.0], dtype=D)
    torch.testing.assert_close(odeint(_field, y0, t, solver=Euler2(), step_size=0.1),
                               odeint(_field, y0, t, solver=Euler(), step_size=0.1),
                               rtol=0, atol=0)
    for dtype in (torch.float32, torch.float64):
        w = Euler2().tensors(dtype, torch.device("cpu"))
        assert w.weights.dtype == dtype
