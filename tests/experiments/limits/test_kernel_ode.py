"""``infdepth limits kernel-ode``: tiny run, and every kind of bad flag refused before writing."""

from __future__ import annotations

import pytest
import torch

from infdepth.experiments.limits.kernel_ode import euler_recursion
from infdepth.limits import infinite_kernels

TINY = ["--widths", "8,16", "--depths", "2,4", "--samples", "4", "--inputs", "3", "--activations", "relu"]


def test_writes_outputs(run_ok) -> None:
    result = run_ok("kernel-ode", TINY)
    relu = result["summary"]["activations"]["relu"]
    assert len(relu["exact_kernel"]) == 3
    assert {(r["width"], r["depth"]) for r in relu["rows"]} == {(8, 2), (16, 2), (8, 4), (16, 4)}
    assert "relu: n=" in result["stdout"]


def test_euler_recursion_approaches_the_kernel_ode() -> None:
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = infinite_kernels(x, activation="relu", t1=1.0, ntk=False).nngp
    errors = [float((euler_recursion(x, "relu", 1.0, depth) - exact).norm()) for depth in (4, 64)]
    assert errors[1] < errors[0] / 8


@pytest.mark.parametrize(("args", "flag"), [
    (["--activations", ""], "--activations: '' is empty"),
    (["--activations", "tanh,tanh"], "repeats an entry"),
    (["--activations", "gelu"], "--activations='gelu'"),
    (["--widths", "8,8"], "repeats an entry"),
    (["--depths", "-1"], "--depths=-1"),
    (["--t1", "nan"], "--t1=nan"),
    (["--samples", "0"], "--samples=0"),
    (["--inputs", "-1"], "--inputs=-1"),
    (["--features", "0"], "--features=0"),
    (["--widths", "100000000"], "--widths"),
    (["--samples", "100000000000"], "--samples"),
])
def test_bad_flag_exits_2_and_writes_nothing(args: list[str], flag: str, refused) -> None:
    refused("kernel-ode", args, flag)
