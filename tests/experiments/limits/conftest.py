"""Shared fixtures of the ``infdepth limits ...`` tests: the CLI, run-folder snapshots, refusals."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch

from infdepth.cli import main


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def run_cli(argv: Sequence[str]) -> int:
    """``infdepth ARGV``'s exit code, also where argparse itself exits."""
    try:
        return main(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.fixture
def cli() -> Callable[[Sequence[str]], int]:
    """:func:`run_cli`: the exit code of ``infdepth ARGV``."""
    return run_cli


@pytest.fixture
def tree() -> Callable[[Path], dict[str, str]]:
    """:func:`snapshot`: every file of a folder with its hash."""
    return snapshot


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path) with the SHA-256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    """A previous run folder (it holds ``config.json``), which ``--overwrite`` would replace."""
    out = tmp_path / "old-run"
    (out / "sub").mkdir(parents=True)
    (out / "config.json").write_text(json.dumps({"seed": 7, "resumes": []}))
    (out / "summary.json").write_text('{"kept": true}\n')
    (out / "figure.png").write_bytes(bytes(range(256)) * 8)
    (out / "sub" / "notes.txt").write_text("untouched\n")
    return out


Refused = Callable[[str, Sequence[str], str], None]


@pytest.fixture
def refused(old_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Refused:
    """Check that ``infdepth limits NAME ARGS`` exits 2 with one error line naming ``flag``.

    Twice: into a fresh ``--out`` (which must not be created) and, with ``--overwrite``, into
    a previous run folder (which must stay byte-for-byte as it was).
    """

    def check(name: str, args: Sequence[str], flag: str) -> None:
        fresh = tmp_path / "fresh"
        before = snapshot(old_run)
        for out, extra in ((fresh, []), (old_run, ["--overwrite"])):
            code = run_cli(["limits", name, "--out", str(out), "--no-progress", *extra, *args])
            err = capsys.readouterr().err
            assert code == 2, err
            assert "Traceback" not in err
            errors = [line for line in err.splitlines() if "error:" in line]
            assert len(errors) == 1 and errors[0].startswith(f"infdepth limits {name}"), err
            assert flag in errors[0], err
        assert not fresh.exists()
        assert snapshot(old_run) == before

    return check


@pytest.fixture
def run_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Callable[[str, Sequence[str]], dict]:
    """Run ``infdepth limits NAME ARGS --seed 3`` into a fresh folder; check every output is there.

    Returns ``{"out": folder, "config": ..., "summary": ..., "stdout": ...}``.
    """

    def run(name: str, args: Sequence[str]) -> dict:
        out = tmp_path / name
        assert run_cli(["limits", name, "--out", str(out), "--seed", "3", "--no-progress", *args]) == 0
        config = json.loads((out / "config.json").read_text())
        assert config["seed"] == 3 and config["world_size"] == 1
        summary = json.loads((out / "summary.json").read_text())
        assert summary
        pngs = list(out.glob("*.png"))
        assert pngs and all(p.stat().st_size > 1000 for p in pngs)
        stdout = capsys.readouterr().out
        assert stdout.strip()
        return {"out": out, "config": config, "summary": summary, "stdout": stdout}

    return run
