"""Closed-form laws of the depth limit, as frozen ``scipy.stats`` distributions.

Our derivations (docs/limits.md, section "Derivations"); the papers state that two such
closed forms exist (Hayou, 2023) but the formulas below are derived and tested here.
All refer to ``dX_t = sigma_w n^{-1/2} ||phi(X_t)|| dB_t`` (Hayou's scaling, ``sigma_w = 1``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from torch import Tensor

from infdepth.errors import check_float, check_int, raise_input
from infdepth.limits._activation import Activation

if TYPE_CHECKING:  # scipy.stats costs ~0.8 s to import: loaded by the laws that return one
    from scipy import stats


def linear_norm_law(width: int, t: float, x0_norm: float = 1.0, *,
                    sigma_w: float = 1.0) -> stats.rv_continuous:
    """Law of ``||X_t||`` for the linear activation: log-normal.

    ``log ||X_t|| ~ Normal(log ||X_0|| + (1/2 - 1/n) sigma_w^2 t, sigma_w^2 t / n)``.
    """
    n = check_int("width", width, low=1)
    t = check_float("t", t, low=0.0, strict=True)
    x0_norm = check_float("x0_norm", x0_norm, low=0.0, strict=True)
    sigma_w = check_float("sigma_w", sigma_w, low=0.0, strict=True)
    var = sigma_w**2 * t / n
    mean = math.log(x0_norm) + (0.5 - 1.0 / n) * sigma_w**2 * t
    from scipy import stats

    return stats.lognorm(s=math.sqrt(var), scale=math.exp(mean))


def relu_width1_law(t: float, x0: float = 1.0, *, sigma_w: float = 1.0) -> stats.rv_continuous:
    """Law of ``X_t`` for ReLU and width 1 from ``x0 > 0``: ``x0 exp(sigma_w B_t - sigma_w^2 t/2)``.

    From ``x0 <= 0`` the process is frozen (``X_t = x0``), which is not a continuous law: such
    an ``x0`` raises :class:`~infdepth.errors.InputError`.
    """
    t = check_float("t", t, low=0.0, strict=True)
    x0 = check_float("x0", x0)
    sigma_w = check_float("sigma_w", sigma_w, low=0.0, strict=True)
    if x0 <= 0:
        raise_input("x0", repr(x0), "x0 > 0 (from x0 <= 0 the ReLU diffusion stays at x0)")
    from scipy import stats

    return stats.lognorm(s=sigma_w * math.sqrt(t), scale=x0 * math.exp(-0.5 * sigma_w**2 * t))


def relu_log_post_norm_drift(width: int, active: int | np.ndarray) -> float | np.ndarray:
    """Drift of ``log ||phi(X_t)||^2`` for ReLU with ``k`` active coordinates: ``(k - 2) / n``.

    Exact (Ito) for the Hayou diffusion; its diffusion coefficient is ``2 n^{-1/2}``.
    """
    n = check_int("width", width, low=1)
    return (np.asarray(active, dtype=float) - 2.0) / n if isinstance(active, np.ndarray) \
        else (float(active) - 2.0) / n


def expected_active_given_alive(width: int) -> float:
    """``E[k_0 | k_0 >= 1]`` for ``X_0`` with i.i.d. symmetric continuous coordinates.

    ``k_0 ~ Binomial(n, 1/2)``, so this is ``(n/2) / (1 - 2^{-n})``; the initial drift of
    ``E[log ||phi(X_t)||^2 | phi(X_0) != 0]`` is ``(this - 2)/n``: negative for ``n <= 3``,
    positive for ``n >= 4``.
    """
    n = check_int("width", width, low=1)
    return (n / 2.0) / (1.0 - 2.0**-n)


def infinite_width_law(activation: str | Callable[[Tensor], Tensor] | Activation, t: float,
                       q0: float = 1.0, *, steps: int = 256) -> stats.rv_continuous:
    """Gaussian law of one coordinate in the width-then-depth limit: ``Normal(0, q_t)``.

    ``q_t`` solves ``dq/dt = E[phi(sqrt(q) Z)^2]`` from ``q0`` (RK4; exact for linear, ReLU).
    """
    from infdepth.limits.kernels import variance_ode

    q = variance_ode(activation, t, q0, steps=steps)
    from scipy import stats

    return stats.norm(loc=0.0, scale=math.sqrt(q))
