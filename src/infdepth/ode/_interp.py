"""Dense output: the state anywhere inside an accepted step, at the method's order."""

from __future__ import annotations

import torch


def dense_eval(
    theta: torch.Tensor,
    y0: torch.Tensor,
    h: torch.Tensor,
    k: torch.Tensor,
    dense: torch.Tensor,
    rows: torch.Tensor | None,
) -> torch.Tensor:
    """Evaluate ``y(t0 + theta * h) = y0 + h * sum_i b_i(theta) k_i`` for several ``theta``.

    Args:
        theta: ``(m,)`` fractions of the step, in ``[0, 1]``.
        y0: state at the start of the step, shape ``(B, *feat)`` or any shape.
        h: the step size, a 0-dim tensor in the state's dtype.
        k: stages (plus ``f(t1, y1)`` for a Hermite interpolant), ``(rows, *y0.shape)``.
        dense: ``(rows, degree)`` coefficients of ``b_i`` in powers ``theta**1..``.
        rows: ``None`` to return the whole state at each theta, shape ``(m, *y0.shape)``;
            else ``(m,)`` sample indices: output ``j`` is sample ``rows[j]`` at
            ``theta[j]``, shape ``(m, *feat)``.
    """
    degree = dense.shape[1]
    powers = theta.to(dense.dtype).unsqueeze(1).expand(-1, degree).cumprod(1)
    weights = powers @ dense.T  # (m, rows_k)
    if rows is None:
        kf = k.reshape(k.shape[0], -1)
        out = y0.reshape(1, -1) + h * (weights @ kf)
        return out.reshape(theta.shape[0], *y0.shape)
    feat = y0.shape[1:]
    kb = k[:, rows].reshape(k.shape[0], rows.shape[0], -1)  # (rows_k, m, F)
    mixed = torch.einsum("mr,rmf->mf", weights, kb)
    out = y0[rows].reshape(rows.shape[0], -1) + h * mixed
    return out.reshape(rows.shape[0], *feat)
