"""The shape the architecture promises (docs/architecture.md), checked on the source tree."""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "infdepth"
FILES = sorted(SRC.rglob("*.py"))


def _grep(pattern: str) -> list[str]:
    rx = re.compile(pattern)
    return [f"{p.relative_to(SRC)}:{i}" for p in FILES for i, line in enumerate(p.read_text().splitlines(), 1)
            if rx.search(line) and not line.lstrip().startswith("#")]


def test_no_source_file_is_over_about_400_lines() -> None:
    long = {str(p.relative_to(SRC)): n for p in FILES if (n := len(p.read_text().splitlines())) > 420}
    assert long == {}


def test_one_comma_list_parser() -> None:
    assert {h.split(":")[0] for h in _grep(r"ArgumentTypeError\(")} == {"experiments/_flags.py"}


def test_one_validator_family() -> None:
    """Checks of one value (``check_x(name, value, ...)``) live in errors.py, nowhere else."""
    defs = _grep(r"^def (check|validate)_\w+\(name")
    assert {h.split(":")[0] for h in defs} <= {"errors.py"}, defs


def test_one_training_loop() -> None:
    """Optimizer steps are taken in train.fit only (every trained experiment goes through it)."""
    steps = _grep(r"\b\w*opt\w*\.step\(\)")
    assert {h.split(":")[0] for h in steps} == {"train.py"}, steps


def test_no_module_level_mutable_state_in_the_solvers() -> None:
    assert _grep(r"^_[A-Z_]+ = \[") == []
