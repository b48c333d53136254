"""Kernels of doubly infinite ResNets (depth, then width) by integrating their ODEs.

With width to infinity after depth, the coordinates of the diffusion decouple and the
covariance of two inputs solves (derived here, see docs/limits.md)

    dK_t(a, b)/dt = sigma_b^2 + sigma_w^2 E[phi(U) phi(V)],
    dT_t(a, b)/dt = sigma_b^2 + sigma_w^2 (E[phi(U) phi(V)] + E[phi'(U) phi'(V)] T_t(a, b)),

``(U, V) ~ N(0, K_t on {a, b})``, ``K_0 = T_0 = x_a . x_b / d`` (input layer ``N(0, 1/d)``).
With a linear read-out ``f = v . X_t1 / sqrt(n)``, the NNGP (read-out trained only) is
``K_t1`` and the NTK (all layers trained) is ``K_t1 + T_t1``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from sklearn.gaussian_process.kernels import Kernel
from torch import Tensor

from infdepth.limits._activation import (
    Activation,
    check_finite,
    check_int,
    check_tensor_finite,
    raise_input,
    resolve_activation,
)

ActivationLike = str | Callable[[Tensor], Tensor] | Activation


@lru_cache(maxsize=8)
def _hermite(order: int) -> tuple[np.ndarray, np.ndarray]:
    z, w = np.polynomial.hermite_e.hermegauss(order)
    return z, w / w.sum()


def pair_moments(activation: ActivationLike, kaa: Tensor, kbb: Tensor, kab: Tensor, *,
                 order: int = 32, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """``E[phi(U) phi(V)]`` and ``E[phi'(U) phi'(V)]`` for ``(U, V) ~ N(0, [[kaa, kab], [kab, kbb]])``.

    Closed forms for linear and ReLU (the arc-cosine kernel); Gauss-Hermite quadrature with
    ``order^2`` nodes otherwise. Arguments broadcast; the result has their common shape.
    """
    phi = resolve_activation(activation)
    kaa, kbb, kab = torch.broadcast_tensors(kaa, kbb, kab)
    if phi.name == "linear" and phi.homogeneous:
        return kab.clone(), torch.ones_like(kab)
    norm = torch.sqrt(kaa * kbb).clamp_min(torch.finfo(kab.dtype).tiny)
    rho = (kab / norm).clamp(-1.0, 1.0)
    if phi.name == "relu" and phi.homogeneous:
        theta = torch.arccos(rho)
        e_phi = norm / (2 * math.pi) * (torch.sin(theta) + (math.pi - theta) * rho)
        return e_phi, (math.pi - theta) / (2 * math.pi)
    z_np, w_np = _hermite(order)
    z = torch.as_tensor(z_np, dtype=kab.dtype, device=kab.device)
    w = torch.as_tensor(w_np, dtype=kab.dtype, device=kab.device)
    z1, z2 = z.view(-1, 1), z.view(1, -1)
    ww = (w.view(-1, 1) * w.view(1, -1)).reshape(-1)
    sa, sb = kaa.sqrt().reshape(-1, 1), kbb.sqrt().reshape(-1, 1)
    r, c = rho.reshape(-1, 1), torch.sqrt((1 - rho * rho).clamp_min(0)).reshape(-1, 1)
    out_phi, out_dphi = [], []
    zz1 = z1.expand(order, order).reshape(1, -1)
    zz2 = z2.expand(order, order).reshape(1, -1)
    for i in range(0, r.shape[0], chunk):
        sl = slice(i, i + chunk)
        u = sa[sl] * zz1
        v = sb[sl] * (r[sl] * zz1 + c[sl] * zz2)
        out_phi.append((phi(u) * phi(v)) @ ww)
        out_dphi.append((phi.grad(u) * phi.grad(v)) @ ww)
    shape = kab.shape
    return torch.cat(out_phi).reshape(shape), torch.cat(out_dphi).reshape(shape)


def variance_ode(activation: ActivationLike, t1: float, q0: float = 1.0, *,
                 sigma_b: float = 0.0, sigma_w: float = 1.0, steps: int = 256) -> float:
    """``q_t1`` for ``dq/dt = sigma_b^2 + sigma_w^2 E[phi(sqrt(q) Z)^2]``, ``q_0 = q0`` (RK4)."""
    q = torch.tensor([float(check_finite("q0", q0, positive=True))], dtype=torch.float64)
    k = _integrate(resolve_activation(activation), q, q, q.view(1, 1), t1, steps,
                   sigma_b, sigma_w)[2]
    return float(k[0, 0])


def _rhs(phi: Activation, state: tuple[Tensor, Tensor, Tensor, Tensor], sb2: float, sw2: float
         ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    da, db, kab, tab = state
    e_aa, _ = pair_moments(phi, da, da, da)
    e_bb, _ = pair_moments(phi, db, db, db)
    e_ab, e_d = pair_moments(phi, da.view(-1, 1), db.view(1, -1), kab)
    return sb2 + sw2 * e_aa, sb2 + sw2 * e_bb, sb2 + sw2 * e_ab, sb2 + sw2 * (e_ab + e_d * tab)


def _integrate(phi: Activation, da: Tensor, db: Tensor, kab: Tensor, t1: float, steps: int,
               sigma_b: float, sigma_w: float, tab: Tensor | None = None
               ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """RK4 for ``(K_aa, K_bb, K_ab, T_ab)`` over ``[0, t1]``; ``T_ab`` starts at ``K_ab`` by default."""
    t1 = check_finite("t1", t1, positive=True)
    steps = check_int("steps", steps)
    sb2 = check_finite("sigma_b", sigma_b, nonnegative=True) ** 2
    sw2 = check_finite("sigma_w", sigma_w, nonnegative=True) ** 2
    h = t1 / steps
    state = (da, db, kab, kab.clone() if tab is None else tab)

    def shift(slope: tuple[Tensor, ...], c: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        a, b, k, t = (x + c * s for x, s in zip(state, slope, strict=True))
        return a, b, k, t

    for _ in range(steps):
        k1 = _rhs(phi, state, sb2, sw2)
        k2 = _rhs(phi, shift(k1, h / 2), sb2, sw2)
        k3 = _rhs(phi, shift(k2, h / 2), sb2, sw2)
        k4 = _rhs(phi, shift(k3, h), sb2, sw2)
        slope = tuple((a + 2 * b + 2 * c + d) / 6 for a, b, c, d in zip(k1, k2, k3, k4, strict=True))
        state = shift(slope, h)
    return state


@dataclass(frozen=True)
class KernelState:
    """State of the kernel ODEs at time ``t`` between inputs ``a`` (rows) and ``b`` (columns).

    ``kaa`` and ``kbb`` are the variances ``K_t(a, a)``, ``K_t(b, b)``; ``kab`` is ``K_t(a, b)``
    and ``tab`` the hidden-layer tangent kernel ``T_t(a, b)``.
    """

    t: float
    kaa: Tensor
    kbb: Tensor
    kab: Tensor
    tab: Tensor

    @classmethod
    def initial(cls, x1: Tensor | np.ndarray, x2: Tensor | np.ndarray | None = None
                ) -> KernelState:
        """``K_0 = T_0 = x_a . x_b / d`` (input layer with N(0, 1/d) weights)."""
        a = _as_inputs("x1", x1)
        b = a if x2 is None else _as_inputs("x2", x2).to(a.dtype)
        if b.shape[1] != a.shape[1]:
            raise_input("x2", f"{b.shape[1]} features", f"{a.shape[1]} features like x1")
        d = a.shape[1]
        k0 = a @ b.T / d
        return cls(0.0, (a * a).sum(1) / d, (b * b).sum(1) / d, k0, k0.clone())

    def evolve(self, dt: float, *, activation: ActivationLike = "relu", sigma_b: float = 0.0,
               sigma_w: float = 1.0, steps: int = 16) -> KernelState:
        """Integrate the ODEs ``dt`` further with ``steps`` RK4 steps."""
        kaa, kbb, kab, tab = _integrate(resolve_activation(activation), self.kaa, self.kbb,
                                        self.kab, dt, steps, sigma_b, sigma_w, self.tab)
        return KernelState(self.t + dt, kaa, kbb, kab, tab)

    @property
    def correlation(self) -> Tensor:
        """``K_t(a, b) / sqrt(K_t(a, a) K_t(b, b))``."""
        return self.kab / torch.sqrt(self.kaa.view(-1, 1) * self.kbb.view(1, -1))


def diagonal_kernels(q0: Tensor, *, activation: ActivationLike = "relu", t1: float = 1.0,
                     sigma_b: float = 0.0, sigma_w: float = 1.0, steps: int = 64,
                     ntk: bool = True) -> tuple[Tensor, Tensor]:
    """``(K_t1(a, a), T_t1(a, a))`` from ``K_0(a, a) = q0`` for every entry of ``q0`` (RK4)."""
    phi = resolve_activation(activation)
    t1 = check_finite("t1", t1, positive=True)
    steps = check_int("steps", steps)
    sb2 = check_finite("sigma_b", sigma_b, nonnegative=True) ** 2
    sw2 = check_finite("sigma_w", sigma_w, nonnegative=True) ** 2
    check_tensor_finite("q0", q0)

    def rhs(q: Tensor, tq: Tensor) -> tuple[Tensor, Tensor]:
        e, e_d = pair_moments(phi, q, q, q)
        return sb2 + sw2 * e, sb2 + sw2 * (e + e_d * tq)

    h = t1 / steps
    q, tq = q0.clone(), q0.clone()
    for _ in range(steps):
        a1, b1 = rhs(q, tq)
        a2, b2 = rhs(q + h / 2 * a1, tq + h / 2 * b1)
        a3, b3 = rhs(q + h / 2 * a2, tq + h / 2 * b2)
        a4, b4 = rhs(q + h * a3, tq + h * b3)
        q = q + h / 6 * (a1 + 2 * a2 + 2 * a3 + a4)
        tq = tq + h / 6 * (b1 + 2 * b2 + 2 * b3 + b4)
    return q, (tq if ntk else q)


@dataclass(frozen=True)
class KernelPair:
    """Infinite depth-and-width kernels between two sets of inputs.

    ``nngp`` is ``K_t1`` (Gaussian-process prior / read-out-only training), ``ntk`` is
    ``K_t1 + T_t1`` (gradient descent on all layers), both ``(m1, m2)``.
    """

    nngp: Tensor
    ntk: Tensor


def _as_inputs(name: str, x: Tensor | np.ndarray) -> Tensor:
    t = torch.as_tensor(x)
    if not torch.is_floating_point(t):
        t = t.to(torch.float64)
    if t.ndim != 2 or t.shape[1] < 1:
        raise_input(name, f"shape {tuple(t.shape)}", "a 2-d array (inputs, features)")
    check_tensor_finite(name, t)
    return t


def infinite_kernels(x1: Tensor | np.ndarray, x2: Tensor | np.ndarray | None = None, *,
                     activation: ActivationLike = "relu", t1: float = 1.0,
                     sigma_b: float = 0.0, sigma_w: float = 1.0, steps: int = 64,
                     ntk: bool = True) -> KernelPair:
    """NNGP and NTK of the doubly infinite ResNet between the rows of ``x1`` and ``x2``.

    Integrates the ODEs of the module docstring with ``steps`` RK4 steps on ``[0, t1]``.
    ``sigma_b = 0, sigma_w = 1`` is Hayou's scaling; ``sigma_b > 0`` adds the shrinking bias
    of Peluchetti & Favaro. With ``ntk=False`` the returned ``ntk`` equals ``nngp``.
    """
    state = KernelState.initial(x1, x2).evolve(t1, activation=activation, sigma_b=sigma_b,
                                               sigma_w=sigma_w, steps=steps)
    k, tk = state.kab, state.tab
    if x2 is None:  # quadrature is not exactly symmetric in (a, b)
        k, tk = (k + k.T) / 2, (tk + tk.T) / 2
    return KernelPair(k, k + tk if ntk else k)


def kernel_regression(k_train: Tensor, y_train: Tensor, k_test_train: Tensor, *,
                      ridge: float = 0.0) -> Tensor:
    """Kernel (ridge) regression mean ``k(x, X) (K + ridge I)^{-1} y``; ridge 0 interpolates."""
    ridge = check_finite("ridge", ridge, nonnegative=True)
    kk = k_train + ridge * torch.eye(k_train.shape[0], dtype=k_train.dtype, device=k_train.device)
    return k_test_train @ torch.linalg.solve(kk, y_train)


def gradient_descent_prediction(k_train: Tensor, y_train: Tensor, k_test_train: Tensor, *,
                                lr: float, steps: int) -> Tensor:
    """Prediction of a linearised model after ``steps`` of full-batch gradient descent.

    Loss ``1/2 sum (f(X) - y)^2``, zero initial output, learning rate ``lr``: the residual on
    the training set is ``(I - lr K)^steps y`` and the test output
    ``k(x, X) K^{-1} (I - (I - lr K)^steps) y``; as ``steps`` grows it becomes
    :func:`kernel_regression` with no ridge.
    """
    evals, evecs = torch.linalg.eigh(k_train)
    evals = evals.clamp_min(0)
    decay = 1 - (1 - lr * evals) ** steps
    gain = torch.where(evals > 0, decay / evals.clamp_min(1e-300), lr * steps)
    return k_test_train @ (evecs @ (gain.unsqueeze(-1) * (evecs.T @ y_train)))


def gp_posterior(k_train: Tensor, y_train: Tensor, k_test_train: Tensor, k_test_diag: Tensor,
                 *, noise: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Gaussian-process posterior mean and variance with observation noise variance ``noise``."""
    noise = check_finite("noise", noise, nonnegative=True)
    kk = k_train + noise * torch.eye(k_train.shape[0], dtype=k_train.dtype, device=k_train.device)
    chol = torch.linalg.cholesky(kk)
    alpha = torch.cholesky_solve(y_train.reshape(k_train.shape[0], -1), chol)
    mean = (k_test_train @ alpha).reshape(k_test_train.shape[:1] + y_train.shape[1:])
    v = torch.cholesky_solve(k_test_train.T, chol)
    var = k_test_diag - (k_test_train * v.T).sum(1)
    return mean, var.clamp_min(0)


