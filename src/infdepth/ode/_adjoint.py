"""Gradient methods: backprop through the solver, the continuous adjoint, checkpointing.

Each method is an object with ``solve(problem) -> outputs``; ``odeint`` hands it the
problem and the method decides how autograd sees the solve.
"""

from __future__ import annotations

import dataclasses
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from infdepth.errors import InputError
from infdepth.ode._controller import ConstantStepSize, Norm, PIController
from infdepth.ode._integrate import integrate, replay_step
from infdepth.ode._outputs import OutputGrid, Step
from infdepth.ode._solvers import RungeKutta
from infdepth.ode._stepping import Stats, VectorField, stage_times


@dataclass(frozen=True)
class Problem:
    """Everything a gradient method needs to solve (and differentiate) one problem."""

    f: VectorField
    y0: torch.Tensor
    grid: OutputGrid
    solver: RungeKutta
    controller: PIController | ConstantStepSize
    max_steps: int
    params: tuple[torch.Tensor, ...]
    f_backward: VectorField | None = None
    """The field as the backward pass of :class:`Adjoint` and :class:`Checkpointed` calls it
    (``None``: ``f``). ``ODEBlock`` passes a second entry point here to count backward
    evaluations apart from forward ones."""
    norm: Norm | None = None
    """The error norm of the forward solve (a scaled error shaped like ``y0`` -> its mean
    square; ``None``: all components). ``ODEBlock`` with regularisers passes one that measures
    ``h`` and leaves out the integral channels; the :class:`Adjoint`'s backward solve measures
    the state and adjoint segments with it."""

    @property
    def backward_field(self) -> VectorField:
        """The vector field evaluated during a backward pass."""
        return self.f if self.f_backward is None else self.f_backward


@dataclass(frozen=True)
class Backprop:
    """Differentiate through every operation of the solver (discretise-then-optimise).

    Exact gradients of the computed solution, including with respect to the output
    times; memory grows with the number of steps.
    """

    def solve(self, p: Problem) -> torch.Tensor:
        return integrate(p.f, p.y0, p.grid, p.solver, p.controller, max_steps=p.max_steps,
                         norm=p.norm)


@dataclass(frozen=True)
class Adjoint:
    """The continuous adjoint (Chen et al. 2018): memory independent of the step count.

    The backward pass solves the adjoint ODE for ``(y, dL/dy, dL/dparams)`` backwards
    between consecutive output times with the same solver (restarting at each output
    time, where ``dL/dy`` jumps). Gradients with respect to the output times are those
    of the continuous problem, ``dL/dy(t_i) . f(t_i, y(t_i))`` (and ``-dL/dy0 . f(t_0, y0)``
    for the start), evaluated on the computed solution: they differ from the derivatives of
    the discrete solution (:class:`Backprop`, :class:`Checkpointed`) by the solver's
    error. With per-sample time grids each sample's times get their own such gradient.

    Args:
        rtol, atol: tolerances of the backward solve (``None``: those of the forward).
        seminorm: measure the backward error on ``y`` and ``dL/dy`` only, not on the
            parameter integrals (Kidger et al. 2021); usually fewer backward steps.
        params: tensors ``f`` depends on; ``None`` takes ``f.parameters()`` when ``f``
            is an ``nn.Module`` (or a method of one); any other ``f`` that uses tensors
            requiring grad is refused (:class:`~infdepth.errors.InputError`) unless they are
            passed here.
    """

    rtol: float | None = None
    atol: float | None = None
    seminorm: bool = False
    params: Sequence[torch.Tensor] | None = field(default=None, compare=False)

    def solve(self, p: Problem) -> torch.Tensor:
        return _via_union(p, lambda q: _AdjointFn.apply(self, q, q.y0, q.grid.times, *q.params))


