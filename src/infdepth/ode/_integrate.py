"""The integration loop: the one place where steps are taken and outputs stored.

Where to step and whether a step stands is the controller's decision
(:mod:`infdepth.ode._controller`); this loop takes the steps it is told to
(:func:`~infdepth.ode._stepping.rk_step`) and stores the outputs they reach
(:mod:`infdepth.ode._outputs`).

Host synchronisation: an adaptive solve reads back one number per attempted step
(the error ratio), which the loop needs to decide whether to continue; the step-size
controller then runs on the host on that number, and everything else (stages, error
estimate, dense output) stays on the device. A fixed-step solve reads back nothing
until its end, where one check for non-finite states is made.
"""

from __future__ import annotations

import torch

from infdepth.errors import InputError
from infdepth.ode._controller import ConstantStepSize, Norm, PIController
from infdepth.ode._errors import NonFiniteStateError, SolverError
from infdepth.ode._newton import NewtonFailure
from infdepth.ode._outputs import (
    OnAccept,
    OutputGrid,
    Step,
    at_start,
    last_group,
    moves_with,
    needs_end_slope,
    output_groups,
    outputs_of,
    step_times,
    store,
)
from infdepth.ode._solvers import RungeKutta, StepTensors
from infdepth.ode._stepping import (
    Stats,
    VectorField,
    call,
    dense_stages,
    first_eval,
    rk_step,
    stage_times,
)


def integrate(
    f: VectorField,
    y0: torch.Tensor,
    grid: OutputGrid,
    solver: RungeKutta,
    controller: PIController | ConstantStepSize,
    *,
    max_steps: int,
    norm: Norm | None = None,
    stats: Stats | None = None,
    on_accept: OnAccept | None = None,
) -> torch.Tensor:
    """Solve ``dy/dt = f(t, y)`` from ``(grid.times[0], y0)``; states at all grid times.

    Returns a tensor of shape ``(M, *y0.shape)`` (or ``(M, *y0.shape[1:])`` for
    per-sample outputs) in grid order. Autograd records the solve when grad is
    enabled (the step-size control itself is never differentiated); when ``grid.times``
    requires grad, every step's start, size and end are linked to the output times they
    depend on (:func:`~infdepth.ode._outputs.step_times`). ``on_accept`` is called with
    each accepted :class:`~infdepth.ode._outputs.Step`.
    """
    stats = Stats() if stats is None else stats
    if isinstance(controller, PIController):
        if not solver.adaptive:
            raise InputError(
                f"solver={type(solver).__name__}() has no error estimate; "
                "use step_size=... (a ConstantStepSize) or an adaptive solver"
            )
        return _integrate_adaptive(
            f, y0, grid, solver, controller, max_steps, norm, stats, on_accept
        )
    return _integrate_fixed(f, y0, grid, solver, controller, max_steps, stats, on_accept)


