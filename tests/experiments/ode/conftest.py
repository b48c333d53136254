"""Helpers of the ``infdepth ode ...`` tests: one thread, and the check that bad input is refused."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from infdepth.cli import main


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


Refused = Callable[[list[str], Path, str], str]


@pytest.fixture
def refused(capsys: pytest.CaptureFixture[str]) -> Refused:
    """``refused(argv, out, flag)``: the command exits 2 with one error line naming ``flag``,
    and the run folder ``out`` is byte-for-byte what it was. Returns the error line."""

    def check(argv: list[str], out: Path, flag: str) -> str:
        before = snapshot(out) if out.exists() else None
        capsys.readouterr()
        try:
            code = main([*argv, "--out", str(out), "--no-progress"])
        except SystemExit as exc:  # argparse refuses what its types cannot parse
            code = exc.code
        err = capsys.readouterr().err
        assert code == 2, err
        assert "Traceback" not in err
        lines = [line for line in err.splitlines() if "error:" in line]
        assert len(lines) == 1, err
        assert flag in lines[0], lines[0]
        if before is None:
            assert not out.exists(), "a refused fresh run must not create its run folder"
        else:
            assert snapshot(out) == before, "a refused command changed the run folder"
        return lines[0]

    return check
