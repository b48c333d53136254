"""``odeint``: check the input, lay out the output times, hand over to a gradient method."""

from __future__ import annotations

import math

import torch

from infdepth.errors import InputError
from infdepth.ode._adjoint import Backprop, GradientMethod, Problem, check_params_visible, find_params
from infdepth.ode._controller import DEFAULT_ATOL, DEFAULT_RTOL, ConstantStepSize, Norm, PIController
from infdepth.ode._outputs import OutputGrid
from infdepth.ode._solution import solve as solve_per_sample
from infdepth.ode._solvers import Dopri5, RungeKutta
from infdepth.ode._stepping import VectorField


def _time_dtype(y0: torch.Tensor, t: torch.Tensor) -> torch.dtype:
    # Time accumulates over many steps: keep it in float64 where the device has it.
    if y0.device.type == "mps":
        return torch.promote_types(t.dtype, torch.float32)
    return torch.float64


_NOT_MONOTONE = ("t must be strictly increasing or strictly decreasing along its first axis "
                 "(every sample in the same direction)")


def _output_grid(t: torch.Tensor, y0: torch.Tensor) -> tuple[OutputGrid, tuple[int, ...] | None]:
    """Sorted output times; for per-sample grids also the permutation back to ``(T, B)``."""
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        raise InputError("t must be a floating-point tensor of times, shape (T,) or (T, batch)")
    if t.ndim not in (1, 2) or t.shape[0] < 2:
        raise InputError(
            f"t has shape {tuple(t.shape)}; expected (T,) or (T, batch) with T >= 2 times"
        )
    if t.ndim == 2 and (y0.ndim == 0 or t.shape[1] != y0.shape[0]):
        raise InputError(
            f"per-sample times t of shape {tuple(t.shape)} need y0 of shape (batch, ...) with "
            f"batch={t.shape[1]}; got y0 of shape {tuple(y0.shape)}"
        )
    td = t.detach()
    tt = t.to(device=y0.device, dtype=_time_dtype(y0, t))
    if t.ndim == 1:  # one host read (the one graph break inside torch.compile), checked on the host
        values = tt.detach().tolist()
        if not all(math.isfinite(v) for v in values):
            raise InputError("t contains NaN or infinite times; expected finite times")
        direction = 1.0 if values[1] > values[0] else -1.0
        keys = [direction * v for v in values]
        if not all(a < b for a, b in zip(keys, keys[1:])):
            raise InputError(_NOT_MONOTONE)
        return OutputGrid(times=tt, keys=keys, rows=None, direction=direction), None
    if not bool(torch.isfinite(td).all()):
        raise InputError("t contains NaN or infinite times; expected finite times")
    diff = td[1:] - td[:-1]
    increasing = bool((diff > 0).all())
    if not increasing and not bool((diff < 0).all()):
        raise InputError(_NOT_MONOTONE)
    direction = 1.0 if increasing else -1.0
    if not bool((td[0] == td[0, 0]).all()):
        raise InputError("per-sample times must share their first time t[0, :] (where y0 is given)")
    flat = tt.reshape(-1)
    perm = torch.argsort(direction * flat.detach(), stable=True)
    times = flat[perm]
    rows = perm % t.shape[1]
    grid = OutputGrid(times=times, keys=(direction * times.detach()).tolist(), rows=rows,
                      direction=direction)
    return grid, tuple(perm.tolist())