class InfiniteDepthKernel(Kernel):
    """scikit-learn kernel of the doubly infinite ResNet (``kind="nngp"`` or ``"ntk"``).

    Usable with ``GaussianProcessRegressor``, ``KernelRidge(kernel=...)``, ``SVC`` and the
    kernel algebra of :mod:`sklearn.gaussian_process.kernels`. It has no tunable
    hyperparameters (a GP fit therefore does not optimise it).
    """

    def __init__(self, activation: ActivationLike = "relu", t1: float = 1.0,
                 kind: str = "ntk", sigma_b: float = 0.0, sigma_w: float = 1.0,
                 steps: int = 64) -> None:
        self.activation = activation
        self.t1 = t1
        self.kind = kind
        self.sigma_b = sigma_b
        self.sigma_w = sigma_w
        self.steps = steps

    def _pair(self, x: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        from infdepth.errors import check_choice

        check_choice("kind", self.kind, ("nngp", "ntk"))
        kp = infinite_kernels(np.asarray(x, dtype=np.float64),
                              None if y is None else np.asarray(y, dtype=np.float64),
                              activation=self.activation, t1=self.t1, sigma_b=self.sigma_b,
                              sigma_w=self.sigma_w, steps=self.steps, ntk=self.kind == "ntk")
        out = kp.ntk if self.kind == "ntk" else kp.nngp
        return out.detach().cpu().numpy()

    def __call__(self, X: np.ndarray, Y: np.ndarray | None = None,
                 eval_gradient: bool = False) -> Any:
        k = self._pair(X, Y)
        if eval_gradient:
            if Y is not None:
                raise ValueError("gradient can only be evaluated when Y is None")
            return k, np.empty((k.shape[0], k.shape[1], 0))
        return k

    def diag(self, X: np.ndarray) -> np.ndarray:
        x = np.asarray(X, dtype=np.float64)
        return self._diag_fast(x)

    def _diag_fast(self, x: np.ndarray) -> np.ndarray:
        # Each diagonal entry solves its own scalar ODE; integrate them all at once.
        xt = torch.as_tensor(x)
        q = (xt * xt).sum(1) / xt.shape[1]
        k, tk = diagonal_kernels(q, activation=self.activation, t1=self.t1,
                                 sigma_b=self.sigma_b, sigma_w=self.sigma_w, steps=self.steps,
                                 ntk=self.kind == "ntk")
        return (k if self.kind == "nngp" else k + tk).numpy()

    def is_stationary(self) -> bool:
        return False
