"""One Runge-Kutta step with a step size per sample, its dense output, and its step-size control.

The arithmetic of :mod:`infdepth.ode._stepping` and the control of
:mod:`infdepth.ode._controller`, with ``t`` and ``h`` of shape ``(n,)`` (one entry per
sample) instead of one number for the batch: every sample has its own error norm,
accept/reject decision and next step. Rows never mix: a sample's numbers are the same
whichever batch it is solved in (up to the batch-size dependence of ``f`` itself).
"""

from __future__ import annotations

import torch

from infdepth.ode._controller import SLACK, PIController
from infdepth.ode._solvers import RungeKutta, StepTensors
from infdepth.ode._stepping import VectorField


def _rows(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(n,)`` -> ``(n, 1, ..., 1)`` to broadcast against ``like`` of shape ``(n, ...)``."""
    return x.reshape(x.shape[0], *([1] * (like.ndim - 1)))


def rms_rows(x: torch.Tensor) -> torch.Tensor:
    """Root-mean-square of each row of ``x`` (``(n, ...)`` -> ``(n,)``)."""
    flat = x.reshape(x.shape[0], -1)
    return flat.square().mean(1).sqrt()


def step_per_sample(
    f: VectorField,
    t: torch.Tensor,
    h: torch.Tensor,
    y: torch.Tensor,
    k1: torch.Tensor,
    solver: RungeKutta,
    tabs: StepTensors,
    c: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of signed sizes ``h`` ``(n,)`` from times ``t`` ``(n,)``: ``(y1, stages, error)``.

    ``stages`` has shape ``(S, n, F)`` (``F`` features per sample, flattened); ``f`` is
    called ``S - 1`` times with ``t`` of shape ``(n,)``.
    """
    n, s = y.shape[0], solver.stages
    yf = y.reshape(n, -1)
    hy = h.to(y.dtype).unsqueeze(1)
    w = tabs.weights
    ks = [k1.reshape(n, -1)]
    yi = y
    for i in range(1, s):
        incr = torch.tensordot(w[i - 1, :i], torch.stack(ks), dims=1)
        yi = torch.addcmul(yf, hy, incr).view(y.shape)
        ks.append(f(t + c[i] * h, yi).reshape(n, -1))
    k = torch.stack(ks)
    y1 = yi if solver.fsal else torch.addcmul(yf, hy, torch.tensordot(w[s - 1], k, dims=1)).view(
        y.shape)
    with torch.no_grad():
        e = hy * torch.tensordot(w[s:], k, dims=1)  # (1 or 2, n, F)
        if e.shape[0] == 1:
            err = e[0]
        else:  # DOP853's two estimates, combined as in _stepping.error_estimate
            high, low = e[0], e[1]
            size = torch.sqrt(high * high + 0.01 * (low * low))
            safe = torch.where(size > 0, size, torch.ones_like(size))
            err = torch.where(size > 0, high * high.abs() / safe, torch.zeros_like(high))
    return y1, k, err.view(y.shape)


def dense_stages_per_sample(
    f: VectorField, t: torch.Tensor, h: torch.Tensor, y: torch.Tensor, k: torch.Tensor,
    solver: RungeKutta,
) -> torch.Tensor:
    """The stages followed by those only the dense output needs (DOP853's three)."""
    tab = solver.tableau
    n = y.shape[0]
    yf = y.reshape(n, -1)
    hy = h.to(y.dtype).unsqueeze(1)
    for c_j, row in zip(tab.dense_c, tab.dense_a, strict=True):
        wr = torch.tensor(row, dtype=y.dtype, device=y.device)
        y_j = torch.addcmul(yf, hy, torch.tensordot(wr, k, dims=1)).view(y.shape)
        k = torch.cat([k, f(t + c_j * h, y_j).reshape(1, n, -1)])
    return k


def dense_per_sample(theta: torch.Tensor, y: torch.Tensor, h: torch.Tensor, k: torch.Tensor,
                     dense: torch.Tensor) -> torch.Tensor:
    """``y + h * sum_i b_i(theta) k_i`` row by row: ``theta, h`` ``(m,)``, ``k`` ``(R, m, F)``."""
    powers = theta.to(dense.dtype).unsqueeze(1).expand(-1, dense.shape[1]).cumprod(1)
    weights = powers @ dense.T  # (m, R)
    mixed = torch.einsum("mr,rmf->mf", weights, k)
    m = y.shape[0]
    return torch.addcmul(y.reshape(m, -1), h.to(y.dtype).unsqueeze(1), mixed).view(y.shape)


class PerSampleSteps:
    """A :class:`PIController`'s state for every sample at once (device tensors, no host sync).

    The loop holds, per sample, ``h`` (the magnitude of the next attempt) and ``prev_r``
    (the last accepted error ratio); the formulas are those of
    :class:`~infdepth.ode._controller.AdaptiveSteps`, row by row.
    """

    def __init__(self, ctrl: PIController, order: int) -> None:
        self.ctrl = ctrl
        self._exponent = -(ctrl.icoeff + ctrl.pcoeff) / order
        self._p_exponent = ctrl.pcoeff / order

    @staticmethod
    def initial(ctrl: PIController, f: VectorField, t0: torch.Tensor, y0: torch.Tensor,
                k1: torch.Tensor, order: int, direction: float) -> torch.Tensor:
        """Each sample's first step (Hairer, Norsett & Wanner, II.4), one evaluation of ``f``."""
        if ctrl.dt0 is not None:
            return torch.full_like(t0, min(ctrl.dt0, ctrl.dtmax))
        with torch.no_grad():
            scale = y0.abs().mul(ctrl.rtol).add_(ctrl.atol)
            d0, d1 = rms_rows(y0 / scale), rms_rows(k1 / scale)
            small = (d0 < 1e-5) | (d1 < 1e-5)
            h0 = torch.where(small, torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
            f1 = f(t0 + direction * h0.to(t0.dtype), y0 + _rows(direction * h0, y0) * k1)
            d2 = rms_rows((f1 - k1) / scale) / h0
            dmax = torch.maximum(d1, d2)
            h1 = torch.where(dmax <= 1e-15, torch.clamp(h0 * 1e-3, min=1e-6),
                             (0.01 / dmax) ** (1.0 / order))
            return torch.minimum(100 * h0, h1).to(t0.dtype).clamp(max=ctrl.dtmax)

    def next_step(self, t: torch.Tensor, t_end: torch.Tensor, h: torch.Tensor,
                  direction: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Signed steps from ``t``, whether each ends on ``t_end``, and which underflowed."""
        last = direction * (t_end - t) <= h * (1 + SLACK)
        signed = torch.where(last, t_end - t, direction * h)
        under = (h < self.ctrl.dtmin) | (t + direction * h == t)
        return signed, last, under

    def ratio(self, err: torch.Tensor, y: torch.Tensor, y1: torch.Tensor) -> torch.Tensor:
        """Each sample's RMS of ``err / (atol + rtol * max(|y0|, |y1|))``, in float64."""
        with torch.no_grad():
            scale = torch.maximum(y.abs(), y1.abs()).mul_(self.ctrl.rtol).add_(self.ctrl.atol)
            return rms_rows(err / scale).to(torch.float64)

    def judge(self, r: torch.Tensor, h: torch.Tensor, prev_r: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(accepted, next |h|, prev_r)`` for ratios ``r`` of steps of signed sizes ``h``."""
        c = self.ctrl
        accepted = r <= 1.0
        raw = c.safety * r.clamp(min=1e-300) ** self._exponent * prev_r ** self._p_exponent
        factor = torch.where(r == 0, torch.full_like(r, c.factor_max), raw)
        low = c.factor_min if c.shrink_after_accept else 1.0
        factor = torch.where(accepted, factor.clamp(low, c.factor_max),
                             factor.clamp(c.factor_min, 1.0))
        h_next = (h.abs() * factor).clamp(max=c.dtmax)
        prev = torch.where(accepted, r.clamp(min=1e-10), prev_r)
        return accepted, h_next, prev