def odeint(
    f: VectorField,
    y0: torch.Tensor,
    t: torch.Tensor,
    *,
    solver: RungeKutta | None = None,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    step_size: float | None = None,
    controller: PIController | ConstantStepSize | None = None,
    adjoint: GradientMethod | None = None,
    max_steps: int = 10_000,
    per_sample_steps: bool = False,
) -> torch.Tensor:
    """Solve ``dy/dt = f(t, y)``, ``y(t[0]) = y0``, and return ``y`` at the times ``t``.

    Args:
        f: vector field ``f(t, y) -> dy/dt``; ``t`` is a 0-dim tensor, the result must
            have ``y``'s shape and dtype. Any callable works (an ``nn.Module``, a
            ``torch.compile``-d function).
        y0: initial state, any shape (``(batch, ...)`` for per-sample times).
        t: output times, strictly increasing or decreasing: shape ``(T,)`` shared by
            the whole state, or ``(T, batch)``, a time grid per sample sharing the
            first time ``t[0, :]``. Times between steps come from dense output.
        solver: a :class:`RungeKutta` instance, default ``Dopri5()``.
        rtol, atol: tolerances of adaptive solvers (ignored if ``controller`` is given);
            by default ``1e-6`` and ``1e-8``, the same pair as :class:`PIController` and
            :class:`ODEBlock` (the tightest that is meaningful for a float32 state).
        step_size: step of fixed-step solvers (Euler, Midpoint, Heun, RK4), which refuse to
            run without it; ``controller=ConstantStepSize()`` steps from one output time to
            the next instead, on purpose.
        controller: a :class:`PIController` (adaptive solvers) or
            :class:`ConstantStepSize`; default built from ``rtol, atol`` or ``step_size``.
        adjoint: gradient method, ``Backprop()`` (default), ``Adjoint()`` or
            ``Checkpointed()``. These two differentiate the parameters of ``f`` when ``f`` is
            an ``nn.Module`` (or a method of one); for any other callable pass them
            (``Adjoint(params=net.parameters())``): a function that uses tensors requiring
            grad that the method cannot see is refused, never given a silent ``None`` gradient.
        max_steps: attempted steps before :class:`SolverError` is raised.
        per_sample_steps: give every sample of ``y0`` ``(batch, ...)`` its own time, step
            size and accept/reject decision (:func:`~infdepth.ode.solve`, which also returns
            statistics, a status per sample and events); ``f`` then receives ``t`` of shape
            ``(n,)``, one time per row, and only the rows still running. Explicit adaptive
            solvers, with every gradient method: ``Adjoint()`` then solves the adjoint
            backwards per sample too (its own steps and error norm).

    Returns:
        ``(T, *y0.shape)`` tensor: ``out[i]`` is the state at ``t[i]`` (for per-sample
        times, ``out[i, b]`` is sample ``b`` at ``t[i, b]``).

    Raises:
        InputError: bad times, a non-finite ``y0``, negative tolerances, or ``f``
            returning the wrong shape.
        SolverError: ``max_steps`` exceeded or the step size fell below its minimum.
        NonFiniteStateError: the state became NaN or infinite.
    """
    if per_sample_steps is not False:
        if per_sample_steps is not True:
            raise InputError(f"per_sample_steps={per_sample_steps!r} is not accepted; expected "
                             "True or False")
        if step_size is not None:
            raise InputError(f"step_size={step_size!r} is not accepted with per_sample_steps=True "
                             "(fixed steps are shared by the batch); use an adaptive solver")
        return solve_per_sample(f, y0, t, solver=solver, rtol=rtol, atol=atol,
                                controller=controller, adjoint=adjoint,  # type: ignore[arg-type]
                                max_steps=max_steps, dense=False).ys
    return solve(f, y0, t, solver=solver, rtol=rtol, atol=atol, step_size=step_size,
                 controller=controller, adjoint=adjoint, max_steps=max_steps)


def solve(
    f: VectorField,
    y0: torch.Tensor,
    t: torch.Tensor,
    *,
    solver: RungeKutta | None,
    rtol: float,
    atol: float,
    step_size: float | None,
    controller: PIController | ConstantStepSize | None,
    adjoint: GradientMethod | None,
    max_steps: int,
    f_backward: VectorField | None = None,
    norm: Norm | None = None,
) -> torch.Tensor:
    """:func:`odeint`, with ``f_backward`` the field that a backward pass evaluates and
    ``norm`` the error norm of adaptive steps (:attr:`~infdepth.ode._adjoint.Problem.norm`;
    ``None``: the RMS of all components)."""
    solver = Dopri5() if solver is None else solver
    if not isinstance(solver, RungeKutta):
        raise InputError(
            f"solver={solver!r} is not accepted; pass an instance such as Dopri5() or RK4()"
        )
    if not isinstance(y0, torch.Tensor) or not y0.is_floating_point():
        raise InputError("y0 must be a floating-point tensor")
    # a host sync, left out inside torch.compile (a graph break): a non-finite y0 there gives
    # non-finite outputs, which fit reports as a divergence
    if not torch.compiler.is_compiling() and not bool(torch.isfinite(y0.detach()).all()):
        raise InputError("y0 contains NaN or infinite values; expected a finite initial state")
    if not isinstance(max_steps, int) or max_steps < 1:
        raise InputError(f"max_steps={max_steps!r} is not accepted; expected an integer >= 1")
    if controller is None:
        if solver.adaptive and step_size is None:
            controller = PIController(rtol=rtol, atol=atol)
        elif step_size is None:
            raise InputError(
                f"solver={type(solver).__name__}() takes fixed steps and needs step_size=... "
                "(one step from output time to output time is rarely accurate; pass "
                "controller=ConstantStepSize() if that is what you want), or use an adaptive "
                "solver such as Dopri5()"
            )
        else:
            controller = ConstantStepSize(step_size)
    elif not isinstance(controller, (PIController, ConstantStepSize)):
        raise InputError(f"controller={controller!r} is not accepted; expected a PIController "
                         "or ConstantStepSize")
    for name, v in (("rtol", rtol), ("atol", atol)):
        if not (isinstance(v, (int, float)) and v >= 0 and math.isfinite(v)):
            raise InputError(f"{name}={v!r} is not accepted; expected a finite number >= 0")
    adjoint = Backprop() if adjoint is None else adjoint
    grid, perm = _output_grid(t, y0)
    check_params_visible(f, adjoint, y0, grid.times[0])
    problem = Problem(f=f, y0=y0, grid=grid, solver=solver, controller=controller,
                      max_steps=max_steps, params=find_params(f, adjoint), f_backward=f_backward,
                      norm=norm)
    ys = adjoint.solve(problem)
    if perm is None:
        return ys
    inverse = torch.empty(len(perm), dtype=torch.long, device=ys.device)
    inverse[torch.tensor(perm, device=ys.device)] = torch.arange(len(perm), device=ys.device)
    return ys[inverse].reshape(t.shape[0], t.shape[1], *ys.shape[1:])
