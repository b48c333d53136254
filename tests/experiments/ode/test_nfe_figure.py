"""The regulariser reproduction's figure and table from ``ode params`` run folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infdepth.experiments.ode import nfe_figure


def _run(folder: Path, nfe: list[float], acc: float, seconds: float) -> Path:
    (folder / "odenet").mkdir(parents=True)
    records = [{"epoch": i + 1, "nfe_test": n, "nfe_forward": n + 1, "test_acc": acc}
               for i, n in enumerate(nfe)]
    (folder / "odenet" / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    (folder / "summary.json").write_text(json.dumps({"models": {"odenet": {"seconds": seconds}}}))
    return folder


def test_table_gives_paired_ratios_and_differences(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    plain = [_run(tmp_path / f"p{s}", [26, 32], 0.95 + 0.01 * s, 10.0) for s in range(2)]
    reg = [_run(tmp_path / f"r{s}", [20, 16 + 4 * s], 0.94 + 0.01 * s, 12.0) for s in range(2)]
    out = tmp_path / "fig.png"
    assert nfe_figure.main(["--out", str(out), "plain=" + ",".join(map(str, plain)),
                            "reg=" + ",".join(map(str, reg))]) == 0
    assert out.stat().st_size > 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| reg"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "18.00 ± 2.83"  # NFE 16 and 20
    assert cells[5] == f"{(2 + 1.6) / 2:.2f} ± {abs(2 - 1.6) / 2**0.5:.2f}"  # 32/16, 32/20
    assert cells[6] == "-1.00 ± 0.00"  # one point lower on each seed


def test_a_folder_without_a_run_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="not found"):
        nfe_figure.main(["--out", str(tmp_path / "f.png"), f"a={tmp_path}"])
