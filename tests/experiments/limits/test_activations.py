"""``infdepth limits activations``: tiny run, and every kind of bad flag refused before writing."""

from __future__ import annotations

import pytest

from infdepth.errors import InputError
from infdepth.experiments.limits.activations import Config

TINY = ["--samples", "300", "--steps", "20", "--t1", "0.5"]


def test_writes_outputs(run_ok) -> None:
    result = run_ok("activations", TINY)
    assert result["config"]["activations"] == ["linear", "relu", "tanh"]
    laws = result["summary"]["activations"]
    assert set(laws) == {"linear", "relu", "tanh"}
    for law in laws.values():
        assert 0 <= law["ks_vs_gaussian"] <= 1 and law["variance_infinite_width"] > 0
    assert "relu: excess kurtosis" in result["stdout"]


@pytest.mark.parametrize(("args", "flag"), [
    (["--activations", ""], "--activations: '' is empty"),
    (["--activations", "relu,relu"], "repeats an entry"),
    (["--activations", "relu,softplusish"], "--activations='softplusish'"),
    (["--t1", "nan"], "--t1=nan"),
    (["--t1", "1e9"], "--t1"),
    (["--q0", "-1"], "--q0=-1"),
    (["--q0", "inf"], "--q0"),
    (["--width", "0"], "--width=0"),
    (["--samples", "-5"], "--samples=-5"),
    (["--steps", "0"], "--steps=0"),
    (["--steps", "ten"], "--steps"),
    (["--seed", "-1"], "--seed: -1 is not accepted"),
    (["--threads", "-1"], "--threads=-1"),
    (["--samples", "100000000000"], "--samples"),
    (["--width", "100000000000"], "--width"),
])
def test_bad_flag_exits_2_and_writes_nothing(args: list[str], flag: str, refused) -> None:
    refused("activations", args, flag)


def test_config_names_flags_not_fields() -> None:
    with pytest.raises(InputError, match=r"^--t1=nan is not accepted"):
        Config(t1=float("nan"))
    with pytest.raises(InputError, match=r"^--activations is empty"):
        Config(activations=())