@dataclass(frozen=True)
class Checkpointed:
    """Store only the state at each accepted step; retake each step during backward.

    Gradients equal those of :class:`Backprop` (same discrete solution, the same
    operations retaken), also with respect to the output times and with per-sample time
    grids, while memory holds one state per step instead of the whole autograd graph;
    backward costs one more evaluation of every accepted step.

    Args:
        params: as for :class:`Adjoint`.
    """

    params: Sequence[torch.Tensor] | None = field(default=None, compare=False)

    def solve(self, p: Problem) -> torch.Tensor:
        out: torch.Tensor = _CheckpointFn.apply(p, p.y0, p.grid.times, *p.params)
        return out


GradientMethod = Backprop | Adjoint | Checkpointed


def _via_union(p: Problem, run: Any) -> torch.Tensor:
    """Solve on one shared time grid, then pick each sample's own output times.

    The union grid is a constant; when the per-sample times require grad, each sample's
    times are linked to its outputs by zero-valued terms with the continuous-adjoint
    derivatives: ``f(t_i, y(t_i))`` for an output time and ``-dL/dy0 . f(t_0, y0)`` (through
    ``y0``) for the sample's start time. This costs one evaluation of ``f`` per distinct
    output time.
    """
    g = p.grid
    if g.rows is None:
        out: torch.Tensor = run(p)
        return out
    ukeys = sorted(set(g.keys))
    times = torch.tensor([k * g.direction for k in ukeys], dtype=g.times.dtype,
                         device=g.times.device)
    ugrid = OutputGrid(times=times, keys=ukeys, rows=None, direction=g.direction)
    idx = torch.tensor([bisect_left(ukeys, k) for k in g.keys], device=p.y0.device)
    track = torch.is_grad_enabled() and g.times.requires_grad
    y0 = p.y0
    gap = g.times - g.times.detach()  # zero, with derivative 1 for each output time
    if track:
        with torch.no_grad():
            f0 = p.f(times[0], y0)
        n0 = bisect_right(g.keys, g.keys[0])
        start = torch.zeros(y0.shape[0], dtype=gap.dtype, device=gap.device)
        start = start.index_add(0, g.rows[:n0], gap[:n0]).to(y0.dtype)
        y0 = y0 - start.view(-1, *([1] * (y0.ndim - 1))) * f0
    ys = run(dataclasses.replace(p, grid=ugrid, y0=y0))
    out = ys[idx, g.rows]
    if track:
        with torch.no_grad():
            slopes = torch.stack([f0] + [p.f(times[u], ys[u]) for u in range(1, len(ukeys))])
        out = out + gap.to(out.dtype).view(-1, *([1] * (out.ndim - 1))) * slopes[idx, g.rows]
    return out


def _mixed_norm(sizes: list[int], device: torch.device, state: Norm | None = None,
                shape: torch.Size | None = None) -> Norm:
    """Largest mean square over the segments of a flat state (torchdiffeq's mixed norm).

    With ``state`` (a norm of the forward solve, :attr:`Problem.norm`), the first two segments
    (``y`` and ``dL/dy``, each of ``shape``) are measured by it instead.
    """
    if state is not None:
        assert shape is not None
        n = sizes[0]
        rest = _mixed_norm(sizes[2:], device) if len(sizes) > 2 else None

        def measured(x: torch.Tensor) -> torch.Tensor:
            x = x.reshape(-1)
            parts = [state(x[:n].view(shape)), state(x[n : 2 * n].view(shape))]
            if rest is not None:
                parts.append(rest(x[2 * n :]))
            return torch.stack(parts).max()

        return measured
    seg = torch.repeat_interleave(torch.arange(len(sizes), device=device),
                                  torch.tensor(sizes, device=device))
    inv = 1.0 / torch.tensor(sizes, dtype=torch.float64, device=device)
    total = sum(sizes)

    def norm(x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1)[:total]
        sums = x.new_zeros(len(sizes)).index_add_(0, seg, x.square())
        return (sums * inv.to(x.dtype)).max()

    return norm


