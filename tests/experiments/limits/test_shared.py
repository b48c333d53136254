"""Run folders of ``infdepth limits ...``: what a fresh run refuses and what --overwrite replaces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FAST = ["kernel-ode", "--widths", "4", "--depths", "2", "--samples", "2", "--inputs", "2",
        "--activations", "relu", "--no-progress"]


def _limits(cli, out: Path, *extra: str) -> int:
    return cli(["limits", *FAST, "--out", str(out), *extra])


def test_fresh_run_refuses_a_previous_run_without_overwrite(cli, tree, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert _limits(cli, out, "--seed", "1") == 0
    before = tree(out)
    capsys.readouterr()
    assert _limits(cli, out, "--seed", "2") == 2
    err = capsys.readouterr().err
    assert f"--out={out} already holds files" in err and "Traceback" not in err
    assert tree(out) == before


def test_overwrite_replaces_a_previous_run(cli, tmp_path) -> None:
    out = tmp_path / "run"
    assert _limits(cli, out, "--seed", "1") == 0
    (out / "stray.txt").write_text("from the old run")
    assert _limits(cli, out, "--seed", "2", "--overwrite") == 0
    assert not (out / "stray.txt").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 2 and config["resumes"] == []
    assert json.loads((out / "summary.json").read_text())["world_size"] == 1


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_a_folder_that_is_not_a_run_is_left_alone(overwrite: list[str], cli, tree, tmp_path, capsys) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    before = tree(out)
    assert _limits(cli, out, *overwrite) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "Traceback" not in err
    assert tree(out) == before


def test_out_that_is_a_file_exits_2(cli, tmp_path, capsys) -> None:
    out = tmp_path / "file.txt"
    out.write_text("not a folder")
    assert _limits(cli, out) == 2
    err = capsys.readouterr().err
    assert f"--out={out} is not accepted" in err and "Traceback" not in err
    assert out.read_text() == "not a folder"
    assert _limits(cli, out / "below") == 2
    assert "is a file, not a folder" in capsys.readouterr().err
