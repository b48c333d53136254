"""``infdepth ode spiral``: neural ODE against GRU through ``fit``, divergence, resume, bad flags."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from infdepth.cli import main
from infdepth.distributed import DistContext
from infdepth.errors import InputError
from infdepth.experiments._common import RunContext
from infdepth.experiments.ode import spiral
from infdepth.train import load_checkpoint

Refused = Callable[[list[str], Path, str], str]  # the ``refused`` fixture of conftest.py
TINY = ["ode", "spiral", "--n-train", "4", "--n-test", "2", "--n-obs", "6", "--n-extrap", "3",
        "--window", "3", "--iterations", "4", "--hidden", "8"]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("spiral") / "run"
    assert main([*TINY, "--out", str(out), "--no-progress"]) == 0
    return out


def test_both_models_train_and_extrapolate(run_folder: Path) -> None:
    names = {p.name for p in run_folder.iterdir()}
    assert {"config.json", "summary.json", "spiral_extrapolation.png", "ode", "gru"} <= names
    summary = json.loads((run_folder / "summary.json").read_text())
    assert summary["ode_extrap_rmse"] > 0 and summary["rnn_extrap_rmse"] > 0
    assert summary["ode_nfe_per_iteration"] > 0
    assert summary["ode_params"] == 2 * 8 + 8 + 8 * 8 + 8 + 8 * 2 + 2
    assert summary["world_size"] == 1
    for name in ("ode", "gru"):
        records = [json.loads(x) for x in (run_folder / name / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [1, 2, 3, 4]
        assert records[-1]["extrap_rmse"] == summary[f"{'ode' if name == 'ode' else 'rnn'}_extrap_rmse"]


def test_window_batches_are_a_pure_function_of_the_step() -> None:
    obs = torch.randn(5, 7, 3)
    a, b = spiral.window_batches(obs, 3, seed=0), spiral.window_batches(obs, 3, seed=0)
    x3, y3 = a(3)
    a(0)
    assert torch.equal(a(3)[0], x3) and torch.equal(b(3)[0], x3) and torch.equal(y3, x3[:, 1:, 1:])
    assert x3.shape == (5, 3, 3)
    assert not torch.equal(a(4)[0], x3)
    # each window is consecutive observations of its own trajectory
    for i in range(5):
        start = int((obs[i, :, 0] == x3[i, 0, 0]).nonzero()[0])
        assert torch.equal(x3[i], obs[i, start : start + 3])


def test_a_diverging_training_ends_with_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``ode spiral --lr 1e6``: the field blows up and the solver gives up: one line, no traceback."""
    code = main(["ode", "spiral", "--lr", "1e6", "--iterations", "3", "--out", str(tmp_path / "run"),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert "training diverged" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_folder: Path, refused: Refused
) -> None:
    cut = tmp_path / "cut"
    real = spiral.window_batches

    def stops_at_step_3(*args: Any) -> Callable[[int], Any]:
        batch = real(*args)

        def stopping(step: int) -> Any:
            if step == 3:
                raise KeyboardInterrupt
            return batch(step)

        return stopping

    monkeypatch.setattr(spiral, "window_batches", stops_at_step_3)
    assert main([*TINY, "--out", str(cut), "--no-progress"]) == 130
    assert load_checkpoint(cut / "ode" / "checkpoint.pt")["step"] == 3
    monkeypatch.setattr(spiral, "window_batches", real)
    refused([*TINY, "--noise", "0.5", "--resume"], cut, "--noise")
    asked: list[int] = []

    def recording(*args: Any) -> Callable[[int], Any]:
        batch = real(*args)
        return lambda step: asked.append(step) or batch(step)

    monkeypatch.setattr(spiral, "window_batches", recording)
    assert main([*TINY, "--out", str(cut), "--no-progress", "--resume"]) == 0
    assert asked == [3]  # continued from the checkpoint at step 3, not started again
    for name in ("ode", "gru"):
        a = load_checkpoint(run_folder / name / "checkpoint.pt")["model"]
        b = load_checkpoint(cut / name / "checkpoint.pt")["model"]
        for key, value in a.items():
            assert torch.equal(value, b[key]), (name, key)
    sa, sb = (json.loads((f / "summary.json").read_text()) for f in (run_folder, cut))
    for key in ("ode_seconds", "rnn_seconds"):
        del sa[key], sb[key]
    assert sa == sb


@pytest.mark.parametrize(
    ("flags", "flag"),
    [
        (["--window", "1"], "--window"),
        (["--window", "7"], "--window"),
        (["--t-end", "1.0"], "--t-end"),
        (["--t-obs", "0"], "--t-obs"),
        (["--rtol", "-1"], "--rtol"),
        (["--atol", "nan"], "--atol"),
        (["--noise", "-1"], "--noise"),
        (["--lr", "0"], "--lr"),
        (["--n-train", "0"], "--n-train"),
        (["--n-test", "0"], "--n-test"),
        (["--n-obs", "2"], "--n-obs"),
        (["--n-extrap", "0"], "--n-extrap"),
        (["--iterations", "0"], "--iterations"),
        (["--hidden", "0"], "--hidden"),
        (["--hidden", "1000000"], "--hidden"),
        (["--n-obs", "1000000000000"], "--n-obs"),
        (["--n-train", "100000000", "--hidden", "64"], "--n-train"),
        (["--seed", "-1"], "--seed"),
        (["--device", "cuda:7" if not torch.cuda.is_available() else "tpu"], "--device"),
    ],
)
def test_a_bad_flag_is_refused_before_anything_is_written(
    flags: list[str], flag: str, run_folder: Path, tmp_path: Path, refused: Refused
) -> None:
    refused([*TINY, *flags], tmp_path / "fresh", flag)
    refused([*TINY, *flags, "--overwrite"], run_folder, flag)
    refused([*TINY, *flags, "--resume"], run_folder, flag)


def test_trajectories_that_do_not_split_over_the_processes_are_refused(tmp_path: Path) -> None:
    ctx = RunContext(out=tmp_path / "run", progress=False, dist=DistContext(rank=0, world=3))
    config = spiral.Config(n_train=4, n_test=2, n_obs=6, n_extrap=3, window=3, iterations=1, hidden=8)
    with pytest.raises(InputError, match=r"--n-train=4 .* 3 processes"):
        spiral.run(config, ctx)
    assert not (tmp_path / "run").exists()
