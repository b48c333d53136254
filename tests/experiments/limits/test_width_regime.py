"""``infdepth limits width-regime``: tiny run, the Euler slope, bad flags refused before writing."""

from __future__ import annotations

import pytest

from infdepth.experiments.limits.width_regime import euler_one_active_slope

TINY = ["--widths", "1,4", "--t-max", "4", "--dt", "0.1", "--samples", "100", "--saves", "10"]


def test_writes_outputs(run_ok) -> None:
    result = run_ok("width-regime", TINY)
    rows = result["summary"]["widths"]
    assert [r["width"] for r in rows] == [1, 4]
    assert all("_curves" not in r for r in rows)
    assert rows[0]["initial_drift"]["exact"] == pytest.approx(-1.0)
    assert "n=4: drift(0)" in result["stdout"]


def test_few_samples_and_short_horizon_do_not_crash(run_ok) -> None:
    # fewer save points than the fixed early ones; statistics over < 2 paths are NaN, not errors
    run_ok("width-regime", ["--widths", "1", "--t-max", "0.1", "--dt", "0.05", "--samples", "2",
                            "--saves", "3"])


def test_euler_slope_is_below_the_diffusion_slope() -> None:
    for n in (1, 3, 8):
        assert euler_one_active_slope(n, 0.05) < -1 / n
        # -1/n - 3 dt / (2 n^2) + O(dt^2)
        assert euler_one_active_slope(n, 0.01) == pytest.approx(-1 / n - 0.015 / n**2, rel=2e-3)


@pytest.mark.parametrize(("args", "flag"), [
    (["--widths", ""], "--widths: '' is empty"),
    (["--widths", "2,2"], "repeats an entry"),
    (["--widths", "0"], "--widths=0"),
    (["--t-max", "nan"], "--t-max=nan"),
    (["--t-max", "-4"], "--t-max=-4"),
    (["--dt", "0"], "--dt=0"),
    (["--dt", "1e-300"], "--t-max / --dt"),
    (["--samples", "1"], "--samples=1"),
    (["--saves", "0"], "--saves=0"),
    (["--samples", "100000000000"], "--samples"),
    (["--widths", "1,100000000000"], "--widths"),
])
def test_bad_flag_exits_2_and_writes_nothing(args: list[str], flag: str, refused) -> None:
    refused("width-regime", args, flag)
