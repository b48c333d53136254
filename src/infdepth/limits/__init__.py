"""Depth limits of random residual networks: diffusions, closed-form laws and kernels.

* :func:`simulate_resnet` samples finite random ResNets (:class:`HayouInit`,
  :class:`ShrinkingInit`), vectorised over samples;
* :class:`ResNetSDE` and :func:`simulate` give their depth limits (diffusions), solved with
  :class:`EulerMaruyama` or :class:`LogScaleEuler`, or with weak order 2 for
  expectations by :func:`richardson_expectation`;
* :mod:`~infdepth.limits.laws` gives closed-form laws as ``scipy.stats`` distributions;
* :func:`infinite_kernels` gives the depth-then-width NNGP and NTK kernels, with
  :func:`kernel_regression`, :func:`gp_posterior` and the scikit-learn
  :class:`InfiniteDepthKernel` (scikit-learn is imported only when one is made).

The names load on first use (PEP 562), each with only the modules it needs:
``KNOWN_ACTIVATIONS`` costs no torch, so ``infdepth limits ... --help`` lists it (issue 29).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from infdepth._lazy import lazy_names

# public name -> the module that defines it
_EXPORTS: dict[str, str | None] = {
    "KNOWN_ACTIVATIONS": "infdepth.limits._names",
    **dict.fromkeys(("Activation", "resolve_activation"), "infdepth.limits._activation"),
    "InfiniteDepthKernel": "infdepth.limits._sklearn",
    **dict.fromkeys(("KernelPair", "KernelState", "diagonal_kernels", "gp_posterior",
                     "gradient_descent_prediction", "infinite_kernels", "kernel_regression", "pair_moments",
                     "variance_ode"), "infdepth.limits.kernels"),
    **dict.fromkeys(("expected_active_given_alive", "infinite_width_law", "linear_norm_law",
                     "relu_log_post_norm_drift", "relu_width1_law"), "infdepth.limits.laws"),
    **dict.fromkeys(("HayouInit", "ResNetRun", "ShrinkingInit", "input_layer", "simulate_resnet"),
                    "infdepth.limits.resnet"),
    **dict.fromkeys(("Estimate", "EulerMaruyama", "LogScaleEuler", "Paths", "ResNetSDE",
                     "richardson_expectation", "simulate"), "infdepth.limits.sde"),
}


__getattr__, __dir__ = lazy_names("infdepth.limits", _EXPORTS, globals())

if TYPE_CHECKING:  # what type checkers and IDEs see: the names as eager imports
    from infdepth.limits._activation import Activation, resolve_activation
    from infdepth.limits._names import KNOWN_ACTIVATIONS
    from infdepth.limits._sklearn import InfiniteDepthKernel
    from infdepth.limits.kernels import (
        KernelPair,
        KernelState,
        diagonal_kernels,
        gp_posterior,
        gradient_descent_prediction,
        infinite_kernels,
        kernel_regression,
        pair_moments,
        variance_ode,
    )
    from infdepth.limits.laws import (
        expected_active_given_alive,
        infinite_width_law,
        linear_norm_law,
        relu_log_post_norm_drift,
        relu_width1_law,
    )
    from infdepth.limits.resnet import (
        HayouInit,
        ResNetRun,
        ShrinkingInit,
        input_layer,
        simulate_resnet,
    )
    from infdepth.limits.sde import (
        Estimate,
        EulerMaruyama,
        LogScaleEuler,
        Paths,
        ResNetSDE,
        richardson_expectation,
        simulate,
    )

__all__ = [
    "KNOWN_ACTIVATIONS",
    "Activation",
    "Estimate",
    "EulerMaruyama",
    "HayouInit",
    "InfiniteDepthKernel",
    "KernelPair",
    "KernelState",
    "LogScaleEuler",
    "Paths",
    "ResNetRun",
    "ResNetSDE",
    "ShrinkingInit",
    "diagonal_kernels",
    "expected_active_given_alive",
    "gp_posterior",
    "gradient_descent_prediction",
    "infinite_kernels",
    "infinite_width_law",
    "input_layer",
    "kernel_regression",
    "linear_norm_law",
    "pair_moments",
    "relu_log_post_norm_drift",
    "relu_width1_law",
    "resolve_activation",
    "richardson_expectation",
    "simulate",
    "simulate_resnet",
    "variance_ode",
]
