"""``infdepth limits inference``: tiny run, and every kind of bad flag refused before writing."""

from __future__ import annotations

import pytest

from infdepth.experiments.limits.inference import Config

TINY = ["--train", "30", "--test", "20", "--steps", "5", "--widths", "8", "--fixed-depth", "2",
        "--depths", "2,3", "--fixed-width", "8"]


def test_writes_outputs(run_ok) -> None:
    result = run_ok("inference", TINY)
    summary = result["summary"]
    assert [(r["width"], r["depth"]) for r in summary["finite"]] == [(8, 2), (8, 3)]
    assert set(summary["kernels"]) == {"ntk_gradient_descent", "ntk_kernel_regression", "nngp_gp_posterior"}
    assert summary["learning_rate"] == pytest.approx(1 / summary["ntk_lambda_max"])
    assert "ntk_gradient_descent: test accuracy" in result["stdout"]


def test_grid_does_not_train_a_pair_twice() -> None:
    cfg = Config(widths=(8, 16), fixed_depth=2, depths=(2, 3), fixed_width=8)
    assert cfg.grid() == [(8, 2), (16, 2), (8, 3)]


@pytest.mark.parametrize(("args", "flag"), [
    (["--widths", ""], "--widths: '' is empty"),
    (["--depths", "2,2"], "repeats an entry"),
    (["--widths", "0"], "--widths=0"),
    (["--activation", "nope"], "--activation='nope'"),
    (["--t1", "nan"], "--t1=nan"),
    (["--lr-scale", "-1"], "--lr-scale=-1"),
    (["--lr-scale", "1e300"], "--lr-scale"),
    (["--gp-noise", "0"], "--gp-noise=0"),
    (["--train", "1"], "--train=1"),
    (["--test", "-1"], "--test=-1"),
    (["--train", "1500", "--test", "400"], "--train + --test=1900"),
    (["--steps", "0"], "--steps=0"),
    (["--kernel-steps", "0"], "--kernel-steps=0"),
    (["--fixed-depth", "0"], "--fixed-depth=0"),
    (["--fixed-width", "-8"], "--fixed-width=-8"),
    (["--widths", "10000000"], "--widths"),
    (["--fixed-width", "100000", "--depths", "100000"], "--fixed-width"),
])
def test_bad_flag_exits_2_and_writes_nothing(args: list[str], flag: str, refused) -> None:
    refused("inference", args, flag)


def test_singular_kernels_exit_2_naming_t1(cli, tmp_path, capsys) -> None:
    # the linear kernel grows like e^t1 while --gp-noise stays: numerically singular
    code = cli(["limits", "inference", "--out", str(tmp_path / "r"), "--no-progress", "--activation",
                "linear", "--t1", "500", "--train", "10", "--test", "10", "--widths", "4", "--depths",
                "2", "--fixed-width", "4", "--steps", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "--t1=500.0" in err and "Traceback" not in err
