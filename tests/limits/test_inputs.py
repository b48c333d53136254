"""Bad input raises InputError (a ValueError) naming the argument."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from infdepth.errors import InputError
from infdepth.limits import (
    LogScaleEuler,
    ResNetSDE,
    ShrinkingInit,
    infinite_kernels,
    linear_norm_law,
    relu_width1_law,
    resolve_activation,
    simulate,
    simulate_resnet,
)
from infdepth.limits.finite import FiniteResNet


@pytest.mark.parametrize("width", [0, -3, 1.5, True])
def test_bad_width(width: object) -> None:
    with pytest.raises(InputError, match="width"):
        ResNetSDE.create(width, "relu")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="width"):
        linear_norm_law(width, 1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("depth", [0, -1, 2.0])
def test_bad_depth(depth: object) -> None:
    with pytest.raises(InputError, match="depth"):
        simulate_resnet(torch.ones(3), depth)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="depth"):
        FiniteResNet(2, 4, depth)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_parameters(value: float) -> None:
    with pytest.raises(InputError, match="sigma_w"):
        ShrinkingInit(sigma_w=value)
    with pytest.raises(InputError, match="t1"):
        simulate_resnet(torch.ones(3), 4, t1=value)
    with pytest.raises(InputError, match="t"):
        relu_width1_law(value)
    with pytest.raises(InputError, match="y0"):
        simulate_resnet(torch.tensor([1.0, value]), 3)
    with pytest.raises(InputError, match="x1"):
        infinite_kernels(np.array([[1.0, value]]))


@pytest.mark.parametrize("activation", ["sigmoidish", 3, None])
def test_bad_activation(activation: object) -> None:
    with pytest.raises(InputError, match="activation"):
        resolve_activation(activation)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="activation"):
        simulate_resnet(torch.ones(2), 3, activation=activation)  # type: ignore[arg-type]


def test_input_error_is_value_error_and_callables_work() -> None:
    assert issubclass(InputError, ValueError)
    run = simulate_resnet(torch.ones(2), 3, activation=torch.sin, samples=2)
    assert torch.isfinite(run.final).all()


def test_log_scale_solver_needs_scale_invariance() -> None:
    with pytest.raises(InputError, match="solver"):
        simulate(ResNetSDE.create(2, "tanh"), torch.ones(2), 1.0, 10, solver=LogScaleEuler())
    with pytest.raises(InputError, match="y0"):
        simulate(ResNetSDE.create(2, "relu"), torch.ones(3), 1.0, 10)
    with pytest.raises(InputError, match="steps"):
        simulate(ResNetSDE.create(2, "relu"), torch.ones(2), 1.0, 0)
