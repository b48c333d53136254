"""Smoke tests of ``infdepth limits ...``: tiny sizes, every output written, bad input -> 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from infdepth.cli import main


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


CASES = {
    "convergence": ["--depths", "1,4", "--samples", "300", "--tanh-reference-steps", "20"],
    "activations": ["--samples", "300", "--steps", "20", "--t1", "0.5"],
    "width-regime": ["--widths", "1,4", "--t-max", "4", "--dt", "0.1", "--samples", "100",
                     "--saves", "10"],
    "kernel-ode": ["--widths", "8,16", "--depths", "2,4", "--samples", "4", "--inputs", "3",
                   "--activations", "relu"],
    "inference": ["--train", "30", "--test", "20", "--steps", "5", "--widths", "8",
                  "--fixed-depth", "2", "--depths", "2,3", "--fixed-width", "8"],
    "expressivity": ["--times", "0,0.5", "--grid", "5", "--circle-points", "6", "--mc-width",
                     "8", "--mc-depth", "2", "--mc-samples", "2"],
}


@pytest.mark.parametrize("name", list(CASES))
def test_subcommand_writes_outputs(name: str, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / name
    assert main(["limits", name, "--out", str(out), "--seed", "3", *CASES[name]]) == 0
    assert json.loads((out / "config.json").read_text())["seed"] == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary
    pngs = list(out.glob("*.png"))
    assert pngs and all(p.stat().st_size > 1000 for p in pngs)
    assert capsys.readouterr().out.strip()


@pytest.mark.parametrize(("name", "args", "flag"), [
    ("convergence", ["--depths", "0,3"], "depths"),
    ("width-regime", ["--widths", "0"], "widths"),
    ("activations", ["--activations", "relu,softplusish"], "activations"),
    ("kernel-ode", ["--t1", "nan"], "t1"),
    ("inference", ["--activation", "nope"], "activation"),
    ("expressivity", ["--times", "0,inf"], "times"),
])
def test_bad_input_exit_code_2(name: str, args: list[str], flag: str, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["limits", name, "--out", str(tmp_path / "x"), *args]) == 2
    assert flag in capsys.readouterr().err


def test_help_lists_every_experiment(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["limits", "--help"])
    text = capsys.readouterr().out
    for name in CASES:
        assert name in text


@pytest.mark.parametrize(("name", "args", "needle"), [
    ("activations", ["--activations", ""], "--activations: '' is empty"),
    ("activations", ["--activations", "relu,relu"], "repeats an entry"),
    ("expressivity", ["--times", ""], "--times: '' is empty"),
    ("expressivity", ["--times", "1,1"], "repeats an entry"),
    ("convergence", ["--depths", "4,4"], "repeats an entry"),
])
def test_empty_or_repeated_lists_exit_2(name: str, args: list[str], needle: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["limits", name, "--out", str(tmp_path / "x"), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()
