"""``infdepth limits convergence``: tiny run, and every kind of bad flag refused before writing."""

from __future__ import annotations

import pytest

TINY = ["--depths", "1,4", "--samples", "300", "--tanh-reference-steps", "20"]


def test_writes_outputs(run_ok) -> None:
    result = run_ok("convergence", TINY)
    cases = result["summary"]["cases"]
    assert len(cases) == 3
    for rows in cases.values():
        assert [r["depth"] for r in rows] == [1, 4]
        assert all(0 <= r["ks"] <= 1 and r["wasserstein1"] >= 0 for r in rows)
    assert result["summary"]["ks_critical_0.05"] == pytest.approx(1.358 / 300**0.5)
    assert "L=4 KS=" in result["stdout"]


@pytest.mark.parametrize(("args", "flag"), [
    (["--depths", ""], "--depths: '' is empty"),
    (["--depths", "4,4"], "repeats an entry"),
    (["--depths", "0,3"], "--depths=0"),
    (["--depths", "1,x"], "--depths"),
    (["--t1", "nan"], "--t1=nan"),
    (["--t1", "-1"], "--t1=-1"),
    (["--samples", "0"], "--samples=0"),
    (["--linear-width", "-3"], "--linear-width=-3"),
    (["--tanh-width", "0"], "--tanh-width=0"),
    (["--tanh-reference-steps", "0"], "--tanh-reference-steps=0"),
    (["--samples", "100000000000"], "--samples"),
    (["--tanh-width", "100000000000"], "--tanh-width"),
])
def test_bad_flag_exits_2_and_writes_nothing(args: list[str], flag: str, refused) -> None:
    refused("convergence", args, flag)
