"""``infdepth study --status``: where a study stands, read from its folder without changing it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from infdepth.cli import main

optuna = pytest.importorskip("optuna", reason="the search's optional extra is not installed: "
                             "pip install 'infdepth[search]'")

ARGV = ["study", "--dataset", "digits", "--epochs", "2", "--seeds", "0", "--fixed-depths", "1,2",
        "--recipes", "learn-then-fix", "--channels", "4", "--dense-units", "16", "--batch-size", "128",
        "--search", "--speed-rounds", "0", "--no-progress"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _status(out: Path, capsys) -> dict[str, list[str]]:
    """``--status``'s rows by member (its columns split on runs of spaces), and the count line."""
    capsys.readouterr()
    assert main(["study", "--out", str(out), "--status"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:4] == ["member", "state", "epochs", "test"]
    rows = {line.split()[0]: [c for c in line.split("  ") if c.strip()] for line in lines[1:-1]}
    return {**{m: [c.strip() for c in r] for m, r in rows.items()}, "counts": [lines[-1]]}


def test_status_reports_every_member_and_changes_nothing(tmp_path, capsys) -> None:
    out = tmp_path / "study"
    assert main([*ARGV, "--out", str(out)]) == 0
    before = _snapshot(out)
    rows = _status(out, capsys)
    assert _snapshot(out) == before  # read only: safe beside the training study
    members = {"learned-s0", "fixed2-s0", "fixed1-s0", "learn-then-fix-s0", "search-sha-s0"}
    assert set(rows) - {"counts"} == members
    assert rows["counts"] == ["5 done, 0 in flight, 0 not started"]
    for name in members - {"search-sha-s0"}:
        row = json.loads((out / name / "study_row.json").read_text())
        assert rows[name][1:4] == ["done", "2/2", f"{row['final_test_acc_precise_bn']:.4f}"]
    summary = json.loads((out / "summary.json").read_text())
    search = next(r for r in summary["rows"] if r["member"] == "search-sha-s0")
    assert rows["search-sha-s0"][1:4] == ["done", "2/2", f"{search['final_test_acc_precise_bn']:.4f}"]
    assert f"depth {search['search_depth']} complete at 2" in rows["search-sha-s0"][4]

    # mid-study: learn-then-fix trained but not reported yet, fixed2 not started, the search's
    # depth 1 queued again (a killed worker's retry)
    (out / "learn-then-fix-s0" / "study_row.json").unlink()
    shutil.rmtree(out / "fixed2-s0")
    (out / "search-sha-s0" / "study_row.json").unlink()
    storage = f"sqlite:///{out / 'search-sha-s0' / 'search.db'}"
    optuna.load_study(study_name="depth-search-s0", storage=storage).enqueue_trial({"depth": 1})
    rows = _status(out, capsys)
    assert rows["counts"] == ["2 done, 2 in flight, 1 not started"]
    assert list(rows)[0] == "learn-then-fix-s0"  # in the order a resume trains them: in flight first
    metrics = (out / "learn-then-fix-s0" / "metrics.jsonl").read_text().splitlines()
    last = [json.loads(line) for line in metrics if "test_acc" in line][-1]
    fixed = "/".join(map(str, last["active_blocks"].values()))
    assert rows["learn-then-fix-s0"][1:5] == ["in flight", "2/2", f"{last['test_acc']:.4f}",
                                              f"plain eval; depth fixed at {fixed}"]
    assert rows["fixed2-s0"][1:3] == ["not started", "0/2"]
    assert rows["search-sha-s0"][1] == "in flight" and "depth 1 waiting at 0" in rows["search-sha-s0"][-1]


@pytest.mark.parametrize("kind", ["missing", "other command"])
def test_status_of_a_folder_without_a_study_is_refused(kind, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    if kind == "other command":
        out.mkdir()
        (out / "config.json").write_text(json.dumps({"steps": 5, "seeds": [0]}))
    before = _snapshot(tmp_path)
    assert main(["study", "--out", str(out), "--status"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--status" in err and str(out) in err and "Traceback" not in err
    assert _snapshot(tmp_path) == before and out.exists() == (kind == "other command")


def test_a_reader_that_goes_away_ends_the_status_quietly(tmp_path) -> None:
    """``infdepth study --status | head -1``: the pipe closes before the table is written;
    the command ends as a process killed by SIGPIPE would (141), with no error line."""
    import subprocess
    import sys

    out = tmp_path / "study"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"dataset": "digits", "epochs": 1, "seeds": [0, 1, 2],
                                                 "fixed_depths": [1, 2, 3], "recipes": []}))
    proc = subprocess.Popen([sys.executable, "-m", "infdepth", "study", "--out", str(out), "--status"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the command has imported anything: its first write fails
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""
