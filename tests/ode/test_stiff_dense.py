"""Dense output of the ESDIRK solvers: the order-4 continuous extensions of KenCarp4/Kvaerno5.

Checked against the order conditions written out here tree by tree (independently of the tree
enumeration that derives the coefficients), against an analytic solution (the interpolant's
measured order), and against scipy's Radau at output times inside steps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from infdepth.ode import ESDIRK, TRBDF2, KenCarp4, Kvaerno5, odeint
from infdepth.ode._esdirk_dense import continuous_extension, density, rooted_trees
from infdepth.ode._implicit_tableaus import ESDIRKTableau
from infdepth.ode._interp import dense_eval
from infdepth.ode._stepping import Stats, rk_step, stage_times

D = torch.float64
EXTENDED: list[type[ESDIRK]] = [KenCarp4, Kvaerno5]


def _full_a(tab: ESDIRKTableau) -> np.ndarray:
    s = tab.stages
    a = np.zeros((s, s))
    for i, row in enumerate(tab.a):
        a[i + 1, : i + 1] = row
    a[1:, 1:] += tab.gamma * np.eye(s - 1)
    return a


def _weights(tab: ESDIRKTableau, theta: float) -> np.ndarray:
    """``b_i(theta)`` from the tableau's dense rows."""
    dense = np.asarray(tab.dense_rows)
    return dense @ theta ** np.arange(1, dense.shape[1] + 1)


def _slopes(tab: ESDIRKTableau, theta: float) -> np.ndarray:
    """``b_i'(theta)``."""
    dense = np.asarray(tab.dense_rows)
    p = np.arange(1, dense.shape[1] + 1)
    return dense @ (p * theta ** (p - 1.0))


@pytest.mark.parametrize("solver_cls", EXTENDED)
def test_dense_weights_meet_the_order_4_conditions_and_the_end_conditions(
        solver_cls: type[ESDIRK]) -> None:
    tab = solver_cls.tableau
    a, c = _full_a(tab), np.asarray(tab.c)
    ac = a @ c
    for theta in (0.1, 0.37, 0.5, 0.81, 1.0):
        b = _weights(tab, theta)
        # the 8 trees of order <= 4: b.1, b.c, b.c^2, b.Ac, b.c^3, b.(c*Ac), b.Ac^2, b.AAc
        got = [b.sum(), b @ c, b @ c**2, b @ ac, b @ c**3, b @ (c * ac), b @ a @ c**2,
               b @ a @ ac]
        want = [theta, theta**2 / 2, theta**3 / 3, theta**3 / 6, theta**4 / 4, theta**4 / 8,
                theta**4 / 12, theta**4 / 24]
        assert np.allclose(got, want, rtol=0, atol=1e-14), (theta, np.subtract(got, want))
        # not of order 5 inside the step (no such extension exists): b.c^4 misses theta^5 / 5
        if theta == 0.5:
            assert abs(b @ c**4 - theta**5 / 5) > 1e-5
    assert np.allclose(_weights(tab, 1.0), tab.b, rtol=0, atol=2e-14)  # y(t1) = y1
    e_first, e_last = np.eye(tab.stages)[0], np.eye(tab.stages)[-1]
    assert np.allclose(_slopes(tab, 0.0), e_first, rtol=0, atol=1e-14)  # y'(t0) = f(t0, y0)
    # y'(t1) = f(t1, y1): KenCarp4; Kvaerno5 gives it up for its stiff conditions
    assert np.allclose(_slopes(tab, 1.0), e_last, rtol=0, atol=1e-13) == (
        solver_cls is KenCarp4)


def _prothero_robinson_dense_error(solver: ESDIRK, lam: float, h: float) -> float:
    """One step of ``y' = lam (y - g) + g'``, ``g(t) = t^3 - t^2``, from ``y(0.5) = g(0.5)``:
    the largest dense-output error inside it (the exact solution is ``g``)."""
    def g(t: torch.Tensor) -> torch.Tensor:
        return t**3 - t**2

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return lam * (y - g(t)) + 3 * t**2 - 2 * t

    t0 = torch.tensor(0.5, dtype=D)
    y0 = g(t0).reshape(1)
    tabs = solver.tensors(D, torch.device("cpu"))
    tabs.workspace.bind_tolerances(1e-14, 1e-14)
    _, k, _ = rk_step(f, t0, h, y0, f(t0, y0), solver, tabs, stage_times(solver, tabs, y0),
                      Stats(), None)
    thetas = torch.linspace(0.1, 0.9, 9, dtype=D)
    ys = dense_eval(thetas, y0, torch.tensor(h, dtype=D), k, tabs.dense, None)[:, 0]
    return float((ys - g(t0 + thetas * h)).abs().max())


