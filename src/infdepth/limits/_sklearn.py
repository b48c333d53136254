"""scikit-learn kernel of the doubly infinite ResNet, with scikit-learn imported lazily.

``import infdepth`` does not import scikit-learn: :class:`InfiniteDepthKernel` is a plain
class until the first kernel is made, when the subclass of it and scikit-learn's
``Kernel`` is built (once) and the instance is of that subclass.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import numpy as np
import torch

from infdepth.limits.kernels import ActivationLike, diagonal_kernels, infinite_kernels


class InfiniteDepthKernel:
    """scikit-learn kernel of the doubly infinite ResNet.

    Usable with ``GaussianProcessRegressor``, ``KernelRidge(kernel=...)``, ``SVC`` and the
    kernel algebra of :mod:`sklearn.gaussian_process.kernels`. It has no tunable
    hyperparameters (a GP fit therefore does not optimise it).

    Args:
        activation: the network's activation (``"relu"``, ``"linear"``, ``"tanh"``,
            ``"erf"``, ...; see :func:`~infdepth.limits.infinite_kernels`).
        t1: depth (integration time of the kernel ODEs).
        kind: ``"ntk"`` (default: the kernel of the network trained by gradient descent)
            or ``"nngp"`` (the prior covariance of the random network, the one a Gaussian
            process posterior is the Bayesian answer for).
        sigma_b, sigma_w: bias and weight scales of each residual branch.
        steps: RK4 steps of the kernel ODEs.

    Cost: every entry integrates the kernel ODEs with ``steps`` RK4 steps. ``"relu"`` and
    ``"linear"`` have closed-form Gaussian moments; any other activation (``"tanh"``,
    ``"erf"``, a callable) takes a quadrature per entry and step: a thousand times slower
    or more at the default ``steps=64`` (a 40 x 40 matrix: 0.002 s for ReLU against
    3.7 s for tanh on an idle core; docs/limits.md); fewer ``steps`` or fewer points are
    the levers there.

    scikit-learn is imported when the first kernel is made, not by ``import infdepth``: an
    instance is of a subclass of both this class and scikit-learn's ``Kernel``, built then
    (``isinstance`` holds for both classes; ``issubclass(InfiniteDepthKernel, Kernel)``
    does not).
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> InfiniteDepthKernel:
        if cls is InfiniteDepthKernel:
            cls = _sklearn_kernel_class()
        return object.__new__(cls)

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

    def __repr__(self) -> str:
        return (f"InfiniteDepthKernel(activation={self.activation!r}, t1={self.t1!r}, "
                f"kind={self.kind!r}, sigma_b={self.sigma_b!r}, sigma_w={self.sigma_w!r}, "
                f"steps={self.steps!r})")


_SKLEARN_CLASS = "SklearnInfiniteDepthKernel"


def _public_signature() -> inspect.Signature:
    """The constructor's own arguments (``__new__`` takes ``*args, **kwargs`` to pick the class)."""
    sig = inspect.signature(InfiniteDepthKernel.__init__)
    return sig.replace(parameters=list(sig.parameters.values())[1:], return_annotation=sig.empty)


InfiniteDepthKernel.__signature__ = _public_signature()  # type: ignore[attr-defined]


@functools.cache
def _sklearn_kernel_class() -> type[InfiniteDepthKernel]:
    """The one subclass of :class:`InfiniteDepthKernel` and scikit-learn's ``Kernel``.

    Built once (pickle finds it by name through the module ``__getattr__``).
    """
    from sklearn.gaussian_process.kernels import Kernel

    class SklearnInfiniteDepthKernel(InfiniteDepthKernel, Kernel):
        __doc__ = InfiniteDepthKernel.__doc__
        __qualname__ = _SKLEARN_CLASS

    return SklearnInfiniteDepthKernel


def __getattr__(name: str) -> Any:
    if name == _SKLEARN_CLASS:
        return _sklearn_kernel_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