def _vjp(
    f: VectorField, t: torch.Tensor, y: torch.Tensor, cotangent: torch.Tensor,
    params: tuple[torch.Tensor, ...],
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``f(t, y)`` and ``cotangent^T d f / d(y, params)``."""
    with torch.enable_grad():
        y_ = y.detach().requires_grad_(True)
        fy = f(t, y_)
        grads: tuple[torch.Tensor | None, ...] = (None,) * (1 + len(params))
        if fy.requires_grad:
            # a scalar output: autograd's shape checks of grad_outputs cost more per call
            # than the extra product and sum
            grads = torch.autograd.grad(torch.vdot(fy.reshape(-1), cotangent.reshape(-1)),
                                        (y_, *params), allow_unused=True)
    out = [torch.zeros_like(x) if gx is None else gx
           for x, gx in zip((y_, *params), grads, strict=True)]
    return fy.detach(), out


def _time_grads(
    f: VectorField, times: torch.Tensor, ys: torch.Tensor, g: torch.Tensor, a0: torch.Tensor
) -> torch.Tensor:
    """dL/dt_i = g_i . f(t_i, y_i) for i >= 1; the start time moves the whole flow."""
    out = torch.zeros_like(times)
    for i in range(1, times.shape[0]):
        out[i] = (g[i] * f(times[i], ys[i])).sum().to(times.dtype)
    out[0] = -((a0 - g[0]) * f(times[0], ys[0])).sum().to(times.dtype)
    return out


class _AdjointFn(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, method: Adjoint, p: Problem, y0: torch.Tensor, times: torch.Tensor,
        *params: torch.Tensor,
    ) -> torch.Tensor:
        with torch.no_grad():
            ys = integrate(p.f, y0, p.grid, p.solver, p.controller, max_steps=p.max_steps,
                           norm=p.norm)
        ctx.method, ctx.p = method, p
        ctx.save_for_backward(ys, times, *params)
        return ys

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        method: Adjoint = ctx.method
        p: Problem = ctx.p
        ys, times, *params_l = ctx.saved_tensors
        params = tuple(params_l)
        shape = ys.shape[1:]
        n = ys[0].numel()
        sizes = [n, n] + [q.numel() for q in params]
        norm = _mixed_norm(sizes[:2] if method.seminorm else sizes, ys.device, p.norm, shape)
        ctrl = p.controller
        if isinstance(ctrl, PIController):
            ctrl = dataclasses.replace(
                ctrl,
                rtol=ctrl.rtol if method.rtol is None else method.rtol,
                atol=ctrl.atol if method.atol is None else method.atol,
            )
        f = p.backward_field

        def aug(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            y = z[:n].view(shape)
            fy, vj = _vjp(f, t, y, -z[n : 2 * n].view(shape), params)
            return torch.cat([fy.reshape(-1)] + [v.reshape(-1) for v in vj])

        aug.adjoint_of = (f, shape, n)  # type: ignore[attr-defined]  # for implicit solvers' Newton

        keys = p.grid.keys
        d = p.grid.direction
        a = g[-1].clone()
        pg = [torch.zeros_like(q) for q in params]
        with torch.no_grad():
            for i in range(ys.shape[0] - 1, 0, -1):
                z0 = torch.cat([ys[i].reshape(-1), a.reshape(-1)] + [q.reshape(-1) for q in pg])
                back = OutputGrid(
                    times=torch.stack([times[i], times[i - 1]]),
                    keys=[-keys[i], -keys[i - 1]],
                    rows=None,
                    direction=-d,
                )
                z = integrate(aug, z0, back, p.solver, ctrl, max_steps=p.max_steps, norm=norm)[-1]
                a = z[n : 2 * n].view(shape) + g[i - 1]
                pg = list(torch.split(z[2 * n :], sizes[2:]))
                pg = [x.view_as(q) for x, q in zip(pg, params, strict=True)]
            t_grad = _time_grads(f, times, ys, g, a) if ctx.needs_input_grad[3] else None
        return (None, None, a, t_grad, *pg)


class _CheckpointFn(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, p: Problem, y0: torch.Tensor, times: torch.Tensor, *params: torch.Tensor
    ) -> torch.Tensor:
        steps: list[Step] = []
        with torch.no_grad():
            ys = integrate(p.f, y0, p.grid, p.solver, p.controller, max_steps=p.max_steps,
                           norm=p.norm, on_accept=steps.append)
        ctx.p, ctx.steps = p, steps
        ctx.save_for_backward(ys, y0, times, *params)
        return ys

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        p: Problem = ctx.p
        ys, y0, times, *params_l = ctx.saved_tensors
        params = tuple(params_l)
        track = bool(ctx.needs_input_grad[2])
        # the steps are retaken with their times rebuilt from a leaf copy of the output times
        times_ = times.detach().requires_grad_(track)
        grid = dataclasses.replace(p.grid, times=times_)
        tabs = p.solver.tensors(y0.dtype, y0.device)
        c_time = stage_times(p.solver, tabs, times)
        inputs = (*params, times_) if track else params
        a = torch.zeros_like(y0)
        pg: list[torch.Tensor | None] = [None] * len(inputs)
        f = p.backward_field
        for s in reversed(ctx.steps):
            with torch.enable_grad():
                y_ = s.y.detach().requires_grad_(True)
                y1, outs = replay_step(f, y_, s, grid, p.solver, tabs, c_time, Stats())
                tensors, cots = [y1], [a]
                if outs is not None:
                    tensors.append(outs)
                    cots.append(g[s.lo : s.hi])
                grads = torch.autograd.grad(tensors, (y_, *inputs), cots, allow_unused=True)
            a = grads[0] if grads[0] is not None else torch.zeros_like(a)
            for j, gq in enumerate(grads[1:]):
                prev = pg[j]
                if gq is not None:
                    pg[j] = gq if prev is None else prev + gq
        n0 = bisect_right(p.grid.keys, p.grid.keys[0])
        rows = p.grid.rows
        a = a + g[:n0].sum(0) if rows is None else a.index_add(0, rows[:n0], g[:n0])
        out = [torch.zeros_like(x) if gx is None else gx for x, gx in zip(inputs, pg, strict=True)]
        t_grad = out.pop() if track else None
        return (None, a, t_grad, *out)


def check_params_visible(f: VectorField, method: GradientMethod, y0: torch.Tensor, t0: torch.Tensor) -> None:
    """Refuse a field whose parameters an adjoint method would silently not differentiate.

    :class:`Adjoint` and :class:`Checkpointed` differentiate the tensors they are given or
    the parameters of ``f``'s module; a plain function closing over a module (``lambda t, y:
    net(y)``) has none they can see.  Such a field is evaluated once at ``(t0, y0)`` with
    ``y0`` detached: an output that still requires grad depends on hidden tensors.
    """
    if not isinstance(method, (Adjoint, Checkpointed)) or method.params is not None:
        return
    if not torch.is_grad_enabled():
        return
    owner = f if isinstance(f, torch.nn.Module) else getattr(f, "__self__", None)
    if isinstance(owner, torch.nn.Module):
        return
    with torch.enable_grad():
        out = f(t0.detach(), y0.detach())
    if isinstance(out, torch.Tensor) and out.requires_grad:
        name = type(method).__name__
        raise InputError(
            f"f uses tensors that require grad, which {name}() cannot see (f is not an nn.Module): "
            f"their gradients would be None; pass them, e.g. adjoint={name}(params=net.parameters()), "
            "or make f an nn.Module"
        )


def find_params(f: object, method: GradientMethod) -> tuple[torch.Tensor, ...]:
    """Tensors the adjoint differentiates: given explicitly, or those of ``f``'s module."""
    explicit = getattr(method, "params", None)
    if explicit is not None:
        params = tuple(explicit)
        for q in params:
            if not isinstance(q, torch.Tensor):
                raise InputError(f"params must be tensors; got {type(q).__name__}")
    else:
        owner = f if isinstance(f, torch.nn.Module) else getattr(f, "__self__", None)
        params = tuple(owner.parameters()) if isinstance(owner, torch.nn.Module) else ()
    return tuple(q for q in params if q.requires_grad)
