"""Finite-depth random residual networks at initialisation, vectorised over samples.

``Y_l = Y_{l-1} + b_l + W_l phi(Y_{l-1})``, ``l = 1..L``, every sample with its own
independent parameters. Two initialisations, both of which make the depth-``L``
network an Euler-Maruyama step of a diffusion on ``[0, t1]`` with step ``t1 / L``:

* :class:`HayouInit` (Hayou, 2023): ``W_l = sqrt(t1/L) V_l``, ``V_l`` entries N(0, 1/n),
  no bias: the branch is scaled by ``L^{-1/2}``.
* :class:`ShrinkingInit` (Peluchetti & Favaro, 2021): bias and weight distributions
  whose mean and variance shrink like ``1/L``: ``b ~ N(mu_b h, sigma_b^2 h)``,
  ``W_ij ~ N(mu_w h / n, sigma_w^2 h / n)`` with ``h = t1/L``.

Weights are sampled *in law*, which is exact and much cheaper: for one input ``W phi(y)`` has
i.i.d. ``N(0, sd^2 ||phi(y)||^2)`` coordinates (``n`` draws instead of ``n^2``); for ``m < n``
inputs sharing the weights, ``W phi(Y)^T = (W Q) R`` with ``phi(Y)^T = Q R`` and ``W Q`` i.i.d.
Gaussian by rotation invariance (``n m`` draws); otherwise the ``n x n`` matrix is drawn.
The weights themselves are never returned: use :class:`~infdepth.limits.finite.FiniteResNet`
for a network whose parameters you can inspect or train.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from infdepth.errors import check_finite_tensor, check_float, check_int, raise_input
from infdepth.limits._activation import Activation, resolve_activation


@dataclass(frozen=True)
class ShrinkingInit:
    """Bias and weights with mean and variance proportional to ``1/L`` (Peluchetti & Favaro).

    Per layer, with ``h = t1 / L`` and width ``n``: ``b ~ N(mu_b h, sigma_b^2 h)`` and
    ``W_ij ~ N(mu_w h / n, sigma_w^2 h / n)``, all independent.
    """

    sigma_b: float = 1.0
    sigma_w: float = 1.0
    mu_b: float = 0.0
    mu_w: float = 0.0

    def __post_init__(self) -> None:
        check_float("sigma_b", self.sigma_b, low=0.0)
        check_float("sigma_w", self.sigma_w, low=0.0)
        check_float("mu_b", self.mu_b)
        check_float("mu_w", self.mu_w)


@dataclass(frozen=True)
class HayouInit(ShrinkingInit):
    """``Y_l = Y_{l-1} + sqrt(t1/L) V_l phi(Y_{l-1})``, ``V_l`` entries N(0, 1/n) (Hayou, 2023)."""

    sigma_b: float = 0.0
    sigma_w: float = 1.0
    mu_b: float = 0.0
    mu_w: float = 0.0


def input_layer(x: Tensor, width: int, samples: int, *,
                generator: torch.Generator | None = None) -> Tensor:
    """``Y_0 = W_in x`` with ``W_in`` entries N(0, 1/d); ``x`` is ``(m, d)``, result ``(samples, m, n)``.

    The same ``W_in`` is used for the ``m`` inputs of a sample, so their pre-activations are
    jointly Gaussian with covariance ``x_a . x_b / d`` per coordinate.
    """
    check_int("width", width, low=1)
    check_int("samples", samples, low=1)
    if x.ndim != 2:
        raise_input("x", f"shape {tuple(x.shape)}", "a 2-d tensor (inputs, features)")
    check_finite_tensor("x", x)
    d = x.shape[1]
    w = torch.randn(samples, width, d, generator=generator, dtype=x.dtype, device=x.device)
    return torch.einsum("snd,md->smn", w, x) / math.sqrt(d)


@dataclass(frozen=True)
class ResNetRun:
    """Pre-activations of sampled random ResNets.

    ``layers`` holds the saved layer indices (0 = input of the residual stack) and ``y`` the
    pre-activations there, shape ``(len(layers), samples, inputs, width)``; ``times`` are the
    matching diffusion times ``t1 * l / L``.
    """

    layers: tuple[int, ...]
    times: Tensor
    y: Tensor

    @property
    def final(self) -> Tensor:
        """Pre-activations at the last saved layer, ``(samples, inputs, width)``."""
        return self.y[-1]


def simulate_resnet(y0: Tensor, depth: int, *,
                    activation: str | Callable[[Tensor], Tensor] | Activation = "relu",
                    init: ShrinkingInit | None = None, t1: float = 1.0,
                    samples: int | None = None, generator: torch.Generator | None = None,
                    save_layers: Sequence[int] | None = None) -> ResNetRun:
    """Run ``depth`` residual layers from ``y0`` with freshly sampled parameters per sample.

    Args:
        y0: starting pre-activations ``(width,)``, ``(samples, width)`` or
            ``(samples, inputs, width)``; the inputs of one sample share the parameters.
        depth: number of residual layers ``L >= 1``.
        activation: ``"linear"``, ``"relu"``, ``"tanh"`` or a callable.
        init: :class:`HayouInit` (default) or :class:`ShrinkingInit`.
        t1: diffusion time the stack represents (depth ``L`` covers ``[0, t1]``).
        samples: number of independent networks when ``y0`` has no sample axis.
        generator: random source; the device and dtype follow ``y0``.
        save_layers: layer indices to keep (default: only ``depth``).
    """
    check_int("depth", depth, low=1)
    check_float("t1", t1, low=0.0, strict=True)
    phi = resolve_activation(activation)
    init = HayouInit() if init is None else init
    check_finite_tensor("y0", y0)
    if not torch.is_floating_point(y0):
        y0 = y0.to(torch.get_default_dtype())
    if y0.ndim == 1:
        y = y0.expand(check_int("samples", samples if samples is not None else 1, low=1), 1, -1)
    elif y0.ndim == 2:
        y = y0.unsqueeze(1)
    elif y0.ndim == 3:
        y = y0
    else:
        raise_input("y0", f"shape {tuple(y0.shape)}", "1, 2 or 3 dimensions")
    if y.shape[-1] < 1:
        raise_input("width", str(y.shape[-1]), "an integer >= 1")
    keep = sorted(set(save_layers)) if save_layers is not None else [depth]
    for layer in keep:
        if not 0 <= layer <= depth:
            raise_input("save_layers", repr(layer), f"layer indices in [0, {depth}]")
    s, m, n = y.shape
    h = t1 / depth
    sd_w = init.sigma_w * math.sqrt(h / n)
    mean_w = init.mu_w * h / n
    sd_b, mean_b = init.sigma_b * math.sqrt(h), init.mu_b * h
    y = y.clone()
    saved = [y.clone()] if 0 in keep else []
    use_qr = m < n
    for layer in range(1, depth + 1):
        p = phi(y)
        if m == 1:
            # one input: W p has i.i.d. N(0, ||p||^2 sd_w^2) coordinates
            z = torch.randn(s, 1, n, generator=generator, dtype=y.dtype, device=y.device)
            y = y + (sd_w * p.norm(dim=-1, keepdim=True)) * z
        elif use_qr:
            # W p^T has the law of Z R with Z ~ N(0, 1) (n x m) when p^T = Q R: Gaussian
            # weights are rotation invariant, so n*m draws replace n*n.
            r = torch.linalg.qr(p.transpose(1, 2), mode="r")[1]
            z = torch.randn(s, m, n, generator=generator, dtype=y.dtype, device=y.device)
            y = y + sd_w * torch.bmm(r.transpose(1, 2), z)
        else:
            w = torch.randn(s, n, n, generator=generator, dtype=y.dtype, device=y.device)
            y = y + sd_w * torch.bmm(p, w.transpose(1, 2))
        if mean_w != 0.0:
            y = y + mean_w * p.sum(-1, keepdim=True)
        if sd_b > 0 or mean_b != 0.0:
            b = torch.randn(s, 1, n, generator=generator, dtype=y.dtype, device=y.device)
            y = y + b.mul_(sd_b).add_(mean_b)
        if layer in keep:
            saved.append(y.clone())
    times = torch.tensor([t1 * k / depth for k in keep], dtype=y.dtype, device=y.device)
    return ResNetRun(tuple(keep), times, torch.stack(saved))
