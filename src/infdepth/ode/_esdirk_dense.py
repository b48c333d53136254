"""Dense output of the ESDIRK methods: continuous extensions derived from the order conditions.

A continuous extension of a Runge-Kutta method (Hairer, Norsett & Wanner, *Solving ODEs I*,
II.6) is a set of weight polynomials ``b_i(theta)`` such that

    y(t0 + theta h) ~ y0 + h sum_i b_i(theta) k_i

is of order ``q`` for every ``theta`` in ``[0, 1]``: for every rooted tree ``t`` with at most
``q`` vertices, ``sum_i b_i(theta) Phi_i(t) = theta^|t| / gamma(t)``, where ``Phi_i`` is the
tree's stage weight built from the full stage matrix (the diagonal ``gamma`` included). Those
conditions are linear in the polynomial coefficients; this module adds the Hermite conditions
``y(t1) = y1``, ``y'(t0) = k_1`` and optionally ``y'(t1) = k_s`` (the methods are stiffly
accurate, so ``k_s = f(t1, y1)``: a continuous derivative across steps), and optionally stiff
conditions (:func:`stage_defects`): on a stiff component that follows a slow solution ``g``,
the output is exact in the limit ``h lambda -> -inf`` for ``g`` a polynomial of degree up to
``stiff_degree``, where the non-stiff conditions alone leave an error ``O(h^3)`` (the stage
order is 2) of a size no order condition controls. Where freedom is left, it is spent on the
next order: the coefficients minimise the integral over ``[0, 1]`` of the squared residuals of
the order-``(q + 1)`` conditions (plus ``1e-3`` times their squared norm, which fixes
directions no condition sees).

Published interpolants for these methods are, to our knowledge, of lower order (Kennedy &
Carpenter's dense output for ARK4(3)6L is of order 3, Kvaerno's paper gives none; neither was
at hand to compare against); the cubic Hermite interpolant these replace is of order 3 with no
stage information inside the step.

Computed once at import from the tableau's numbers (a few small least-squares problems), and
stored in the tableau as plain numbers.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import reduce
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from infdepth.ode._implicit_tableaus import ESDIRKTableau

Tree = tuple["Tree", ...]
"""A rooted tree as the sorted tuple of its root's subtrees (``()`` is the single vertex)."""

REGULARISATION = 1e-3


def rooted_trees(n: int) -> list[Tree]:
    """All rooted trees with ``n`` vertices (1, 1, 2, 4, 9, 20 for n = 1..6)."""
    if n == 1:
        return [()]
    found: set[Tree] = set()
    for children in _forests(n - 1, n - 1):
        found.add(tuple(sorted(children)))
    return sorted(found)


def _forests(vertices: int, largest: int) -> Iterator[tuple[Tree, ...]]:
    """Multisets of trees with ``vertices`` vertices in all, none larger than ``largest``."""
    if vertices == 0:
        yield ()
        return
    for m in range(min(vertices, largest), 0, -1):
        for t in rooted_trees(m):
            for rest in _forests(vertices - m, m):
                yield (t, *rest)


def size(t: Tree) -> int:
    """Vertices of a tree."""
    return 1 + sum(size(u) for u in t)


def density(t: Tree) -> int:
    """The tree's density ``gamma(t)``: its order condition is ``b . Phi(t) = 1 / gamma(t)``."""
    return size(t) * reduce(lambda acc, u: acc * density(u), t, 1)


def stage_weights(t: Tree, a: np.ndarray) -> np.ndarray:
    """``Phi(t)`` per stage: the product over the root's subtrees ``u`` of ``a @ Phi(u)``."""
    out = np.ones(a.shape[0])
    for u in t:
        out = out * (a @ stage_weights(u, a))
    return out


def full_stage_matrix(tab: ESDIRKTableau) -> np.ndarray:
    """The ``(s, s)`` stage matrix: ``a`` below the diagonal, ``gamma`` on it (not at 0, 0)."""
    s = tab.stages
    a = np.zeros((s, s))
    for i, row in enumerate(tab.a):
        a[i + 1, : i + 1] = row
    a[1:, 1:] += tab.gamma * np.eye(s - 1)
    return a


