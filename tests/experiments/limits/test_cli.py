"""``infdepth limits``: the nested subcommands, ``--help`` with defaults, lazy imports, torchrun."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from infdepth.cli import build_parser, data_parallel_commands
from infdepth.experiments.limits import EXPERIMENTS

NAMES = ["convergence", "activations", "width-regime", "kernel-ode", "inference", "expressivity"]


def test_help_lists_every_experiment(cli, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["limits", "--help"]) == 0
    text = capsys.readouterr().out
    assert list(EXPERIMENTS) == NAMES
    for name in NAMES:
        assert name in text


def _shown(value: object) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


@pytest.mark.parametrize("name", NAMES)
def test_help_of_every_subcommand_shows_every_default(name: str, cli, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    assert cli(["limits", name, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    config = EXPERIMENTS[name][0].Config
    for f in dataclasses.fields(config):
        flag = "--" + f.name.replace("_", "-")
        assert f"{flag} {f.name.upper()} {f.metadata['help']} (default: {_shown(f.default)})" in text
    assert f"(default: runs/limits-{name})" in text and "--overwrite" in text and "(default: 1)" in text


def test_nested_subcommand_is_named_in_errors(cli, capsys) -> None:
    assert cli(["limits", "kernel-ode", "--t1", "nan"]) == 2
    assert "infdepth limits kernel-ode: error: --t1=nan" in capsys.readouterr().err


def test_limits_is_not_data_parallel_and_refuses_torchrun(cli, capsys, monkeypatch, tmp_path) -> None:
    assert not [c for c in data_parallel_commands(build_parser()) if c.startswith("limits")]
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli(["limits", "kernel-ode", "--out", str(tmp_path / "r")]) == 2
    assert "does not run under torchrun" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_scikit_learn_is_imported_lazily() -> None:
    code = ("import sys, infdepth.experiments.limits, infdepth.cli; infdepth.cli.build_parser(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'matplotlib')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
