"""Kernels of doubly infinite ResNets (depth, then width) by integrating their ODEs.

With width to infinity after depth, the coordinates of the diffusion decouple and the
covariance of two inputs solves (derived here, see docs/limits.md)

    dK_t(a, b)/dt = sigma_b^2 + sigma_w^2 E[phi(U) phi(V)],
    dT_t(a, b)/dt = sigma_b^2 + sigma_w^2 (E[phi(U) phi(V)] + E[phi'(U) phi'(V)] T_t(a, b)),

``(U, V) ~ N(0, K_t on {a, b})``, ``K_0 = T_0 = x_a . x_b / d`` (input layer ``N(0, 1/d)``).
With a linear read-out ``f = v . X_t1 / sqrt(n)``, the NNGP (read-out trained only) is
``K_t1`` and the NTK (all layers trained) is ``K_t1 + T_t1``.

The ODEs are solved with the library's own :func:`infdepth.ode.odeint` (fixed-step RK4).
The scikit-learn kernel built on them is :class:`infdepth.limits.InfiniteDepthKernel`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from infdepth.errors import check_finite_tensor, check_float, check_int, raise_input
from infdepth.limits._activation import Activation, resolve_activation
from infdepth.ode import RK4, odeint

ActivationLike = str | Callable[[Tensor], Tensor] | Activation


_REACH = 8.5
"""Standard-normal coordinates beyond +-_REACH carry probability below 2e-17: left out."""
_UNIFORM_PANELS = 8
"""Panels of width 2 _REACH / _UNIFORM_PANELS resolve the Gaussian weight itself."""
_NODES = 6
"""Gauss-Legendre nodes per panel (measured worst error against scipy: 3e-8 relative)."""
_DEGENERATE = 1e-6
"""``V``'s conditional standard deviation below which ``V`` is taken as a function of ``U``
(the error is of the order of its square)."""


def _legendre(dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    x, w = np.polynomial.legendre.leggauss(_NODES)
    return (torch.as_tensor(x, dtype=dtype, device=device),
            torch.as_tensor(w, dtype=dtype, device=device))


def _graded_rule(center: Tensor, scale: Tensor, levels: int) -> tuple[Tensor, Tensor]:
    """Nodes and weights of ``int g(z) N(z) dz`` for ``g`` varying on ``scale`` near ``center``.

    Composite Gauss-Legendre on ``[-_REACH, _REACH]``: uniform panels for the Gaussian weight,
    plus panel edges at ``center +- scale * 2**k`` (``k < levels``) so that a transition of
    width ``scale`` at ``center`` (a saturating activation at large variance) is resolved
    however small ``scale`` is. Shapes: ``center``, ``scale`` ``(...)``; result ``(..., n)``
    with the weights including the normal density.
    """
    dtype, device = center.dtype, center.device
    uniform = torch.linspace(-_REACH, _REACH, _UNIFORM_PANELS + 1, dtype=dtype, device=device)
    steps = 2.0 ** torch.arange(levels, dtype=dtype, device=device)
    offsets = torch.cat([torch.zeros(1, dtype=dtype, device=device), steps, -steps])
    graded = (center.unsqueeze(-1) + scale.unsqueeze(-1) * offsets).clamp(-_REACH, _REACH)
    edges = torch.cat([uniform.expand(*center.shape, -1), graded], -1).sort(-1).values
    x, w = _legendre(dtype, device)
    half = (edges[..., 1:] - edges[..., :-1]).unsqueeze(-1) / 2
    mid = (edges[..., 1:] + edges[..., :-1]).unsqueeze(-1) / 2
    nodes = (mid + half * x).flatten(-2)
    weights = (half * w).flatten(-2) * torch.exp(-nodes * nodes / 2) / math.sqrt(2 * math.pi)
    return nodes, weights


def _levels(finest: float) -> int:
    """Grading levels from panels of width ``finest`` up to about the uniform panels."""
    return max(1, math.ceil(math.log2(2 * _REACH / _UNIFORM_PANELS / finest)))


def pair_moments(activation: ActivationLike, kaa: Tensor, kbb: Tensor, kab: Tensor, *,
                 chunk: int = 16) -> tuple[Tensor, Tensor]:
    """``E[phi(U) phi(V)]`` and ``E[phi'(U) phi'(V)]`` for ``(U, V) ~ N(0, [[kaa, kab], [kab, kbb]])``.

    Closed forms for linear and ReLU (the arc-cosine kernel). Otherwise a product rule in
    ``U = sqrt(kaa) z1``, ``V = sqrt(kbb) (rho z1 + sqrt(1 - rho^2) z2)``: composite
    Gauss-Legendre panels graded towards the points where the activation's argument is 0
    (``z1 = 0``; ``z2 = -rho z1 / sqrt(1 - rho^2)``) down to the width ``1/sqrt(variance)`` of
    its transition there, so the node count grows with the log of the variance. Accurate to
    about 1e-7 relative (of ``sqrt(E[phi(U)^2] E[phi(V)^2])``) for activations that vary on
    the unit scale near 0 (tanh, erf, sigmoid, GELU, ...) at variances up to at least 100
    (checked against scipy's adaptive quadrature in tests). The
    result is symmetric in ``(U, V)`` to rounding: the variable of larger variance is
    always integrated first. Arguments broadcast; the result has their common shape.
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
    shape = kab.shape
    first = kaa >= kbb  # the same order for (a, b) and (b, a)
    sa = torch.where(first, kaa, kbb).sqrt().reshape(-1)
    sb = torch.where(first, kbb, kaa).sqrt().reshape(-1)
    r = rho.reshape(-1)
    c = torch.sqrt((1 - r * r).clamp_min(0))
    e_phi = torch.zeros_like(sa)
    e_dphi = torch.zeros_like(sa)
    if sa.numel() == 0:
        return e_phi.reshape(shape), e_dphi.reshape(shape)
    levels = _levels(1.0 / max(1.0, float(sa.max())))
    inv_sa = 1.0 / sa.clamp_min(1.0)
    # V = (sb rho / sa) U (the diagonal of a kernel, perfectly correlated pairs): one dimension
    line = (sb * c <= _DEGENERATE).nonzero().squeeze(1)
    if line.numel():
        z1, w1 = _graded_rule(torch.zeros_like(inv_sa[line]), inv_sa[line], levels)
        u = sa[line, None] * z1
        v = (sb * r)[line, None] * z1
        e_phi[line] = (phi(u) * phi(v) * w1).sum(-1)
        e_dphi[line] = (phi.grad(u) * phi.grad(v) * w1).sum(-1)
    plane = (sb * c > _DEGENERATE).nonzero().squeeze(1)
    for i in range(0, plane.shape[0], chunk):
        idx = plane[i : i + chunk]
        z1, w1 = _graded_rule(torch.zeros_like(inv_sa[idx]), inv_sa[idx], levels)
        ri, ci, sbi = r[idx, None], c[idx, None], sb[idx, None]
        # V's argument crosses 0 at z2 = -rho z1 / c, with width 1 / (sb c)
        center = (-ri * z1 / ci).clamp(-_REACH - 1, _REACH + 1)
        scale = (1.0 / (sbi * ci)).clamp(max=1.0).expand_as(z1)
        z2, w2 = _graded_rule(center, scale, levels)
        u = sa[idx, None] * z1
        v = sbi.unsqueeze(-1) * (ri.unsqueeze(-1) * z1.unsqueeze(-1) + ci.unsqueeze(-1) * z2)
        e_phi[idx] = ((phi(v) * w2).sum(-1) * phi(u) * w1).sum(-1)
        e_dphi[idx] = ((phi.grad(v) * w2).sum(-1) * phi.grad(u) * w1).sum(-1)
    return e_phi.reshape(shape), e_dphi.reshape(shape)


def variance_ode(activation: ActivationLike, t1: float, q0: float = 1.0, *,
                 sigma_b: float = 0.0, sigma_w: float = 1.0, steps: int = 256) -> float:
    """``q_t1`` for ``dq/dt = sigma_b^2 + sigma_w^2 E[phi(sqrt(q) Z)^2]``, ``q_0 = q0`` (RK4)."""
    q = torch.tensor([float(check_float("q0", q0, low=0.0, strict=True))], dtype=torch.float64)
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


def _rk4(field: Callable[[Tensor], Tensor], y0: Tensor, t1: float, steps: int) -> Tensor:
    """``y(t1)`` for the autonomous ``dy/dt = field(y)``, ``y(0) = y0``: ``steps`` RK4 steps."""
    t = torch.tensor([0.0, t1], dtype=torch.float64)
    ys = odeint(lambda _t, y: field(y), y0, t, solver=RK4(), step_size=t1 / steps,
                max_steps=steps)
    return ys[-1]


def _integrate(phi: Activation, da: Tensor, db: Tensor, kab: Tensor, t1: float, steps: int,
               sigma_b: float, sigma_w: float, tab: Tensor | None = None
               ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """RK4 for ``(K_aa, K_bb, K_ab, T_ab)`` over ``[0, t1]``; ``T_ab`` starts at ``K_ab`` by default."""
    t1 = check_float("t1", t1, low=0.0, strict=True)
    steps = check_int("steps", steps, low=1)
    sb2 = check_float("sigma_b", sigma_b, low=0.0) ** 2
    sw2 = check_float("sigma_w", sigma_w, low=0.0) ** 2
    tab = kab.clone() if tab is None else tab
    shape = kab.shape
    sizes = [da.numel(), db.numel(), kab.numel(), tab.numel()]

    def unpack(y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        a, b, k, t = y.split(sizes)
        return a, b, k.view(shape), t.view(shape)

    def field(y: Tensor) -> Tensor:
        return torch.cat([x.reshape(-1) for x in _rhs(phi, unpack(y), sb2, sw2)])

    y0 = torch.cat([x.reshape(-1) for x in (da, db, kab, tab)])
    return unpack(_rk4(field, y0, t1, steps))


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
    t1 = check_float("t1", t1, low=0.0, strict=True)
    steps = check_int("steps", steps, low=1)
    sb2 = check_float("sigma_b", sigma_b, low=0.0) ** 2
    sw2 = check_float("sigma_w", sigma_w, low=0.0) ** 2
    check_finite_tensor("q0", q0)

    def field(y: Tensor) -> Tensor:
        q, tq = y.unbind(0)
        e, e_d = pair_moments(phi, q, q, q)
        return torch.stack([sb2 + sw2 * e, sb2 + sw2 * (e + e_d * tq)])

    q, tq = _rk4(field, torch.stack([q0, q0]), t1, steps).unbind(0)
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
    check_finite_tensor(name, t)
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
    if x2 is None:  # K(x, x) from x @ x.T may differ from symmetric in the last bit
        k, tk = (k + k.T) / 2, (tk + tk.T) / 2
    return KernelPair(k, k + tk if ntk else k)


def kernel_regression(k_train: Tensor, y_train: Tensor, k_test_train: Tensor, *,
                      ridge: float = 0.0) -> Tensor:
    """Kernel (ridge) regression mean ``k(x, X) (K + ridge I)^{-1} y``; ridge 0 interpolates."""
    ridge = check_float("ridge", ridge, low=0.0)
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
    noise = check_float("noise", noise, low=0.0)
    kk = k_train + noise * torch.eye(k_train.shape[0], dtype=k_train.dtype, device=k_train.device)
    chol = torch.linalg.cholesky(kk)
    alpha = torch.cholesky_solve(y_train.reshape(k_train.shape[0], -1), chol)
    mean = (k_test_train @ alpha).reshape(k_test_train.shape[:1] + y_train.shape[1:])
    v = torch.cholesky_solve(k_test_train.T, chol)
    var = k_test_diag - (k_test_train * v.T).sum(1)
    return mean, var.clamp_min(0)


def __getattr__(name: str) -> Any:
    if name == "InfiniteDepthKernel":  # its old home; it lives in _sklearn.py
        from infdepth.limits._sklearn import InfiniteDepthKernel

        return InfiniteDepthKernel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
