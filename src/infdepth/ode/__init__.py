"""Continuous depth: ODE solvers, adjoint gradients and the ODE block (neural ODEs).

>>> import torch
>>> from infdepth.ode import odeint, Dopri5
>>> y = odeint(lambda t, y: -y, torch.ones(3), torch.tensor([0.0, 1.0]), solver=Dopri5())
"""

from infdepth.ode._adjoint import Adjoint, Backprop, Checkpointed, GradientMethod
from infdepth.ode._block import Depths, ODEBlock
from infdepth.ode._compiled import CompiledSolver
from infdepth.ode._controller import ConstantStepSize, PIController
from infdepth.ode._errors import NonFiniteStateError, SolverError
from infdepth.ode._esdirk import ESDIRK, TRBDF2, KenCarp4, Kvaerno5
from infdepth.ode._events import Event, SteadyState
from infdepth.ode._newton import NewtonFailure
from infdepth.ode._odeint import odeint
from infdepth.ode._per_sample import Status
from infdepth.ode._regularisers import JacobianFrobenius, KineticEnergy, Regulariser
from infdepth.ode._solution import SampleStats, Solution, solve
from infdepth.ode._solvers import (
    RK4,
    Bosh3,
    Dopri5,
    Dopri8,
    Euler,
    Heun,
    Midpoint,
    RungeKutta,
    Tsit5,
)
from infdepth.ode._tableaus import ButcherTableau

__all__ = [
    "RK4",
    "Adjoint",
    "Backprop",
    "Bosh3",
    "ButcherTableau",
    "Checkpointed",
    "CompiledSolver",
    "ConstantStepSize",
    "Depths",
    "Dopri5",
    "Dopri8",
    "ESDIRK",
    "Event",
    "Euler",
    "GradientMethod",
    "Heun",
    "JacobianFrobenius",
    "KenCarp4",
    "KineticEnergy",
    "Kvaerno5",
    "Midpoint",
    "NewtonFailure",
    "NonFiniteStateError",
    "ODEBlock",
    "PIController",
    "Regulariser",
    "RungeKutta",
    "SampleStats",
    "Solution",
    "SolverError",
    "Status",
    "SteadyState",
    "TRBDF2",
    "Tsit5",
    "odeint",
    "solve",
]