def _integrate_adaptive(
    f: VectorField,
    y0: torch.Tensor,
    grid: OutputGrid,
    solver: RungeKutta,
    ctrl: PIController,
    max_steps: int,
    norm: Norm | None,
    stats: Stats,
    on_accept: OnAccept | None,
) -> torch.Tensor:
    direction = grid.direction
    times = grid.times
    tabs = solver.tensors(y0.dtype, y0.device)
    if tabs.workspace is not None:  # an implicit solver's Newton test uses the same tolerances
        tabs.workspace.bind_tolerances(ctrl.rtol, ctrl.atol)
    c_time = stage_times(solver, tabs, times)
    track = torch.is_grad_enabled() and times.requires_grad
    t_val, t_end_val = times[0].detach(), times[-1].detach()
    t_py, t_end_py = grid.keys[0] * direction, grid.keys[-1] * direction
    outs: list[torch.Tensor] = []
    n_done = at_start(outs, grid, y0)
    first, last = (0, n_done), last_group(grid)
    shift = moves_with(times, first) if track else None
    t0 = t_val if shift is None else t_val + shift
    k1 = first_eval(f, t0, y0, stats)
    steps = ctrl.start(lambda t, y: call(f, t, y, stats), t0, y0, k1, solver.order, norm,
                       direction, predictive=getattr(solver, "predictive_steps", False))
    buf = None if torch.is_grad_enabled() else y0.new_zeros(solver.stages, y0.numel())
    y = y0
    y_abs = y0.abs()
    while n_done < len(grid.keys):
        if stats.steps >= max_steps:
            raise SolverError(
                f"max_steps={max_steps} reached at t={t_py:.6g} (step size {steps.h:.3g}) "
                f"before t={t_end_py:.6g}; raise max_steps or loosen rtol/atol"
            )
        h_py, is_last = steps.next_step(t_py, t_end_py, direction)
        h: torch.Tensor | float
        t = t_val if shift is None else t_val + shift
        if is_last:  # ends on t_end, moving with the last output times
            tc_py, e_val, stop = t_end_py, t_end_val, last
            h = t_end_val - t_val
            if shift is not None:
                h = h + (moves_with(times, last) - shift)
        else:
            h, tc_py, e_val, stop = h_py, t_py + h_py, t_val + h_py, first
        try:
            y1, k, err = rk_step(f, t, h, y, k1, solver, tabs, c_time, stats, buf)
        except NewtonFailure:  # an implicit stage did not converge: a smaller step will
            stats.steps += 1
            stats.rejected += 1
            steps.shrink_after_failure(h_py)
            continue
        assert err is not None
        y1_abs = y1.detach().abs()
        r = steps.error_ratio(err, y_abs, y1_abs)
        stats.steps += 1
        if not steps.judge(r, h_py, t_py):
            stats.rejected += 1
            continue
        stats.accepted += 1
        mid, hi = outputs_of(grid, direction * tc_py, n_done)
        if not solver.fsal:
            e = e_val if shift is None else e_val + moves_with(times, stop)
            k1 = call(f, e, y1, stats)
        if on_accept is not None or hi > n_done:
            h_val = h.detach() if isinstance(h, torch.Tensor) else torch.full_like(t_val, h)
            s = Step(t_val, h_val, e_val, y, n_done, mid, hi, first, stop)
            if on_accept is not None:
                on_accept(s)
            if hi > n_done:
                ts, hs, es = step_times(times, s) if track else (t_val, h_val, e_val)
                slope = None
                if track and needs_end_slope(s):
                    slope = k[-1] if solver.fsal else k1
                stages = dense_stages(f, ts, hs, y, k, solver, stats) if mid > n_done else k
                store(outs, grid, s, ts, hs, es, y, y1, stages, tabs.dense, slope)
                n_done = hi
        t_val, y, t_py, y_abs = e_val, y1, tc_py, y1_abs
        if solver.fsal:
            if buf is None:
                k1 = k[-1]
            else:  # keep f(t1, y1) out of the rows the next attempt overwrites
                buf[0] = buf[-1]
                k1 = buf[0].view(y.shape)
    return torch.cat(outs)


