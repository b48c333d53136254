"""``infdepth limits expressivity``: tiny run, and every kind of bad flag refused before writing."""

from __future__ import annotations

import numpy as np
import pytest

from infdepth.experiments.limits.expressivity import correlation_map

TINY = ["--times", "0,0.5", "--grid", "5", "--circle-points", "6", "--mc-width", "8", "--mc-depth", "2",
        "--mc-samples", "2"]


def test_writes_outputs(run_ok) -> None:
    result = run_ok("expressivity", TINY)
    settings = result["summary"]["settings"]
    assert len(settings) == 4
    for res in settings.values():
        assert res["times"] == [0.0, 0.5] and len(res["maps"][0]) == 5
    assert len(result["summary"]["monte_carlo_check"]["rho_t_monte_carlo"]) == 3
    assert "MC check relu" in result["stdout"]


def test_linear_map_is_the_identity_and_relu_correlates() -> None:
    rho0 = np.linspace(-1, 1, 5)
    linear = correlation_map(rho0, [0.0, 1.0], "linear", 0.0, 1.0)
    relu = correlation_map(rho0, [1.0], "relu", 0.0, 1.0)[0]
    np.testing.assert_allclose(linear[1], rho0, atol=1e-9)
    assert (relu[1:-1] > rho0[1:-1]).all()


@pytest.mark.parametrize(("args", "flag"), [
    (["--times", ""], "--times: '' is empty"),
    (["--times", "1,1"], "repeats an entry"),
    (["--times", "0,inf"], "--times=inf"),
    (["--times", "0,nan"], "--times=nan"),
    (["--times=-1,0"], "--times=-1"),
    (["--times", "2,1"], "--times=2.0,1.0"),
    (["--times", "0,1e9"], "--times"),
    (["--mc-time", "nan"], "--mc-time=nan"),
    (["--grid", "0"], "--grid=0"),
    (["--circle-points", "-1"], "--circle-points=-1"),
    (["--mc-width", "0"], "--mc-width=0"),
    (["--mc-depth", "0"], "--mc-depth=0"),
    (["--mc-samples", "0"], "--mc-samples=0"),
    (["--grid", "100000000000"], "--grid"),
    (["--mc-samples", "100000", "--mc-width", "100000"], "--mc-samples"),
])
def test_bad_flag_exits_2_and_writes_nothing(args: list[str], flag: str, refused) -> None:
    refused("expressivity", args, flag)
