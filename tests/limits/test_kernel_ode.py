"""The kernel ODEs solved by the library's odeint against scipy; scikit-learn imported lazily."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from infdepth.limits import InfiniteDepthKernel, diagonal_kernels, infinite_kernels, pair_moments

D = torch.float64


def _scipy_kernels(x: torch.Tensor, y: torch.Tensor, activation: str, t1: float,
                   sigma_b: float) -> tuple[np.ndarray, np.ndarray]:
    """``(K_t1, T_t1)`` of the module's ODEs by DOP853 at tolerance 1e-12 (moments shared)."""
    m1, m2, d = x.shape[0], y.shape[0], x.shape[1]
    sizes = [m1, m2, m1 * m2, m1 * m2]
    sb2 = sigma_b**2

    def rhs(_t: float, z: np.ndarray) -> np.ndarray:
        da, db, k, tk = (torch.as_tensor(p) for p in np.split(z, np.cumsum(sizes)[:-1]))
        k, tk = k.view(m1, m2), tk.view(m1, m2)
        e_aa, _ = pair_moments(activation, da, da, da)
        e_bb, _ = pair_moments(activation, db, db, db)
        e_ab, e_d = pair_moments(activation, da.view(-1, 1), db.view(1, -1), k)
        parts = [sb2 + e_aa, sb2 + e_bb, sb2 + e_ab, sb2 + e_ab + e_d * tk]
        return torch.cat([p.reshape(-1) for p in parts]).numpy()

    k0 = (x @ y.T / d).reshape(-1)
    z0 = torch.cat([(x * x).sum(1) / d, (y * y).sum(1) / d, k0, k0]).numpy()
    sol = solve_ivp(rhs, (0.0, t1), z0, method="DOP853", rtol=1e-12, atol=1e-12)
    assert sol.success
    z1 = sol.y[:, -1]
    k1 = z1[m1 + m2 : m1 + m2 + m1 * m2].reshape(m1, m2)
    return k1, z1[m1 + m2 + m1 * m2 :].reshape(m1, m2)


@pytest.mark.parametrize(("activation", "sigma_b"), [("relu", 0.0), ("tanh", 0.5)])
def test_kernel_ode_matches_scipy_dop853(activation: str, sigma_b: float) -> None:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 4, dtype=D, generator=g)
    y = 1.5 * torch.randn(2, 4, dtype=D, generator=g)
    t1 = 1.5
    k_ref, t_ref = _scipy_kernels(x, y, activation, t1, sigma_b)
    kp = infinite_kernels(x, y, activation=activation, t1=t1, sigma_b=sigma_b, steps=64)
    np.testing.assert_allclose(kp.nngp.numpy(), k_ref, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(kp.ntk.numpy(), k_ref + t_ref, rtol=1e-8, atol=1e-10)
    # the diagonal path: the same ODE per input, by its own integrator call
    kx, tx = _scipy_kernels(x, x, activation, t1, sigma_b)
    kd, td = diagonal_kernels((x * x).sum(1) / 4, activation=activation, t1=t1,
                              sigma_b=sigma_b, steps=64)
    np.testing.assert_allclose(kd.numpy(), np.diag(kx), rtol=1e-8)
    np.testing.assert_allclose(td.numpy(), np.diag(tx), rtol=1e-8)


def test_import_infdepth_does_not_import_sklearn() -> None:
    code = ("import sys, infdepth, infdepth.limits, infdepth.limits.kernels; "
            "assert 'sklearn' not in sys.modules, sorted(m for m in sys.modules if 'sklearn' in m)"
            "; k = infdepth.InfiniteDepthKernel(); assert 'sklearn' in sys.modules")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=False)
    assert run.returncode == 0, run.stderr


def test_lazy_kernel_class_is_an_sklearn_kernel() -> None:
    from sklearn.base import clone
    from sklearn.gaussian_process.kernels import Kernel

    from infdepth.limits.kernels import InfiniteDepthKernel as OldHome

    assert OldHome is InfiniteDepthKernel
    kern = InfiniteDepthKernel(activation="tanh", t1=0.5, kind="nngp", steps=4)
    assert isinstance(kern, InfiniteDepthKernel) and isinstance(kern, Kernel)
    assert type(kern) is type(InfiniteDepthKernel())  # one subclass, built once
    assert repr(kern).startswith("InfiniteDepthKernel(activation='tanh', t1=0.5")
    x = np.random.default_rng(1).standard_normal((5, 2))
    for other in (clone(kern), pickle.loads(pickle.dumps(kern))):
        assert other == kern and type(other) is type(kern)
        np.testing.assert_array_equal(other(x), kern(x))
    np.testing.assert_allclose((kern + 2.0 * kern)(x), 3.0 * kern(x), rtol=1e-14)
