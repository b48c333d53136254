"""A compiled adaptive solve for small systems: several steps per ``torch.compile``'d call.

On a 3-dimensional system (Lorenz) one evaluation of ``f`` is a few microseconds of
arithmetic and tens of microseconds of Python and dispatch, and an eager Runge-Kutta step
is some forty small tensor operations plus a host read of its error ratio. Here one call
of a compiled function takes ``attempts`` steps in a row: for each, the stages, the new
state, the error norm, the accept/reject decision and the next step size (the same
formulas as :class:`~infdepth.ode.PIController`, as tensor operations), with a rejected
or superfluous attempt masked out by ``torch.where``. The graph has static shapes and the
times, step sizes and tolerances are tensors, so it compiles once per state shape and dtype
and is reused by every later solve of the same :class:`CompiledSolver`. The host loop reads one
small table per call (which attempts were taken and accepted, their times and step
sizes), raises the errors of the eager loop, and evaluates the dense output at the
requested times from the stages the call returned.

The step sequence is the eager loop's (:func:`~infdepth.ode.odeint` with the same solver
and controller) up to rounding: the same first step, the same error ratio, the same
controller formulas and the same last-step clipping (``tests/ode/test_compiled.py``).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from infdepth.errors import InputError
from infdepth.ode._controller import DEFAULT_ATOL, DEFAULT_RTOL, SLACK, PIController, rms2
from infdepth.ode._errors import NonFiniteStateError, SolverError
from infdepth.ode._solvers import Bosh3, Dopri5, RungeKutta, Tsit5
from infdepth.ode._stepping import VectorField

INDUCTOR_OPTIONS: dict[str, str | int | bool] = {"cpp_wrapper": True}
"""Inductor options of the compiled call: a C++ wrapper allocates the call's small buffers
without a Python call each (a quarter of the call's cost on Lorenz)."""

SUPPORTED = (Bosh3, Dopri5, Tsit5)
"""Solvers of the compiled path: explicit, adaptive, FSAL, dense output from the step's stages."""


def _combine(coeffs: tuple[float, ...], ks: list[torch.Tensor], h: torch.Tensor) -> torch.Tensor:
    """``sum_j (coeffs[j] * h) * ks[j]`` over the nonzero coefficients."""
    terms = [(c * h) * k for c, k in zip(coeffs, ks, strict=False) if c]
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


@dataclass
class CompiledStats:
    """Counters of the last solve, and compile time over the solver's life.

    ``nfe``, ``steps``, ``accepted``, ``rejected`` count as the eager loop counts (an attempt
    taken after the solve ended inside a call is not counted); ``masked`` counts those
    attempts, whose evaluations of ``f`` were computed and thrown away. ``calls``: compiled
    calls of the last solve. ``compile_seconds``: wall time of every call that compiled a new
    graph (all solves so far), ``compiles`` their number; the backward graph of a solve
    under autograd compiles at its first backward pass, which this does not count.
    """

    nfe: int = 0
    steps: int = 0
    accepted: int = 0
    rejected: int = 0
    masked: int = 0
    calls: int = 0
    compiles: int = 0
    compile_seconds: float = 0.0
    signatures: set[tuple[object, ...]] = field(default_factory=set, repr=False)


class CompiledSolver:
    """``dy/dt = f(t, y)`` solved by a compiled adaptive Runge-Kutta loop (opt-in).

    ``CompiledSolver(f)(y0, t)`` returns what ``odeint(f, y0, t)`` returns (up to rounding)
    for a shared 1-D time grid. The first call for a state shape compiles (tens of seconds:
    see ``stats.compile_seconds``); later calls reuse the graph, so keep the object for a
    whole training run. Differentiable by backprop through the compiled steps (the
    step-size control is not differentiated, as in the eager loop); the output times are not.

    Args:
        f: the vector field; traced into the graph, so it must be traceable by
            ``torch.compile`` without graph breaks and free of Python side effects (a call
            counter on the module would recompile every call; read ``stats.nfe``).
        solver: ``Dopri5()`` (default), ``Tsit5()`` or ``Bosh3()``.
        rtol, atol: tolerances (ignored when ``controller`` is given).
        controller: a :class:`PIController` (its ``dt0``, ``dtmin``, ``dtmax``, coefficients
            and bounds are all honoured).
        attempts: steps attempted per compiled call, >= 1: more amortise the call's cost over
            more steps, at a longer compile and up to ``attempts - 1`` masked attempts at the
            end of a solve.
        max_steps: attempted steps before :class:`SolverError`.
        backend: the ``torch.compile`` backend; ``"inductor"`` generates C++ (on CPU) for the
            whole call, ``"aot_eager"`` traces the same graph without code generation (fast to
            build, as slow as eager to run: for tests).
    """

    def __init__(self, f: VectorField, *, solver: RungeKutta | None = None,
                 rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL,
                 controller: PIController | None = None, attempts: int = 8,
                 max_steps: int = 10_000, backend: str = "inductor") -> None:
        solver = Dopri5() if solver is None else solver
        if type(solver) not in SUPPORTED:
            names = ", ".join(f"{c.__name__}()" for c in SUPPORTED)
            raise InputError(f"solver={type(solver).__name__}() is not accepted by CompiledSolver; "
                             f"expected one of {names} (or use odeint)")
        if controller is None:
            controller = PIController(rtol=rtol, atol=atol)
        elif not isinstance(controller, PIController):
            raise InputError(f"controller={controller!r} is not accepted; expected a PIController")
        for name, v in (("attempts", attempts), ("max_steps", max_steps)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"{name}={v!r} is not accepted; expected an integer >= 1")
        self.f, self.solver, self.controller = f, solver, controller
        self.attempts, self.max_steps = attempts, max_steps
        self.stats = CompiledStats()
        self._result: tuple[torch.Tensor, ...] = ()
        self._skipping = False
        options: dict[str, Any] | None = dict(INDUCTOR_OPTIONS) if backend == "inductor" else None
        self._chunk = torch.compile(self._attempts, fullgraph=True, dynamic=False,
                                    backend=backend, options=options)

    # ------------------------------------------------------------------ the compiled graph

    def _step(self, t: torch.Tensor, h: torch.Tensor, y: torch.Tensor, k1: torch.Tensor,
              ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """One Runge-Kutta step of signed size ``h`` (float64): ``(y1, stages, error)``."""
        tab = self.solver.tableau
        hy = h.to(y.dtype)
        ks = [k1]
        yi = y
        for ci, row in zip(tab.c[1:], tab.a, strict=True):
            yi = y + _combine(row, ks, hy)
            ks.append(self.f(t + ci * h, yi))
        assert tab.b_error is not None
        return yi, ks, _combine(tab.b_error, ks, hy)

    def _attempts(self, t: torch.Tensor, y: torch.Tensor, k1: torch.Tensor, h: torch.Tensor,
                  prev_r: torch.Tensor, done: torch.Tensor, t_end: torch.Tensor,
                  direction: torch.Tensor, rtol: torch.Tensor, atol: torch.Tensor,
                  next_key: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Up to ``attempts`` steps; stops (masks the rest) after the first accepted step that
        reaches ``next_key`` (the next output time times ``direction``), whose start state,
        end state and stages it returns for the dense output."""
        ctrl = self.controller
        expo = -(ctrl.icoeff + ctrl.pcoeff) / self.solver.order
        p_expo = ctrl.pcoeff / self.solver.order
        inv_sqrt_n = 1.0 / math.sqrt(max(y.numel(), 1))
        logs = []
        paused = torch.zeros_like(done)
        hit_y0, hit_y1, hit_k = y, y, torch.stack([k1] * self.solver.stages)
        for _ in range(self.attempts):
            active = ~(done | paused)
            rem = direction * (t_end - t)
            last = rem <= h * (1 + SLACK)
            h_signed = direction * torch.where(last, rem, h)
            y1, ks, err = self._step(t, h_signed, y, k1)
            with torch.no_grad():
                scale = atol + rtol * torch.maximum(y.detach().abs(), y1.detach().abs())
                r = (torch.linalg.vector_norm(err.detach() / scale) * inv_sqrt_n).to(torch.float64)
                factor = ctrl.safety * r.pow(expo) * prev_r.pow(p_expo)
                factor = torch.where(r == 0, torch.full_like(r, ctrl.factor_max), factor)
                ok = r <= 1.0
                factor = torch.where(ok, factor.clamp(1.0, ctrl.factor_max),
                                     factor.clamp(ctrl.factor_min, 1.0))
                accepted = ok & active
                h_next = torch.clamp(h_signed.abs() * factor, max=ctrl.dtmax)
                logs.append(torch.stack([active.to(torch.float64), accepted.to(torch.float64),
                                         last.to(torch.float64), t, h_signed, r, h]))
                t_new = torch.where(last, t_end, t + h_signed)
                hit = accepted & (last | (direction * t_new >= next_key))
                h = torch.where(active, h_next, h)
                prev_r = torch.where(accepted, r.clamp(min=1e-10), prev_r)
                done = done | (accepted & last)
                paused = paused | hit
                t = torch.where(accepted, t_new, t)
            hit_y0 = torch.where(hit, y, hit_y0)
            hit_y1 = torch.where(hit, y1, hit_y1)
            hit_k = torch.where(hit, torch.stack(ks), hit_k)
            y = torch.where(accepted, y1, y)
            k1 = torch.where(accepted, ks[-1], k1)
        return t, y, k1, h, prev_r, done, torch.stack(logs), hit_y0, hit_y1, hit_k

    # ------------------------------------------------------------------ the host loop

    def __call__(self, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``y`` at the times ``t`` (shape ``(T,)``, strictly monotone): ``(T, *y0.shape)``."""
        if not isinstance(y0, torch.Tensor) or not y0.is_floating_point():
            raise InputError("y0 must be a floating-point tensor")
        if not bool(torch.isfinite(y0.detach()).all()):
            raise InputError("y0 contains NaN or infinite values; expected a finite initial state")
        if not isinstance(t, torch.Tensor) or t.ndim != 1 or t.shape[0] < 2:
            raise InputError("t must be a tensor of shape (T,) with T >= 2 output times "
                             "(CompiledSolver takes one time grid for the whole state)")
        if t.requires_grad:
            raise InputError("t requires grad: CompiledSolver does not differentiate the output "
                             "times; use odeint")
        times = t.detach().to(device=y0.device, dtype=torch.float64)
        if not bool(torch.isfinite(times).all()):
            raise InputError("t contains NaN or infinite times; expected finite times")
        diff = times[1:] - times[:-1]
        if not (bool((diff > 0).all()) or bool((diff < 0).all())):
            raise InputError("t must be strictly increasing or strictly decreasing")
        keys = times.tolist()
        direction = 1.0 if keys[1] > keys[0] else -1.0
        return self._solve(y0, times, [direction * k for k in keys], direction)

    def _solve(self, y0: torch.Tensor, times: torch.Tensor, keys: list[float],
               direction: float) -> torch.Tensor:
        st = self.stats
        st.nfe = st.steps = st.accepted = st.rejected = st.masked = st.calls = 0
        self._skipping = False
        ctrl, order = self.controller, self.solver.order
        t_val, t_end = times[0], times[-1]
        k1 = self.f(t_val, y0)
        if not isinstance(k1, torch.Tensor) or k1.shape != y0.shape or k1.dtype != y0.dtype:
            raise InputError("f(t, y) must return a tensor of y0's shape and dtype")

        def counted(tt: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
            st.nfe += 1
            return self.f(tt, yy)

        h0 = ctrl.initial_step(counted, t_val, y0, k1, order, rms2, direction)
        st.nfe += 1
        tab = self.solver.tableau
        dense = torch.as_tensor(tab.dense_matrix(), dtype=y0.dtype, device=y0.device)

        def scalar(x: float) -> torch.Tensor:
            return torch.tensor(x, dtype=torch.float64, device=y0.device)

        state: tuple[torch.Tensor, ...] = (t_val.clone(), y0, k1, scalar(min(h0, ctrl.dtmax)),
                                           scalar(1.0), torch.tensor(False, device=y0.device))
        # the tolerances are inputs, not constants: solvers that differ only in them share
        # one compiled graph (inductor's cache finds it)
        tols = [torch.tensor(x, dtype=y0.dtype, device=y0.device) for x in (ctrl.rtol, ctrl.atol)]
        consts = (t_end, scalar(direction), *tols)
        outs: list[torch.Tensor] = [y0.unsqueeze(0)]
        n_out = 1
        key_tensors = [scalar(k) for k in keys]
        with contextlib.ExitStack() as stance:
            previous: tuple[object, ...] | None = None
            while n_out < len(keys):
                if st.steps >= self.max_steps:
                    raise SolverError(
                        f"max_steps={self.max_steps} reached at t={float(state[0]):.6g} before "
                        f"t={keys[-1] * direction:.6g}; raise max_steps or loosen rtol/atol")
                previous = self._call(stance, previous, *state, *consts, key_tensors[n_out])
                result = self._result
                state = result[:6]
                log, hit_y0, hit_y1, hit_k = result[6:]
                hit = self._read(log, direction)
                if hit is None:
                    continue
                t0, h, last = hit
                end_key = keys[-1] if last else direction * (t0 + h)
                inside = []
                while n_out < len(keys) and keys[n_out] < end_key:
                    inside.append((keys[n_out] - direction * t0) / abs(h))
                    n_out += 1
                if inside:
                    outs.append(self._dense(inside, h, hit_y0, hit_k, dense))
                while n_out < len(keys) and keys[n_out] == end_key:
                    outs.append(hit_y1.unsqueeze(0))
                    n_out += 1
        return torch.cat(outs)

    def _read(self, log: torch.Tensor, direction: float) -> tuple[float, float, bool] | None:
        """Count the call's attempts (one host read), raise the eager loop's errors, and
        return ``(t0, h, last)`` of its last accepted step, ``None`` if none was accepted."""
        st, ctrl = self.stats, self.controller
        st.calls += 1
        hit = None
        for active, accepted, last, t0, h, r, h_ctrl in log.tolist():
            if not active:
                st.masked += 1
                continue
            if h_ctrl < ctrl.dtmin or t0 + direction * h_ctrl == t0:
                raise SolverError(
                    f"step size {h_ctrl:.3g} at t={t0:.6g} is below the minimum "
                    f"(dtmin={ctrl.dtmin:g}, or too small to change t); the problem may be "
                    "stiff, f discontinuous, or the tolerances too tight")
            if not math.isfinite(r):
                raise NonFiniteStateError(
                    f"non-finite state or error estimate at t={t0:.6g} with step size {abs(h):.3g}")
            st.steps += 1
            st.nfe += self.solver.stages - 1
            if accepted:
                st.accepted += 1
                hit = (t0, h, bool(last))
            else:
                st.rejected += 1
        return hit

    def _call(self, stance: contextlib.ExitStack, previous: tuple[object, ...] | None,
              *args: torch.Tensor) -> tuple[object, ...]:
        """The compiled call (its result in ``self._result``); returns its signature.

        A call with a signature not seen before compiles, and is timed. From the second call
        in a row with one signature on, nothing that the guards check can change within the
        solve (shapes, dtypes, ``requires_grad``, grad mode, the field, the settings), only
        the tensors' values, so guard evaluation is skipped for the rest of the solve.
        """
        y, k1 = args[1], args[2]
        sig = (tuple(y.shape), y.dtype, y.device, torch.is_grad_enabled(), y.requires_grad,
               k1.requires_grad)
        if sig == previous and not self._skipping:
            stance.enter_context(torch.compiler.set_stance(skip_guard_eval_unsafe=True))
            self._skipping = True
        if sig in self.stats.signatures:
            self._result = self._chunk(*args)
            return sig
        start = time.perf_counter()
        self._result = self._chunk(*args)
        self.stats.compile_seconds += time.perf_counter() - start
        self.stats.compiles += 1
        self.stats.signatures.add(sig)
        return sig

    @staticmethod
    def _dense(theta: list[float], h: float, y0: torch.Tensor, k: torch.Tensor,
               dense: torch.Tensor) -> torch.Tensor:
        """The dense output at the fractions ``theta`` of a step of signed size ``h`` from
        ``y0`` with stages ``k``: ``(len(theta), *y0.shape)``."""
        th = torch.tensor(theta, dtype=dense.dtype, device=y0.device)
        powers = th.unsqueeze(1).expand(-1, dense.shape[1]).cumprod(1)
        weights = (powers @ dense.T) * h  # (m, stages)
        flat = y0.reshape(1, -1) + weights @ k.reshape(k.shape[0], -1)
        return flat.reshape(len(theta), *y0.shape)
