"""Activations by name or callable, with the derivative the kernels need."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from infdepth.errors import InputError
from infdepth.limits._names import KNOWN_ACTIVATIONS


@dataclass(frozen=True)
class Activation:
    """An activation ``phi`` and its derivative ``phi'`` (autograd when not given).

    ``homogeneous`` is true when ``phi(c x) = c phi(x)`` for ``c > 0`` (linear, ReLU):
    the Hayou diffusion is then scale invariant, which the log-scale solver uses.
    """

    name: str
    fn: Callable[[Tensor], Tensor]
    derivative: Callable[[Tensor], Tensor] | None = None
    homogeneous: bool = False

    def __call__(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def grad(self, x: Tensor) -> Tensor:
        """``phi'(x)`` elementwise (a.e. for ReLU; by autograd for a plain callable)."""
        if self.derivative is not None:
            return self.derivative(x)
        with torch.enable_grad():
            z = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.fn(z).sum(), z)
        return g


def _linear(x: Tensor) -> Tensor:
    return x


def _ones(x: Tensor) -> Tensor:
    return torch.ones_like(x)


def _relu_grad(x: Tensor) -> Tensor:
    return (x > 0).to(x.dtype)


def _tanh_grad(x: Tensor) -> Tensor:
    return 1.0 - torch.tanh(x) ** 2


_BUILTIN = {
    "linear": Activation("linear", _linear, _ones, homogeneous=True),
    "relu": Activation("relu", torch.relu, _relu_grad, homogeneous=True),
    "tanh": Activation("tanh", torch.tanh, _tanh_grad),
}


def resolve_activation(activation: str | Callable[[Tensor], Tensor] | Activation,
                       name: str = "activation") -> Activation:
    """Turn a known name (``linear``, ``relu``, ``tanh``) or a callable into an :class:`Activation`.

    Raises :class:`~infdepth.errors.InputError` naming ``name`` for anything else.
    """
    if isinstance(activation, Activation):
        return activation
    if isinstance(activation, str):
        key = activation.lower()
        if key == "identity":
            key = "linear"
        if key not in _BUILTIN:
            raise InputError(f"{name}={activation!r} is not accepted; choose one of "
                             f"{', '.join(map(repr, KNOWN_ACTIVATIONS))} or pass a callable")
        return _BUILTIN[key]
    if callable(activation):
        label = getattr(activation, "__name__", type(activation).__name__)
        return Activation(str(label), activation)
    raise InputError(f"{name}={activation!r} is not accepted; expected a callable or one of "
                     f"{', '.join(map(repr, KNOWN_ACTIVATIONS))}")
