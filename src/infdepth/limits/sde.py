"""The limit diffusions of random ResNets and fast vectorised solvers for them.

With either initialisation of :mod:`infdepth.limits.resnet`, the increment of one layer
given ``Y_{l-1} = y`` is Gaussian with mean ``h (mu_b + mu_w mean(phi(y))) 1`` and
covariance ``h (sigma_b^2 + sigma_w^2 ||phi(y)||^2 / n) I`` (``h = t1 / L``). The network
is therefore, in law, exactly the Euler-Maruyama scheme with step ``h`` of

    dX_t = (mu_b + mu_w mean(phi(X_t))) 1 dt + sqrt(sigma_b^2 + sigma_w^2 ||phi(X_t)||^2 / n) dB_t

with ``B`` an ``n``-dimensional Brownian motion. The noise is isotropic with a scalar
volatility, which the solvers exploit: one ``randn`` per step and one fused update.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from infdepth.errors import check_finite_tensor, check_float, check_int, raise_input
from infdepth.limits._activation import Activation, resolve_activation
from infdepth.limits._names import NOISE_CHUNK
from infdepth.limits.resnet import HayouInit, ShrinkingInit


@dataclass(frozen=True)
class ResNetSDE:
    """The depth limit of a width-``n`` random ResNet (see the module docstring)."""

    width: int
    activation: Activation
    init: ShrinkingInit = HayouInit()

    @classmethod
    def create(cls, width: int, activation: str | Callable[[Tensor], Tensor] | Activation = "relu",
               init: ShrinkingInit | None = None) -> ResNetSDE:
        """Validate the arguments and build the diffusion."""
        check_int("width", width, low=1)
        return cls(width, resolve_activation(activation), HayouInit() if init is None else init)

    @property
    def has_drift(self) -> bool:
        return self.init.mu_b != 0.0 or self.init.mu_w != 0.0

    def drift(self, x: Tensor) -> Tensor:
        """Drift per coordinate, shape ``(..., 1)`` (the same for all coordinates)."""
        out = torch.full_like(x[..., :1], self.init.mu_b)
        if self.init.mu_w != 0.0:
            out = out + self.init.mu_w * self.activation(x).mean(-1, keepdim=True)
        return out

    def volatility(self, x: Tensor) -> Tensor:
        """Scalar volatility ``sqrt(sigma_b^2 + sigma_w^2 ||phi(x)||^2 / n)``, shape ``(..., 1)``."""
        v = self.activation(x).norm(dim=-1, keepdim=True)
        if self.init.sigma_w != 1.0 or self.width != 1:
            v = v * (self.init.sigma_w / math.sqrt(self.width))
        if self.init.sigma_b != 0.0:
            v = torch.sqrt(v * v + self.init.sigma_b**2)
        return v


@dataclass(frozen=True)
class EulerMaruyama:
    """``X += drift h + vol sqrt(h) Z``; Gaussian noise is drawn ``chunk`` steps at a time."""

    chunk: int = NOISE_CHUNK


@dataclass(frozen=True)
class LogScaleEuler:
    """Euler-Maruyama on ``X = exp(s) U``, renormalising ``U`` to unit norm after each step.

    For a driftless diffusion with a positively homogeneous activation (linear, ReLU) and no
    bias noise the SDE is scale invariant, so this is the same scheme as
    :class:`EulerMaruyama` in exact arithmetic; it pays at long diffusion times, where
    ``||X_t||`` leaves the floating-point range (``log ||X_t||`` grows or falls linearly in
    ``t``) and plain Euler-Maruyama overflows to ``inf`` or underflows to ``0``.
    """

    chunk: int = NOISE_CHUNK


@dataclass(frozen=True)
class Paths:
    """Solutions at the saved times: ``X = exp(log_scale) * y``.

    ``times`` has shape ``(K,)``, ``y`` ``(K, samples, width)`` and ``log_scale``
    ``(K, samples)`` (zeros for :class:`EulerMaruyama`).
    """

    times: Tensor
    y: Tensor
    log_scale: Tensor

    def values(self) -> Tensor:
        """``X`` itself (may overflow for :class:`LogScaleEuler` at long times)."""
        return self.y * self.log_scale.exp().unsqueeze(-1)

    def log_norm(self, activation: str | Callable[[Tensor], Tensor] | Activation = "linear"
                 ) -> Tensor:
        """``log ||phi(X)||`` for a homogeneous ``phi``, computed without overflow."""
        phi = resolve_activation(activation)
        return self.log_scale + phi(self.y).norm(dim=-1).log()


def simulate(sde: ResNetSDE, y0: Tensor, t1: float, steps: int, *,
             solver: EulerMaruyama | LogScaleEuler | None = None, samples: int | None = None,
             generator: torch.Generator | None = None,
             save_at: Sequence[int] | None = None) -> Paths:
    """Solve ``sde`` on ``[0, t1]`` with ``steps`` equal steps for many samples at once.

    Args:
        sde: the diffusion, e.g. ``ResNetSDE.create(width=4, activation="relu")``.
        y0: start ``(width,)`` (then ``samples`` copies) or ``(samples, width)``; the device
            and dtype of the result follow it.
        t1: final time (> 0).
        steps: number of steps (>= 1).
        solver: :class:`EulerMaruyama` (default) or :class:`LogScaleEuler`.
        generator: random source, for reproducible runs.
        save_at: step indices to keep (0 = start); default only the last.
    """
    check_float("t1", t1, low=0.0, strict=True)
    check_int("steps", steps, low=1)
    check_finite_tensor("y0", y0)
    solver = EulerMaruyama() if solver is None else solver
    if not torch.is_floating_point(y0):
        y0 = y0.to(torch.get_default_dtype())
    if y0.ndim == 1:
        x = y0.expand(check_int("samples", samples if samples is not None else 1, low=1), -1).clone()
    elif y0.ndim == 2:
        x = y0.clone()
    else:
        raise_input("y0", f"shape {tuple(y0.shape)}", "(width,) or (samples, width)")
    if x.shape[-1] != sde.width:
        raise_input("y0", f"width {x.shape[-1]}", f"the SDE width {sde.width}")
    keep = sorted(set(save_at)) if save_at is not None else [steps]
    for k in keep:
        if not 0 <= k <= steps:
            raise_input("save_at", repr(k), f"step indices in [0, {steps}]")
    log_scale = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    if isinstance(solver, LogScaleEuler):
        if sde.has_drift or sde.init.sigma_b != 0.0 or not sde.activation.homogeneous:
            raise_input("solver", "LogScaleEuler()",
                        "a driftless SDE without bias noise and a homogeneous activation")
        norm = x.norm(dim=-1)
        if bool((norm == 0).any()):
            raise_input("y0", "a zero row", "non-zero starting points for LogScaleEuler")
        log_scale = norm.log()
        x = x / norm.unsqueeze(-1)
    h = t1 / steps
    sqrt_h = math.sqrt(h)
    chunk = max(1, int(solver.chunk))
    saved_y = [x.clone()] if 0 in keep else []
    saved_s = [log_scale.clone()] if 0 in keep else []
    keep_set = set(keep)
    noise = torch.empty(0)
    for step in range(steps):
        j = step % chunk
        if j == 0:
            size = min(chunk, steps - step)
            noise = torch.randn(size, *x.shape, generator=generator, dtype=x.dtype,
                                device=x.device)
        vol = sde.volatility(x)
        if sde.has_drift:
            x = x + sde.drift(x) * h
        x = x.addcmul_(vol, noise[j], value=sqrt_h)
        if isinstance(solver, LogScaleEuler):
            norm = x.norm(dim=-1, keepdim=True)
            log_scale = log_scale + norm.squeeze(-1).log()
            x = x.div_(norm)
        if step + 1 in keep_set:
            saved_y.append(x.clone())
            saved_s.append(log_scale.clone())
    times = torch.tensor([t1 * k / steps for k in keep], dtype=x.dtype, device=x.device)
    return Paths(times, torch.stack(saved_y), torch.stack(saved_s))


@dataclass(frozen=True)
class Estimate:
    """A Monte-Carlo estimate and its standard error."""

    value: float
    standard_error: float


def richardson_expectation(sde: ResNetSDE, fn: Callable[[Tensor], Tensor], y0: Tensor, t1: float,
                           steps: int, *, samples: int | None = None,
                           generator: torch.Generator | None = None) -> Estimate:
    """Weak-order-2 estimate of ``E[fn(X_t1)]`` by Richardson extrapolation of Euler-Maruyama.

    Euler-Maruyama has weak error ``c h + O(h^2)`` for smooth ``fn``; with step ``h`` and ``h/2``
    driven by the *same* Brownian increments (the coarse increment is the sum of the two fine
    ones), ``2 E[fn(X^{h/2})] - E[fn(X^h)]`` cancels the ``c h`` term, and the coupling keeps
    the variance of the difference small. ``fn`` maps ``(samples, width)`` to ``(samples,)``.
    """
    check_float("t1", t1, low=0.0, strict=True)
    check_int("steps", steps, low=1)
    check_finite_tensor("y0", y0)
    if not torch.is_floating_point(y0):
        y0 = y0.to(torch.get_default_dtype())
    if y0.ndim == 1:
        coarse = y0.expand(check_int("samples", samples if samples is not None else 1, low=1), -1).clone()
    elif y0.ndim == 2:
        coarse = y0.clone()
    else:
        raise_input("y0", f"shape {tuple(y0.shape)}", "(width,) or (samples, width)")
    if coarse.shape[-1] != sde.width:
        raise_input("y0", f"width {coarse.shape[-1]}", f"the SDE width {sde.width}")
    fine = coarse.clone()
    h = t1 / steps
    half = math.sqrt(h / 2)
    for _ in range(steps):
        z = torch.randn(2, *coarse.shape, generator=generator, dtype=coarse.dtype,
                        device=coarse.device)
        for j in range(2):
            vol = sde.volatility(fine)
            if sde.has_drift:
                fine = fine + sde.drift(fine) * (h / 2)
            fine = fine + vol * (half * z[j])
        vol = sde.volatility(coarse)
        if sde.has_drift:
            coarse = coarse + sde.drift(coarse) * h
        coarse = coarse + vol * (half * (z[0] + z[1]))
    d = (2 * fn(fine) - fn(coarse)).double()
    return Estimate(float(d.mean()), float(d.std() / math.sqrt(d.numel())))
