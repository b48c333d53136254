"""Starting values for the Newton iterations of an ESDIRK step, from the previous step.

The previous accepted step (from ``t_p`` of size ``h_p``, stages ``K_p``) has a continuous
extension ``y(t_p + theta h_p) = y_p + h_p sum_j b_j(theta) K_p[j]``
(:mod:`~infdepth.ode._esdirk_dense`); extrapolated to the new step's stage times
``theta_i = 1 + c_i h / h_p`` it predicts every implicit stage ``Y_i`` (Hairer & Wanner,
Solving ODEs II, IV.8, do the same with Radau's collocation polynomial). Newton then starts
from ``Y_i`` instead of from the last slope, and needs fewer iterations; what it converges
to is set by the stage equation and Newton's tolerance, not by the start.

Used only after an accepted step, and only while ``h / h_p`` stays at most ``max_growth``
(an extrapolation far past the previous step is no better than the last slope).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from infdepth.ode._implicit_tableaus import ESDIRKTableau


class _Step(NamedTuple):
    h: float  # size
    y0: torch.Tensor  # state at its start
    stages: torch.Tensor  # (S, N) slopes, a copy
    y1: torch.Tensor  # state at its end: the next step starts from this very tensor


class StagePredictor:
    """Predicts the implicit stages of a step from the last accepted one (one solve's state)."""

    def __init__(self, tableau: ESDIRKTableau, max_growth: float, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.max_growth = max_growth
        self.c = tableau.c[1:]  # the implicit stages' nodes
        self.degree = len(tableau.dense_rows[0])
        self.dense_t = torch.tensor(tableau.dense_rows, dtype=dtype, device=device).T  # (D, S)
        self._last: _Step | None = None  # the last accepted step
        self._tried: _Step | None = None  # the last step computed, accepted or not

    def remember(self, h: float, y0: torch.Tensor, stages: torch.Tensor, y1: torch.Tensor) -> None:
        """A step was computed (``stages``: its ``(S, N)`` slopes, copied here)."""
        if self.max_growth > 0:
            self._tried = _Step(h, y0, stages.clone(), y1)

    def predict(self, y: torch.Tensor, h: float) -> list[torch.Tensor] | None:
        """The implicit stages ``Y_2 .. Y_S`` (flat) of a step of size ``h`` from ``y``, or
        ``None``: no accepted step ends at ``y``, or ``h`` grew past ``max_growth``."""
        tried, self._tried = self._tried, None
        if tried is not None and y is tried.y1:  # the step just computed was accepted
            self._last = tried
        last = self._last
        if last is None or y is not last.y1:
            return None
        ratio = h / last.h
        if not 0 < ratio <= self.max_growth:
            return None
        powers = []
        for c in self.c:
            theta = 1 + c * ratio
            row, p = [], 1.0
            for _ in range(self.degree):
                p *= theta
                row.append(p)
            powers.append(row)
        weights = torch.mm(torch.tensor(powers, dtype=y.dtype, device=y.device), self.dense_t)
        return list(torch.addmm(last.y0.reshape(1, -1), weights, last.stages,
                                alpha=last.h).unbind())
