"""The examples of docs/learned-depth.md run as written: a doc that drifts fails here."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

from infdepth import UnregisteredGrowthWarning

DOC = Path(__file__).resolve().parents[2] / "docs" / "learned-depth.md"


def section_code(title: str) -> str:
    """The ``python`` code blocks of the ``## title`` section, joined."""
    text = DOC.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    body = text[start : end if end > 0 else len(text)]
    blocks = re.findall(r"```python\n(.*?)```", body, flags=re.S)
    assert blocks, f"no python block under '## {title}'"
    return "\n".join(blocks)


@pytest.mark.parametrize("title", ["Use it in your own loop", "Use it with Lightning"])
def test_the_example_runs(title: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the Lightning example writes its checkpoint here
    code = compile(section_code(title), f"{DOC.name}: {title}", "exec")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnregisteredGrowthWarning)  # attached: every sub-layer is stepped
        exec(code, {"__name__": "__docs_example__"})
