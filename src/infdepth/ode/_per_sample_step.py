"""One Runge-Kutta step with a step size per sample, its dense output, and its step-size control.

The arithmetic of :mod:`infdepth.ode._stepping` and the control of
:mod:`infdepth.ode._controller`, with ``t`` and ``h`` of shape ``(n,)`` (one entry per
sample) instead of one number for the batch: every sample has its own error norm,
accept/reject decision and next step. Rows never mix: a sample's numbers are the same
whichever batch it is solved in (up to the batch-size dependence of ``f`` itself).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from infdepth.ode._controller import SLACK, PIController
from infdepth.ode._solvers import RungeKutta
from infdepth.ode._stepping import VectorField


def _rows(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(n,)`` -> ``(n, 1, ..., 1)`` to broadcast against ``like`` of shape ``(n, ...)``."""
    return x.reshape(x.shape[0], *([1] * (like.ndim - 1)))


def _flat(x: torch.Tensor) -> torch.Tensor:
    """``(n, ...)`` -> ``(n, F)``; ``x`` itself when it has two dimensions (no view op)."""
    return x if x.ndim == 2 else x.reshape(x.shape[0], -1)


def rms_rows(x: torch.Tensor) -> torch.Tensor:
    """Root-mean-square of each row of ``x`` (``(n, ...)`` -> ``(n,)``)."""
    flat = _flat(x)
    return torch.linalg.vector_norm(flat, dim=1) * (1.0 / math.sqrt(max(flat.shape[1], 1)))


RowNorm = Callable[[torch.Tensor], torch.Tensor]
"""The error norm of each row of a scaled error ``(n, ...)`` -> ``(n,)`` (default :func:`rms_rows`)."""


class StagePlan(NamedTuple):
    """A tableau's rows as the per-sample step reads them, sliced once per solve."""

    a: tuple[torch.Tensor, ...]  # a[i - 1] = weights (1, i) of stage i on stages 0..i-1
    error: torch.Tensor  # (1 or 2, S) error weights
    c: tuple[float, ...]
    c_col: torch.Tensor  # (S - 1, 1) the nodes c_1.. in the time dtype: all stage times at once

    @staticmethod
    def of(solver: RungeKutta, weights: torch.Tensor, t_dtype: torch.dtype = torch.float64
           ) -> StagePlan:
        """From the tableau's ``weights`` (as in ``RungeKutta.tensors``): the rows ``a`` are
        ``w[i - 1 : i, :i]``, each made as one view (``as_strided``: the same strides as the
        two slices, so the same kernels)."""
        s, w = solver.stages, weights.contiguous()
        c = tuple(solver.tableau.c)
        width, start = w.shape[1], w.storage_offset()
        a = tuple(w.as_strided((1, i), (width, 1), start + (i - 1) * width) for i in range(1, s))
        return StagePlan(a, w[s:], c, torch.tensor([[x] for x in c[1:s]], dtype=t_dtype,
                                                   device=w.device))


class StageBuffer:
    """The scaled stages ``(S, n * F)`` of a step without autograd and the states at which
    its stages evaluate ``f`` (``S - 1`` of ``y``'s shape), reused from pass to pass while
    the working set keeps its size, with their row, prefix and flat views made once.

    So ``f`` gets, without autograd, a tensor that the next step overwrites: it must not keep
    its input ``y`` beyond the call (as any field that computes a new output does not)."""

    def __init__(self) -> None:
        self.key: tuple[object, ...] = ()

    def views(self, s: int, y: torch.Tensor) -> tuple[
            torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...], list[torch.Tensor],
            list[tuple[torch.Tensor, torch.Tensor]]]:
        """``(flat (S, n * F), hk (S, n, F), rows: hk[i] as (n, F), prefix: flat[:i],
        states: (y_i of y's shape, y_i as (1, n * F)) for the stages 1..S-1)``."""
        key = (s, y.shape, y.dtype, y.device)
        if key != self.key:
            self.flat = y.new_empty(s, y.numel())
            self.hk = self.flat.view(s, y.shape[0], -1)
            self.rows = self.hk.unbind()
            self.prefix = [self.flat] + [self.flat[:i] for i in range(1, s)]  # [0] unused
            # one allocation each: a BLAS kernel's rounding can depend on its output's
            # alignment, which is then that of the fresh tensor addmm would have made
            states = [y.new_empty(y.shape) for _ in range(s - 1)]
            self.states = [(x, x.view(1, -1)) for x in states]
            self.key = key
        return self.flat, self.hk, self.rows, self.prefix, self.states


