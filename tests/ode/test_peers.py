"""The same problem solved by torchode and torchdiffeq: same steps, same answer (float64).

In float64 the adaptive solvers take exactly the steps torchode takes on the spiral of the
torchdiffeq/DiffEqFlux benchmarks, so the step-size control (error estimate, norm,
controller, first step) is the same algorithm; the outputs agree to the tolerance. (In
float32 at rtol 1e-7, below float32's resolution, the step sequences differ by rounding
noise: docs/ode.md.)
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from infdepth import odeint
from infdepth.ode import Dopri5, Tsit5

torchode = pytest.importorskip("torchode", reason="torchode is a benchmark peer (the bench extra)")
torchdiffeq = pytest.importorskip("torchdiffeq", reason="torchdiffeq is a benchmark peer (the bench extra)")


class Spiral(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 50), nn.Tanh(), nn.Linear(50, 2)).double()
        self.nfe = 0

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        return self.net(y**3)


@pytest.mark.parametrize("method", ["dopri5", "tsit5"])
@pytest.mark.parametrize(("rtol", "atol"), [(1e-7, 1e-9), (1e-5, 1e-7)])
def test_same_steps_and_answer_as_torchode(method: str, rtol: float, atol: float) -> None:
    torch.manual_seed(0)
    f = Spiral()
    y0 = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    t = torch.linspace(0, 1.5, 30, dtype=torch.float64)
    with torch.no_grad():
        ours = odeint(f, y0, t, solver={"dopri5": Dopri5(), "tsit5": Tsit5()}[method], rtol=rtol, atol=atol)
    nfe_ours, f.nfe = f.nfe, 0
    term = torchode.ODETerm(f)
    step = {"dopri5": torchode.Dopri5, "tsit5": torchode.Tsit5}[method](term=term)
    solver = torchode.AutoDiffAdjoint(step, torchode.IntegralController(atol=atol, rtol=rtol, term=term))
    with torch.no_grad():
        sol = solver.solve(torchode.InitialValueProblem(y0=y0, t_eval=t[None, :]))
    assert nfe_ours == f.nfe
    torch.testing.assert_close(ours, sol.ys.transpose(0, 1), rtol=0, atol=1e-9)


def test_dopri5_agrees_with_torchdiffeq() -> None:
    torch.manual_seed(0)
    f = Spiral()
    y0 = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    t = torch.linspace(0, 1.5, 30, dtype=torch.float64)
    with torch.no_grad():
        ours = odeint(f, y0, t, solver=Dopri5(), rtol=1e-9, atol=1e-11)
        theirs = torchdiffeq.odeint(f, y0, t, method="dopri5", rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-8)