def stage_defects(tab: ESDIRKTableau, m: int) -> np.ndarray:
    """The stiff-limit stage errors for a slow solution ``g(t) = t^m`` (``h = 1``, ``t0 = 0``).

    On ``y' = lambda (y - g(t)) + g'(t)`` (Prothero & Robinson) the stages miss ``g`` by
    ``E = (I - z A)^{-1} D`` with the defects ``D_i = g(0) - g(c_i) + sum_j a_ij g'(c_j)``
    (zero for ``m`` up to the stage order); as ``z -> -inf``, ``z E`` tends to
    ``-A_imp^{-1} D`` on the implicit stages (``A_imp`` the stage matrix without its first
    row and column), which the dense output adds as ``sum_i b_i(theta) z E_i``.
    """
    a = full_stage_matrix(tab)
    c = np.asarray(tab.c)
    defects = -(c**m) + m * (a @ c ** (m - 1))
    out = np.zeros(tab.stages)
    out[1:] = -np.linalg.solve(a[1:, 1:], defects[1:])
    return out


def continuous_extension(tab: ESDIRKTableau, order: int, degree: int, *,
                         end_slope: bool = True, stiff_degree: int = 0) -> np.ndarray:
    """Dense-output coefficients ``(s, degree)`` of order ``order`` (see the module docstring).

    ``end_slope``: impose ``y'(t1) = f(t1, y1)``; ``stiff_degree``: impose
    ``sum_i b_i(theta) v_i = 0`` for every ``theta`` for the limits ``v`` of
    :func:`stage_defects` of degrees ``1 .. stiff_degree`` (those up to the stage order are 0).

    Row ``i`` holds the coefficients of ``b_i(theta)`` in powers ``theta**1 .. theta**degree``
    (the layout of :attr:`~infdepth.ode._tableaus.ButcherTableau.dense`). Raises
    ``ValueError`` where the conditions have no solution of that degree.
    """
    a = full_stage_matrix(tab)
    s, d = tab.stages, degree
    rows: list[np.ndarray] = []
    rhs: list[float] = []

    def condition(i_stage: slice | int, d_cols: np.ndarray, weights: np.ndarray | float,
                  value: float) -> None:
        m = np.zeros((s, d))
        m[i_stage, d_cols] = weights
        rows.append(m.ravel())
        rhs.append(value)

    for n in range(1, order + 1):
        for t in rooted_trees(n):
            phi = stage_weights(t, a)
            for p in range(d):  # the coefficient of theta^(p + 1)
                condition(slice(None), np.array(p), phi, 1 / density(t) if p + 1 == n else 0.0)
    powers = np.arange(1, d + 1, dtype=np.float64)
    for i in range(s):
        condition(i, np.arange(d), 1.0, tab.b[i])  # y(t1) = y1
        condition(i, np.array(0), 1.0, float(i == 0))  # y'(t0) = k_1
        if end_slope:
            condition(i, np.arange(d), powers, float(i == s - 1))  # y'(t1) = k_s = f(t1, y1)
    for deg in range(1, stiff_degree + 1):
        defect = stage_defects(tab, deg)
        for p in range(d):
            condition(slice(None), np.array(p), defect, 0.0)
    m, r = np.array(rows), np.array(rhs)
    x0 = np.linalg.lstsq(m, r, rcond=None)[0]
    if np.abs(m @ x0 - r).max() > 1e-12:
        raise ValueError(f"no continuous extension of order {order} and degree {degree}")
    _, sv, vt = np.linalg.svd(m)
    rank = int((sv > 1e-10 * sv[0]).sum())
    null = vt[rank:].T
    if null.shape[1] == 0:
        return x0.reshape(s, d)
    # the next order's residual polynomials, in a basis where their squared norm on [0, 1]
    # is the plain sum of squares (the Cholesky factor of the Hilbert matrix)
    e = max(d, order + 1)
    hilbert = 1 / (np.arange(1, e + 1)[:, None] + np.arange(1, e + 1)[None, :] + 1)
    chol_t = np.linalg.cholesky(hilbert).T
    w_rows, w_rhs = [], []
    for t in rooted_trees(order + 1):
        phi = stage_weights(t, a)
        g = np.zeros((e, s * d))
        for p in range(d):
            g[p, np.arange(s) * d + p] = phi
        target = np.zeros(e)
        target[order] = 1 / density(t)
        w_rows.append(chol_t @ g)
        w_rhs.append(chol_t @ target)
    w, wr = np.vstack(w_rows), np.concatenate(w_rhs)
    lhs = np.vstack([w @ null, REGULARISATION * null])
    target = np.concatenate([wr - w @ x0, -REGULARISATION * x0])
    z = np.linalg.lstsq(lhs, target, rcond=None)[0]
    return (x0 + null @ z).reshape(s, d)