def step_per_sample(
    f: VectorField,
    t: torch.Tensor,
    h: torch.Tensor,
    y: torch.Tensor,
    k1: torch.Tensor,
    plan: StagePlan,
    buffer: StageBuffer | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of signed sizes ``h`` ``(n,)`` from times ``t`` ``(n,)``.

    The solver is FSAL (its last stage is ``f(t1, y1)``). Returns ``(y1, hk, error,
    f(t1, y1))``: ``hk`` ``(S, n, F)`` are the stages times each sample's step (``F``
    features, flattened), so that a state inside the step is ``y + sum_i w_i hk_i`` (one
    matrix product for all samples); ``f`` is called ``S - 1`` times with ``t`` of shape
    ``(n,)``. The stage times are one ``addcmul`` (``t + c_i h``, rounded as
    ``torch.add(t, h, alpha=c_i)``). Without autograd the stages go into one buffer
    (``buffer``'s, reused: ``hk`` is then valid until the next step) and each stage is a
    single ``addmm`` over the rows written so far, into the buffer's stage states.
    """
    n, s = y.shape[0], len(plan.a) + 1
    yf = y.reshape(1, -1)
    hy = h.to(y.dtype).unsqueeze(1)
    ts = torch.addcmul(t, plan.c_col, h).unbind()
    yi, ki = y, k1
    if not torch.is_grad_enabled():
        flat, hk, rows, prefix, states = (buffer or StageBuffer()).views(s, y)
        torch.mul(_flat(k1), hy, out=rows[0])
        for i in range(1, s):
            yi, yi_flat = states[i - 1]
            torch.addmm(yf, plan.a[i - 1], prefix[i], out=yi_flat)
            ki = f(ts[i - 1], yi)
            torch.mul(_flat(ki), hy, out=rows[i])
    else:
        parts = [(k1.reshape(n, -1) * hy).reshape(1, -1)]
        for i in range(1, s):
            stacked = parts[0] if i == 1 else torch.cat(parts)
            yi = torch.addmm(yf, plan.a[i - 1], stacked).view(y.shape)
            ki = f(ts[i - 1], yi)
            parts.append((ki.reshape(n, -1) * hy).reshape(1, -1))
        flat = torch.cat(parts)
        hk = flat.view(s, n, -1)
    with torch.no_grad():
        e = torch.mm(plan.error, flat)  # (1 or 2, n * F)
        if e.shape[0] == 1:
            err = e.view(y.shape)
        else:  # DOP853's two estimates, combined as in _stepping.error_estimate
            high, low = e[0], e[1]
            size = torch.sqrt(high * high + 0.01 * (low * low))
            safe = torch.where(size > 0, size, torch.ones_like(size))
            err = torch.where(size > 0, high * high.abs() / safe,
                              torch.zeros_like(high)).view(y.shape)
    return yi, hk, err, ki


def dense_stages_per_sample(
    f: VectorField, t: torch.Tensor, h: torch.Tensor, y: torch.Tensor, hk: torch.Tensor,
    solver: RungeKutta,
) -> torch.Tensor:
    """The scaled stages followed by those only the dense output needs (DOP853's three)."""
    tab = solver.tableau
    n = y.shape[0]
    hy = h.to(y.dtype).unsqueeze(1)
    for c_j, row in zip(tab.dense_c, tab.dense_a, strict=True):
        wr = torch.tensor(row, dtype=y.dtype, device=y.device)
        y_j = (y.reshape(n, -1) + torch.tensordot(wr, hk, dims=1)).view(y.shape)
        k_j = f(torch.add(t, h, alpha=c_j), y_j).reshape(n, -1) * hy
        hk = torch.cat([hk, k_j.unsqueeze(0)])
    return hk


def dense_per_sample(theta: torch.Tensor, y: torch.Tensor, hk: torch.Tensor,
                     dense: torch.Tensor) -> torch.Tensor:
    """``y + sum_i b_i(theta) hk_i`` row by row: ``theta`` ``(m,)``, ``hk`` ``(R, m, F)``."""
    powers = theta.to(dense.dtype).unsqueeze(1).expand(-1, dense.shape[1]).cumprod(1)
    weights = (dense @ powers.T).unsqueeze(2)  # (R, m, 1)
    out = _flat(y) + (weights * hk).sum(0)
    return out if y.ndim == 2 else out.view(y.shape)


class PerSampleSteps:
    """A :class:`PIController`'s state for every sample at once (device tensors, no host sync).

    The loop holds, per sample, ``h`` (the magnitude of the next attempt) and ``prev_r``
    (the last accepted error ratio); the formulas are those of
    :class:`~infdepth.ode._controller.AdaptiveSteps`, row by row.
    """

    def __init__(self, ctrl: PIController, order: int, norm: RowNorm = rms_rows,
                 direction: float = 1.0) -> None:
        self.ctrl = ctrl
        self.norm = norm
        self._exponent = -(ctrl.icoeff + ctrl.pcoeff) / order
        self._p_exponent = ctrl.pcoeff / order
        self._negative = direction < 0  # the signed steps' sign (>= 0 forwards)
        self.pi = bool(self._p_exponent)  # whether judge reads and updates prev_r
        # whether a ratio below 1e-300 reaches factor_max unclipped too (as (1e-300)**exponent
        # does, times the smallest prev_r**p_exponent): then judge need not clip it
        log_smallest = (-300 * self._exponent - 10 * self._p_exponent) * math.log(10) + math.log(
            ctrl.safety)  # in logarithms: (1e-300)**exponent may overflow a float
        self._unclipped = log_smallest >= math.log(ctrl.factor_max)

    @staticmethod
    def initial(ctrl: PIController, f: VectorField, t0: torch.Tensor, y0: torch.Tensor,
                k1: torch.Tensor, order: int, direction: float, norm: RowNorm = rms_rows
                ) -> torch.Tensor:
        """Each sample's first step (Hairer, Norsett & Wanner, II.4), one evaluation of ``f``.

        The arithmetic of the textbook formula in the fewest operations (the same numbers:
        ``fmin(d0, d1) < c`` is ``d0 < c or d1 < c`` with NaN, a sign flip is exact)."""
        if ctrl.dt0 is not None:
            return torch.full_like(t0, min(ctrl.dt0, ctrl.dtmax))
        with torch.no_grad():
            scale = y0.abs().mul(ctrl.rtol).add_(ctrl.atol)
            d0, d1 = norm(y0 / scale), norm(k1 / scale)
            h0 = (0.01 * d0).div_(d1).masked_fill_(torch.fmin(d0, d1) < 1e-5, 1e-6)
            signed = h0 if direction > 0 else -h0
            f1 = f(t0 + signed.to(t0.dtype), y0 + _rows(signed, y0) * k1)
            d2 = norm((f1 - k1) / scale) / h0
            dmax = torch.maximum(d1, d2)
            h1 = torch.where(dmax <= 1e-15, torch.clamp(h0 * 1e-3, min=1e-6),
                             (0.01 / dmax) ** (1.0 / order))
            h = torch.minimum(100 * h0, h1).to(t0.dtype)
            return h.clamp_(max=ctrl.dtmax) if math.isfinite(ctrl.dtmax) else h

    def next_step(self, t: torch.Tensor, t_end: torch.Tensor, h: torch.Tensor,
                  direction: float
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Signed steps from ``t``, whether each ends on ``t_end``, which underflowed, and
        ``t`` plus the unclipped signed step (a step's end where it is not the last)."""
        left = t_end - t
        forward = h if direction > 0 else -h  # exact: the sign only
        last = (left if direction > 0 else -left) <= h * (1 + SLACK)
        signed = torch.where(last, left, forward)
        ahead = t + forward
        under = ahead == t
        if self.ctrl.dtmin > 0:
            under = under | (h < self.ctrl.dtmin)
        return signed, last, under, ahead

    def ratio(self, err: torch.Tensor, y: torch.Tensor, y1: torch.Tensor) -> torch.Tensor:
        """Each sample's RMS (or ``norm``) of ``err / (atol + rtol * max(|y0|, |y1|))``, in
        float64."""
        with torch.no_grad():
            scale = torch.maximum(y.abs(), y1.abs()).mul_(self.ctrl.rtol).add_(self.ctrl.atol)
            return self.norm(err.div_(scale)).to(torch.float64)

    def judge(self, r: torch.Tensor, h: torch.Tensor, prev_r: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(accepted, next |h|, prev_r)`` for ratios ``r`` of steps of signed sizes ``h``.

        ``r = 0`` gives ``factor_max`` (the power of the ratio clipped to 1e-300 is huge; the
        clip is left out where the unclipped power gives the same, see ``_unclipped``). The factor is
        clipped to ``[low, factor_max]`` after an accepted step (``low`` 1, or ``factor_min``
        with ``shrink_after_accept``) and to ``[factor_min, 1]`` after a rejection: in two
        operations, since a rejected step's factor is below 1 already (``r > 1``, ``safety
        <= 1``, ``pcoeff >= 0`` and ``prev_r <= 1``), so ``[factor_min, factor_max]`` clips
        it the same, and ``max(factor, accepted)`` raises an accepted one to ``low = 1``.
        """
        c = self.ctrl
        accepted = r <= 1.0
        factor = (torch.pow(r, self._exponent) if self._unclipped else  # inf for r = 0
                  r.clamp(min=1e-300).pow_(self._exponent)).mul_(c.safety)
        if self._p_exponent:
            factor.mul_(prev_r**self._p_exponent)
        factor = factor.clamp_(c.factor_min, c.factor_max)
        if not c.shrink_after_accept:
            factor = torch.maximum(factor, accepted)
        size = h.detach() if h.requires_grad else h  # the control is not differentiated
        if factor.dtype == h.dtype:
            h_next = factor.mul_(size.abs() if self._negative else size)
        else:
            h_next = size.abs().mul_(factor)
        if math.isfinite(c.dtmax):
            h_next = h_next.clamp_(max=c.dtmax)
        prev = torch.where(accepted, r.clamp(min=1e-10), prev_r) if self._p_exponent else prev_r
        return accepted, h_next, prev


class PassRead:
    """The tensors of a pass's one host read, written by ``out=`` operations (no stacking),
    kept while the working set keeps its size: ``masks`` ``(2 or 3, n)``, the failed rows,
    the rows at their end and (with events) the rows whose step may hold one; ``counts`` the
    ``k`` values read, ``values`` each of them, ``head`` the first ones, the masks' counts."""

    def __init__(self) -> None:
        self.n = -1

    def size(self, n: int, k: int, events: bool, device: torch.device) -> None:
        if n != self.n:
            self.masks = torch.empty(2 + events, n, dtype=torch.bool, device=device)
            self.trouble, self.ended, *cand = self.masks.unbind()
            self.cand = cand[0] if cand else None
            self.counts = torch.empty(k, dtype=torch.long, device=device)
            self.values = self.counts.unbind()
            self.head = self.counts[: 2 + events]
            self.n = n


def with_dense_stages(f: VectorField, t: torch.Tensor, h: torch.Tensor, y: torch.Tensor,
                      hk: torch.Tensor, solver: RungeKutta, need: torch.Tensor | None,
                      compact: bool) -> torch.Tensor:
    """The scaled stages plus those only the dense output needs, for the rows in ``need`` (the
    other rows' extra stages are zero, never read); all rows when not ``compact``."""
    if need is None or not bool(need.any()):
        return hk
    if not compact:
        return dense_stages_per_sample(f, t, h, y, hk, solver)
    sel = need.nonzero().squeeze(1)
    part = dense_stages_per_sample(f, t[sel], h[sel], y[sel], hk[:, sel], solver)
    extra = hk.new_zeros(part.shape[0] - hk.shape[0], *hk.shape[1:])
    return torch.cat([hk, extra.index_copy(1, sel, part[hk.shape[0]:])])
