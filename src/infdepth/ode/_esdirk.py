"""Stiff solvers: ESDIRK methods, one Newton iteration per implicit stage.

A solver here is an :class:`~infdepth.ode._implicit_tableaus.ESDIRKTableau` plus an order,
like the explicit ones; it plugs into the same integration loop, controller, output grids and
gradient methods. What differs lives in :class:`ImplicitSteps`, made fresh for every solve
(by :meth:`ESDIRK.tensors`): the Jacobian and the LU of the Newton matrix, kept across stages,
rejected steps and accepted steps while Newton's iteration converges fast, and the step itself.

Gradients through a step (``Backprop``, ``Checkpointed``): Newton's iteration runs without
autograd; each converged stage ``Y*`` is then passed once through
``Y = Y* - (I - h gamma J(Y*))^{-1} G(Y*)`` with ``G`` the stage equation, differentiable in
everything but ``Y*``, which is the implicit-function theorem: the derivatives are those of the
exact stage solution (to the Newton tolerance), at the cost of one Jacobian, one LU and one
evaluation of ``f`` per implicit stage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from infdepth.errors import InputError, check_float
from infdepth.ode import _implicit_tableaus as itab
from infdepth.ode._controller import DEFAULT_ATOL, DEFAULT_RTOL
from infdepth.ode._newton import (
    AdjointJacobian,
    AdjointNewtonMatrix,
    Jacobian,
    NewtonFailure,
    NewtonMatrix,
    autograd_jacobian,
    blocks,
    newton_matrix,
    scaled_rms,
    user_jacobian,
)
from infdepth.ode._solvers import RungeKutta, StepTensors
from infdepth.ode._stage_predictor import StagePredictor
from infdepth.ode._stepping import Stats, VectorField


@dataclass(frozen=True)
class ESDIRK(RungeKutta):
    """An adaptive ESDIRK method for stiff problems; subclasses set ``tableau`` and ``order``.

    Args:
        jacobian: ``jacobian(t, y)`` returning ``df/dy`` as ``(B, F, F)`` blocks, one per
            sample of a state ``(B, ...)`` with ``F`` features per sample (``(F, F)`` for a
            state without a batch axis); ``None`` computes it by reverse mode (``torch.func``)
            under ``vmap``. Samples are assumed independent (a field that couples samples
            should be given a state without a batch axis).
        max_newton_iters: Newton iterations per stage before the step is rejected (an
            adaptive solve then retries half the step; a fixed-step solve fails).
        newton_kappa: Newton stops when its predicted remaining error is below
            ``newton_kappa`` times the tolerance (RMS of ``dy / (atol + rtol |y|)``).
        reuse_jacobian_below: keep the Jacobian for the next step while Newton's convergence
            rate stayed below this; otherwise recompute it at the next step's start.
        predict_max_growth: Newton starts each stage from the previous accepted step's dense
            output extrapolated to the stage's time (:mod:`~infdepth.ode._stage_predictor`)
            while the step grew at most this much; else, and with 0, from the last slope.
        predictive_steps: Gustafsson's predictive step-size controller on top of the integral
            one (:class:`~infdepth.ode._controller.AdaptiveSteps`; as Radau), which cuts the
            rejected steps; ``False`` for the plain integral controller.
    """

    tableau: ClassVar[itab.ESDIRKTableau]
    order: ClassVar[int]
    jacobian: Jacobian | None = field(default=None, compare=False)
    max_newton_iters: int = 10
    newton_kappa: float = 1e-2
    reuse_jacobian_below: float = 0.1
    predict_max_growth: float = 3.0
    predictive_steps: bool = True

    def __post_init__(self) -> None:
        if (not isinstance(self.max_newton_iters, int) or isinstance(self.max_newton_iters, bool)
                or self.max_newton_iters < 1):
            raise InputError(f"max_newton_iters={self.max_newton_iters!r} is not accepted; "
                             "expected an integer >= 1")
        check_float("newton_kappa", self.newton_kappa, low=0.0, high=1.0, strict=True)
        check_float("reuse_jacobian_below", self.reuse_jacobian_below, low=0.0, high=1.0)
        check_float("predict_max_growth", self.predict_max_growth, low=0.0)
        if self.jacobian is not None and not callable(self.jacobian):
            raise InputError(f"jacobian={self.jacobian!r} is not accepted; expected a callable "
                             "jacobian(t, y) or None")

    def tensors(self, dtype: torch.dtype, device: torch.device) -> StepTensors:
        """The tableau as tensors, with a fresh Newton workspace for this solve."""
        base = super().tensors(dtype, device)
        return base._replace(workspace=ImplicitSteps(self, base))


class ImplicitSteps:
    """One solve's Newton state: the Jacobian, the LU, their reuse, and the steps.

    Host synchronisation: one number per Newton iteration (its convergence test).
    """

    def __init__(self, solver: ESDIRK, tabs: StepTensors) -> None:
        self.solver = solver
        self.tabs = tabs
        self.gamma = solver.tableau.gamma
        self.rtol, self.atol = DEFAULT_RTOL, DEFAULT_ATOL
        self.jac: torch.Tensor | AdjointJacobian | None = None
        self.jac_at: torch.Tensor | None = None  # the state the Jacobian was taken at
        self.matrix: NewtonMatrix | AdjointNewtonMatrix | None = None
        self.stale = True  # recompute the Jacobian at the next step's start
        self.eta = 1.0  # Newton's error-reduction estimate, carried between stages
        self.predictor = StagePredictor(solver.tableau, solver.predict_max_growth,
                                        tabs.weights.dtype, tabs.weights.device)

    def bind_tolerances(self, rtol: float, atol: float) -> None:
        """Measure Newton's convergence against the controller's tolerances."""
        self.rtol, self.atol = rtol, atol

    def _jacobian(self, f: VectorField, t: torch.Tensor, y: torch.Tensor,
                  stats: Stats) -> torch.Tensor | AdjointJacobian:
        layout = getattr(f, "adjoint_of", None)  # the adjoint's augmented field
        if layout is not None:
            base, shape, n = layout
            return AdjointJacobian(self._field_jacobian(base, t, y[:n].view(shape), stats), n)
        return self._field_jacobian(f, t, y, stats)

    def _field_jacobian(self, f: VectorField, t: torch.Tensor, y: torch.Tensor,
                        stats: Stats) -> torch.Tensor:
        stats.jacobians += 1
        if self.solver.jacobian is not None:
            return user_jacobian(self.solver.jacobian, t, y)
        return autograd_jacobian(f, t, y)

    def _factor(self, h_gamma: float, t: torch.Tensor,
                stats: Stats) -> NewtonMatrix | AdjointNewtonMatrix:
        assert self.jac is not None
        if self.matrix is None or self.matrix.h_gamma != h_gamma:
            stats.factorizations += 1
            self.matrix = newton_matrix(self.jac, h_gamma, t)
        return self.matrix

    def step(self, f: VectorField, t: torch.Tensor, h: torch.Tensor | float, y: torch.Tensor,
             k1: torch.Tensor, c_time: torch.Tensor, stats: Stats,
             buf: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One ESDIRK step: ``(y1, stages, error estimate)``; raises :class:`NewtonFailure`.

        The slopes are written into the rows of ``buf`` (``(S, N)``, no autograd) or of a
        fresh buffer, so that each stage's known part is one ``addmm`` over the rows so far.
        """
        h_val = float(h)
        rate = 0.0
        s = self.solver.stages
        grad = torch.is_grad_enabled()
        # rows not yet written must be finite: each stage's known part weighs all rows
        kbuf = buf if buf is not None and not grad else y.new_zeros(s, y.numel())
        with torch.no_grad():
            guesses = self.predictor.predict(y, h_val)
            for attempt in range(2):
                fresh = self.jac_at is y
                if self.jac is None or (self.stale and not fresh) or (attempt and not fresh):
                    self.jac, self.jac_at, self.matrix = self._jacobian(f, t, y, stats), y, None
                    fresh = True
                try:
                    rate = self._stages(f, t, h_val, y, k1.detach() if k1.requires_grad else k1,
                                        c_time, stats, kbuf, guesses)
                    break
                except NewtonFailure:
                    stats.newton_failures += 1
                    if fresh:
                        self.stale = True
                        raise
            self.stale = rate > self.solver.reuse_jacobian_below
            err = self._err if y.ndim == 1 else self._err.view(y.shape)
        if grad:
            ks = self._differentiable_stages(f, t, h, y, k1, list(kbuf.view(s, *y.shape).unbind()),
                                             c_time, stats)
            self.predictor.remember(h_val, y.detach(), kbuf, self._last_stage)
            return self._last_stage, torch.stack(ks), err
        self.predictor.remember(h_val, y, kbuf, self._last_stage)
        return self._last_stage, kbuf.view(s, *y.shape), err

    def _explicit_part(self, i: int, h: torch.Tensor | float, y: torch.Tensor,
                       ks: list[torch.Tensor]) -> torch.Tensor:
        """``y + h sum_{j<i} a_ij k_j``: the known part of stage ``i``."""
        hw = self.tabs.weights[i - 1 : i, :i] * (h.to(y.dtype) if isinstance(h, torch.Tensor)
                                                 else h)
        kst = torch.stack(ks[:i]).reshape(i, -1)
        return torch.addmm(y.reshape(1, -1), hw, kst).view(y.shape)

    def _stages(self, f: VectorField, t: torch.Tensor, h: float, y: torch.Tensor,
                k1: torch.Tensor, c_time: torch.Tensor, stats: Stats, kbuf: torch.Tensor,
                guesses: list[torch.Tensor] | None) -> float:
        """Newton's iteration for every implicit stage (no autograd): the slopes into the
        rows of ``kbuf``, the last stage into ``_last_stage``; returns the slowest rate.

        Iterates on the stage's implicit increment ``w = Y - z = h gamma k`` (``z`` the
        known part, one ``addmv`` over all rows of ``kbuf``: those not yet written have zero
        weight), flat, starting from ``guesses`` (:class:`StagePredictor`) or the last
        slope. Per iteration: one evaluation of ``f``, the residual
        ``r = w - h gamma f(t_i, z + w)``, the update ``w -= M^{-1} r`` and the scaled norm
        of ``M^{-1} r`` read back to the host. For one small system (``M^{-1}`` explicit)
        the update is one ``addmv`` and the scaled norm one ``mv`` with ``D M^{-1}``
        (``D`` the tolerance scaling, per step): four small operations besides ``f``. The
        error estimate ``h sum_j e_j k_j`` (one ``mv``) goes to ``_err``.
        """
        h_gamma = h * self.gamma
        matrix = self._factor(h_gamma, t, stats)
        nb, nf = blocks(y)
        shape = y.shape
        flat = y.ndim == 1  # f takes and returns the flat iterate itself
        # 1 / (sqrt(F) (atol + rtol |y|)): the per-sample RMS of the update is one vector norm
        root = math.sqrt(nf)
        inv_scale = y.abs().mul_(self.rtol * root).add_(self.atol * root).reciprocal_()
        kappa, max_iters = self.solver.newton_kappa, self.solver.max_newton_iters
        y_flat = y if flat else y.reshape(-1)
        if not flat:
            inv_scale = inv_scale.reshape(-1)
        hw = self.tabs.weights * h
        a_rows = hw.unbind()
        k_cols = kbuf.T
        k_rows = kbuf.unbind()  # one operation, not one per stage
        ts = torch.add(t, c_time, alpha=h).unbind()
        k_rows[0].copy_(k1 if flat else k1.reshape(-1))
        # one system of at most SMALL_SYSTEM unknowns: M^{-1} and D M^{-1} explicit
        inv0 = getattr(matrix, "inverse0", None) if nb == 1 else None
        scaled_inv = None
        if inv0 is not None:
            scaled_inv = inv0 * inv_scale.unsqueeze(1)
        worst = 0.0
        z = w = y_flat
        for i in range(1, self.solver.stages):
            t_i = ts[i]
            z = torch.addmv(y_flat, k_cols, a_rows[i - 1])
            if guesses is not None:
                w = torch.sub(guesses[i - 1], z)
            else:  # the last slope
                w = torch.mul(k_rows[i - 1], h_gamma)
            eta = eta0 = max(self.eta, 1e-10) ** 0.8
            prev = math.inf
            for it in range(max_iters):
                stats.newton_iters += 1
                stats.nfe += 1
                stage = z + w
                if flat:
                    residual = torch.add(w, f(t_i, stage), alpha=-h_gamma)
                else:
                    residual = torch.add(w, f(t_i, stage.view(shape)).reshape(-1),
                                         alpha=-h_gamma)
                if inv0 is not None and scaled_inv is not None:
                    w.addmv_(inv0, residual, alpha=-1)
                    norm = float(torch.linalg.vector_norm(torch.mv(scaled_inv, residual)))
                else:
                    delta = matrix.solve(residual.view(shape)).reshape(-1)
                    w.sub_(delta)
                    norm = scaled_rms(delta, inv_scale, nb)
                if not math.isfinite(norm):
                    raise NewtonFailure(f"Newton's iteration gave a non-finite stage at "
                                        f"t={float(t):.6g} with step size {h:.3g}")
                if it > 0:
                    rate = norm / prev
                    worst = max(worst, rate)
                    left = max_iters - 1 - it
                    if rate >= 1 or rate**left / (1 - rate) * norm > kappa:
                        raise NewtonFailure(
                            f"Newton's iteration diverges at t={float(t):.6g} with step size "
                            f"{h:.3g} (convergence rate {rate:.3g}, stage {i + 1})")
                    eta = rate / (1 - rate)
                    if it == 1:  # a first rate may miss the slower decay that follows
                        eta = max(eta, eta0)
                if norm == 0 or eta * norm <= kappa:
                    break
                prev = norm
            else:
                raise NewtonFailure(
                    f"Newton's iteration did not converge in max_newton_iters={max_iters} at "
                    f"t={float(t):.6g} with step size {h:.3g} (stage {i + 1})")
            self.eta = eta
            torch.mul(w, 1 / h_gamma, out=k_rows[i])
        last = z + w
        self._last_stage = last if flat else last.view(shape)
        self._err = torch.mv(k_cols, a_rows[self.solver.stages])
        return worst

    def _differentiable_stages(self, f: VectorField, t: torch.Tensor, h: torch.Tensor | float,
                               y: torch.Tensor, k1: torch.Tensor, converged: list[torch.Tensor],
                               c_time: torch.Tensor, stats: Stats) -> list[torch.Tensor]:
        """The stages again as functions of ``y``, ``h``, ``t`` and ``f``'s parameters."""
        h_val = float(h)
        h_gamma = h * self.gamma
        ks = [k1]
        stage = y
        for i in range(1, self.solver.stages):
            t_i = t + c_time[i] * h
            with torch.no_grad():
                star = (self._explicit_part(i, h_val, y, converged)
                        + h_val * self.gamma * converged[i])
            z = self._explicit_part(i, h, y, ks)
            stats.nfe += 1
            residual = star - z - h_gamma * f(t_i, star)
            if residual.requires_grad:  # else nothing upstream needs a derivative
                with torch.no_grad():
                    jac = self._field_jacobian(f, t_i.detach(), star, stats)
                    stats.factorizations += 1
                    matrix = NewtonMatrix(jac, h_val * self.gamma, float(t))
                stage = star - matrix.solve(residual)
            else:
                stage = star
            ks.append((stage - z) / h_gamma)
        self._last_stage = stage
        return ks


@dataclass(frozen=True)
class KenCarp4(ESDIRK):
    """Kennedy & Carpenter's ESDIRK 4(3), 6 stages: L-stable, stiffly accurate, adaptive."""

    tableau: ClassVar[itab.ESDIRKTableau] = itab.KENCARP4
    order: ClassVar[int] = 4


@dataclass(frozen=True)
class TRBDF2(ESDIRK):
    """TR-BDF2, order 2 with an order-3 error estimate: L-stable, cheap (2 implicit stages)."""

    tableau: ClassVar[itab.ESDIRKTableau] = itab.TRBDF2
    order: ClassVar[int] = 2


@dataclass(frozen=True)
class Kvaerno5(ESDIRK):
    """Kvaerno's ESDIRK 5(4), 7 stages: L-stable, stiffly accurate, adaptive; for tight
    tolerances on stiff problems (order 5 against KenCarp4's 4)."""

    tableau: ClassVar[itab.ESDIRKTableau] = itab.KVAERNO5
    order: ClassVar[int] = 5
