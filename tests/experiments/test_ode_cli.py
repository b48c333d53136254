"""Smoke tests of ``infdepth ode ...`` at tiny sizes, and its handling of bad flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from infdepth.cli import main


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _files(out: Path) -> set[str]:
    return {p.name for p in out.iterdir()}


def test_memory(tmp_path: Path) -> None:
    out = tmp_path / "memory"
    assert main(["ode", "memory", "--depths", "1,4", "--width", "8", "--batch", "4",
                 "--out", str(out), "--no-progress"]) == 0
    assert {"config.json", "summary.json", "memory_vs_depth.png"} <= _files(out)
    summary = json.loads((out / "summary.json").read_text())
    by = {(r["kind"], r["depth"]): r["saved_bytes"] for r in summary["rows"]}
    # the claim, at toy size: backprop memory grows with depth, the adjoint's does not
    assert by[("ode-backprop", 4)] > by[("ode-backprop", 1)]
    assert by[("resnet", 4)] > by[("resnet", 1)]
    assert by[("ode-adjoint", 4)] == by[("ode-adjoint", 1)]


def test_params(tmp_path: Path) -> None:
    out = tmp_path / "params"
    assert main(["ode", "params", "--epochs", "1", "--train-subset", "64", "--channels", "4",
                 "--res-blocks", "2", "--rtol", "1e-2", "--atol", "1e-2", "--out", str(out),
                 "--no-progress"]) == 0
    assert {"config.json", "summary.json", "metrics.jsonl", "params_vs_accuracy.png"} <= _files(
        out)
    rows = {r["kind"]: r for r in json.loads((out / "summary.json").read_text())["rows"]}
    assert rows["resnet"]["params"] > rows["odenet"]["params"]
    assert rows["odenet"]["nfe_forward"] > 0 and rows["odenet"]["nfe_backward"] > 0
    assert rows["resnet"]["nfe_forward"] is None


def test_spiral(tmp_path: Path) -> None:
    out = tmp_path / "spiral"
    assert main(["ode", "spiral", "--n-train", "3", "--n-test", "2", "--n-obs", "6",
                 "--n-extrap", "3", "--window", "3", "--iterations", "2", "--hidden", "8",
                 "--out", str(out), "--no-progress"]) == 0
    assert {"config.json", "summary.json", "metrics.jsonl",
            "spiral_extrapolation.png"} <= _files(out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ode_extrap_rmse"] > 0 and summary["rnn_extrap_rmse"] > 0


@pytest.mark.parametrize(
    "argv",
    [
        ["ode", "memory", "--depths", "0,2"],
        ["ode", "memory", "--width", "0"],
        ["ode", "params", "--dataset", "cifar"],
        ["ode", "params", "--epochs", "0"],
        ["ode", "spiral", "--window", "1"],
        ["ode", "spiral", "--t-end", "1.0", "--t-obs", "2.0"],
        ["ode", "spiral", "--rtol", "-1"],
        ["ode", "spiral", "--device", "cuda:7"] if not torch.cuda.is_available()
        else ["ode", "spiral", "--noise", "-1"],
    ],
)
def test_bad_flags_exit_2(argv: list[str], tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


def test_a_diverging_training_ends_with_one_line_and_exit_1(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """``ode spiral --lr 1e6``: the field blows up and the solver gives up: one line, no traceback."""
    code = main(["ode", "spiral", "--lr", "1e6", "--iterations", "3", "--out", str(tmp_path / "run"),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert "training diverged" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