def _integrate_fixed(
    f: VectorField,
    y0: torch.Tensor,
    grid: OutputGrid,
    solver: RungeKutta,
    ctrl: ConstantStepSize,
    max_steps: int,
    stats: Stats,
    on_accept: OnAccept | None,
) -> torch.Tensor:
    direction = grid.direction
    times = grid.times
    tabs = solver.tensors(y0.dtype, y0.device)
    c_time = stage_times(solver, tabs, times)
    track = torch.is_grad_enabled() and times.requires_grad
    outs: list[torch.Tensor] = []
    n_done = at_start(outs, grid, y0)
    first = (0, n_done)
    # Step ends: a uniform grid that moves with the first time and a last step ending on
    # the last time, or the distinct output times (each moving with its tie group).
    ends_key = ctrl.step_ends(grid.keys[0], grid.keys[-1])
    if ends_key is None:
        ends_key, stops = output_groups(grid, n_done)
    else:
        stops = [first] * (len(ends_key) - 1) + [last_group(grid)]
    if len(ends_key) > max_steps:
        raise SolverError(
            f"max_steps={max_steps} reached at t={(grid.keys[0] + 0.0) * direction:.6g}: "
            f"the fixed grid needs {len(ends_key)} steps (step size {ctrl.dt}); raise max_steps"
        )
    end_vals = torch.tensor([direction * k for k in ends_key], dtype=times.dtype,
                            device=times.device)
    buf = None if torch.is_grad_enabled() else y0.new_zeros(solver.stages, y0.numel())
    hermite = solver.dense_needs_end_derivative
    checks: list[torch.Tensor] = []
    t_val, start, y = times[0].detach(), first, y0
    t0 = t_val + moves_with(times, first) if track else t_val
    k1: torch.Tensor | None = first_eval(f, t0, y0, stats)
    for i, (key, stop) in enumerate(zip(ends_key, stops, strict=True)):
        e_val = end_vals[i]
        mid, hi = outputs_of(grid, key, n_done)
        s = Step(t_val, e_val - t_val, e_val, y, n_done, mid, hi, start, stop)
        t, h, e = step_times(times, s) if track else (s.t, s.h, s.end)
        if k1 is None:
            k1 = call(f, t, y, stats)
        y1, k, _ = rk_step(f, t, h, y, k1, solver, tabs, c_time, stats, buf)
        stats.steps += 1
        stats.accepted += 1
        checks.append(y1.detach().sum())
        needs_slope = track and needs_end_slope(s)
        dense_here = mid > n_done and hermite
        k1 = k[-1] if solver.fsal else None
        if not solver.fsal and (dense_here or needs_slope):
            k1 = call(f, e, y1, stats)
        stages = torch.cat([k, k1.unsqueeze(0)]) if dense_here and k1 is not None else k
        if mid > n_done:
            stages = dense_stages(f, t, h, y, stages, solver, stats)
        if on_accept is not None:
            on_accept(s)
        if hi > n_done:
            store(outs, grid, s, t, h, e, y, y1, stages, tabs.dense, k1 if needs_slope else None)
            n_done = hi
        t_val, start, y = e_val, stop, y1
    # one host read per solve; inside torch.compile (where it would be a graph break) left
    # out: a non-finite state then gives non-finite outputs, which fit reports as a divergence
    finite = torch.stack(checks).isfinite()
    if not torch.compiler.is_compiling() and not bool(finite.all()):
        bad = int((~finite).nonzero()[0, 0])
        t_bad = grid.keys[0] * direction if bad == 0 else ends_key[bad - 1] * direction
        h_bad = abs(ends_key[bad] - (grid.keys[0] if bad == 0 else ends_key[bad - 1]))
        raise NonFiniteStateError(
            f"non-finite state after the step from t={t_bad:.6g} with step size {h_bad:.3g}"
        )
    return torch.cat(outs)


def replay_step(
    f: VectorField,
    y: torch.Tensor,
    s: Step,
    grid: OutputGrid,
    solver: RungeKutta,
    tabs: StepTensors,
    c_time: torch.Tensor,
    stats: Stats,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Retake step ``s`` from ``y`` (under the caller's grad mode): ``(y1, outputs lo:hi)``.

    Its times are linked to ``grid.times`` as in :func:`integrate` when those require grad,
    so the gradients are those of backprop through the whole solve.
    """
    track = torch.is_grad_enabled() and grid.times.requires_grad
    t, h, e = step_times(grid.times, s) if track else (s.t, s.h, s.end)
    k1 = call(f, t, y, stats)
    y1, k, _ = rk_step(f, t, h, y, k1, solver, tabs, c_time, stats, None)
    needs_slope = track and needs_end_slope(s)
    dense_here = s.mid > s.lo and solver.dense_needs_end_derivative
    slope = k[-1] if solver.fsal else None
    if not solver.fsal and (dense_here or needs_slope):
        slope = call(f, e, y1, stats)
    stages = torch.cat([k, slope.unsqueeze(0)]) if dense_here and slope is not None else k
    if s.mid > s.lo:
        stages = dense_stages(f, t, h, y, stages, solver, stats)
    outs: list[torch.Tensor] = []
    store(outs, grid, s, t, h, e, y, y1, stages, tabs.dense, slope if needs_slope else None)
    return y1, (torch.cat(outs) if outs else None)