@pytest.mark.parametrize("lam", [-1e5, -1e8])
def test_kvaerno5_dense_output_follows_a_slow_cubic_in_the_stiff_limit(lam: float) -> None:
    """Prothero & Robinson's problem, a stiff component on a slow cubic: Kvaerno5's output
    is exact up to O(1 / (h lam)) (measured 3.1e-7 and 3.1e-10); KenCarp4's, of stage order 2
    with no stiff condition, is off by O(h^3) (measured 7.5e-4)."""
    kv5 = _prothero_robinson_dense_error(Kvaerno5(), lam, 0.4)
    kc4 = _prothero_robinson_dense_error(KenCarp4(), lam, 0.4)
    assert kv5 < 0.1 / abs(lam), kv5
    assert kc4 > 1e-4, kc4


def test_tree_enumeration() -> None:
    assert [len(rooted_trees(n)) for n in range(1, 7)] == [1, 1, 2, 4, 9, 20]
    assert sorted(density(t) for t in rooted_trees(4)) == [4, 8, 12, 24]
    assert sum(1 / density(t) for t in rooted_trees(5)) == pytest.approx(
        sum([1 / 5, 1 / 10, 1 / 15, 1 / 30, 1 / 20, 1 / 20, 1 / 40, 1 / 60, 1 / 120]))


def test_no_order_5_extension_for_kvaerno5() -> None:
    with pytest.raises(ValueError, match="no continuous extension of order 5"):
        continuous_extension(Kvaerno5.tableau, 5, 6)


def _one_step_dense_errors(solver: ESDIRK, h: float, thetas: np.ndarray) -> np.ndarray:
    """One step of ``y' = 1 + y^2`` from ``y(0.3) = tan(0.3)``: dense-output errors."""
    f = lambda t, y: 1 + y**2  # noqa: E731
    t0 = torch.tensor(0.3, dtype=D)
    y0 = torch.tan(t0).reshape(1)
    tabs = solver.tensors(D, torch.device("cpu"))
    tabs.workspace.bind_tolerances(1e-15, 1e-15)
    k1 = f(t0, y0)
    _, k, _ = rk_step(f, t0, h, y0, k1, solver, tabs, stage_times(solver, tabs, y0), Stats(),
                      None)
    ys = dense_eval(torch.tensor(thetas, dtype=D), y0, torch.tensor(h, dtype=D), k, tabs.dense,
                    None)
    return np.abs(ys[:, 0].numpy() - np.tan(0.3 + thetas * h))


@pytest.mark.parametrize("solver_cls", EXTENDED)
def test_interpolant_converges_at_order_4(solver_cls: type[ESDIRK]) -> None:
    """Local error inside the step ~ h^5 (order 4); the cubic Hermite one was ~ h^4."""
    solver = solver_cls(max_newton_iters=30, newton_kappa=1e-3)
    thetas = np.array([0.2, 0.45, 0.7, 0.9])
    hs = np.array([0.08, 0.04, 0.02])
    errs = np.array([_one_step_dense_errors(solver, h, thetas).max() for h in hs])
    slope = float(np.polyfit(np.log(hs), np.log(errs), 1)[0])
    assert 4.7 < slope < 5.4, (slope, errs)


# Robertson's kinetics: log-spaced outputs, nearly all of them inside steps (dense output)
def _robertson(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    y1, y2, y3 = y.unbind(-1)
    return torch.stack([-0.04 * y1 + 1e4 * y2 * y3, 0.04 * y1 - 1e4 * y2 * y3 - 3e7 * y2**2,
                        3e7 * y2**2], dim=-1)


def _robertson_np(t: float, y: np.ndarray) -> np.ndarray:
    return np.array([-0.04 * y[0] + 1e4 * y[1] * y[2],
                     0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2, 3e7 * y[1] ** 2])


@pytest.mark.parametrize(("solver_cls", "bound"), [(KenCarp4, 9.0), (Kvaerno5, 12.0),
                                                   (TRBDF2, 80.0)])
def test_robertson_outputs_inside_steps(solver_cls: type[ESDIRK], bound: float) -> None:
    """The largest scaled error over the outputs (inside steps) against Radau at 1e-12.

    Measured at rtol 1e-6, atol 1e-10: KenCarp4 7.25 (13.7 with the cubic Hermite output),
    Kvaerno5 10.2 (8.49 with the integral step control; 45.8), TRBDF2 71.2 (cubic Hermite);
    scipy's own Radau 0.24, BDF 6.2.
    """
    t = np.concatenate([[0.0], np.logspace(-5, 5, 11)])
    ref = solve_ivp(_robertson_np, (0, t[-1]), [1, 0, 0], method="Radau", t_eval=t,
                    rtol=1e-12, atol=1e-14).y.T
    y = odeint(_robertson, torch.tensor([1.0, 0.0, 0.0], dtype=D), torch.tensor(t, dtype=D),
               solver=solver_cls(), rtol=1e-6, atol=1e-10).numpy()
    scaled = np.abs(y - ref) / (1e-10 + 1e-6 * np.abs(ref))
    assert scaled.max() < bound, scaled.max(axis=1)
