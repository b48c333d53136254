"""``infdepth ode params``: ResNets against the ODE-Net through ``fit``, learned t1, resume, bad flags."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from infdepth.cli import main
from infdepth.errors import InputError
from infdepth.experiments.ode import params
from infdepth.models.odenet import ode_block
from infdepth.ode import JacobianFrobenius, KineticEnergy
from infdepth.train import load_checkpoint

Refused = Callable[[list[str], Path, str], str]  # the ``refused`` fixture of conftest.py
TINY = ["ode", "params", "--epochs", "1", "--train-subset", "64", "--batch", "32", "--channels", "4",
        "--res-blocks", "2", "--rtol", "1e-2", "--atol", "1e-2"]
ODENET = ["ode", "params", "--models", "odenet", "--epochs", "2", "--train-subset", "64", "--batch", "32",
          "--channels", "4", "--rtol", "1e-2", "--atol", "1e-2"]


def _summary(out: Path) -> dict[str, Any]:
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("params") / "run"
    assert main([*TINY, "--out", str(out), "--no-progress"]) == 0
    return out


def test_params_accuracy_and_nfe_of_every_model(run_folder: Path) -> None:
    names = {p.name for p in run_folder.iterdir()}
    assert {"config.json", "summary.json", "params_vs_accuracy.png", *params.KINDS} <= names
    summary = _summary(run_folder)
    assert summary["world_size"] == 1
    assert json.loads((run_folder / "config.json").read_text())["world_size"] == 1
    rows = summary["models"]
    assert list(rows) == list(params.KINDS)
    assert rows["resnet"]["params"] > rows["resnet-1"]["params"]
    assert rows["resnet"]["params"] > rows["odenet"]["params"]
    assert rows["odenet"]["nfe_forward"] > 0 and rows["odenet"]["nfe_backward"] > 0
    assert rows["resnet"]["nfe_forward"] is None and rows["resnet"]["t1"] is None
    assert rows["odenet"]["t1"] == 1.0  # fixed without --learn-t1
    for kind, row in rows.items():
        records = [json.loads(x) for x in (run_folder / kind / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [2]  # 64 images, batch 32: one epoch of 2 steps
        assert records[-1]["test_acc"] == row["test_acc"]
        assert row["test_error"] == pytest.approx(1 - row["test_acc"])
        assert row["kind"] == kind and row["images_per_second"] == pytest.approx(64 / row["seconds"])
        assert load_checkpoint(run_folder / kind / "checkpoint.pt")["step"] == 2


def test_learn_t1_trains_the_end_time_with_its_penalty(tmp_path: Path) -> None:
    out = tmp_path / "t1"
    assert main([*ODENET, "--learn-t1", "--t1-l2", "0.5", "--out", str(out), "--no-progress"]) == 0
    row = _summary(out)["models"]["odenet"]
    assert row["t1"] != 1.0
    state = load_checkpoint(out / "odenet" / "checkpoint.pt")["model"]
    t1 = [v for k, v in state.items() if k.endswith("t1")]
    assert len(t1) == 1 and float(t1[0]) == pytest.approx(row["t1"])
    records = [json.loads(x) for x in (out / "odenet" / "metrics.jsonl").read_text().splitlines()]
    # fit adds the ODEBlock's penalty (logged as the mean over the epoch's steps)
    assert records[-1]["penalty"] == pytest.approx(0.5 * row["t1"] ** 2, rel=0.1)
    block = ode_block(params.build_model("odenet", params.Config(learn_t1=True), (1, 8, 8), 10))
    assert block is not None and isinstance(block.t1, torch.nn.Parameter)


def test_regularisers_are_integrated_and_reach_the_loss(tmp_path: Path) -> None:
    out = tmp_path / "reg"
    assert main([*ODENET, "--kinetic-energy", "0.5", "--jacobian-frobenius", "0.25", "--out", str(out),
                 "--no-progress"]) == 0
    records = [json.loads(x) for x in (out / "odenet" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["penalty"] > 0 for r in records)  # fit adds the integrals to the loss
    row = _summary(out)["models"]["odenet"]
    assert row["nfe_test"] == records[-1]["nfe_test"] > 0  # the plain solve of evaluation
    config = params.Config(channels=4, kinetic_energy=0.5, jacobian_frobenius=0.25)
    block = ode_block(params.build_model("odenet", config, (1, 8, 8), 10))
    assert block is not None and block.regularisers == (KineticEnergy(0.5), JacobianFrobenius(0.25))
    assert not block.control_integrals  # the state alone steers the steps unless asked
    config = params.Config(channels=4, kinetic_energy=0.5, control_integrals=True)
    controlled = ode_block(params.build_model("odenet", config, (1, 8, 8), 10))
    assert controlled is not None and controlled.control_integrals
    block.train()
    block(torch.rand(2, 4, 4, 4))
    assert float(block.penalty().detach()) > 0


def test_nfe_are_counted_per_training_step_of_each_epoch(tmp_path: Path) -> None:
    out = tmp_path / "nfe"
    assert main([*ODENET, "--step-size", "0.5", "--out", str(out), "--no-progress"]) == 0
    block = ode_block(params.build_model("odenet", params.Config(channels=4, step_size=0.5), (1, 8, 8), 10))
    assert block is not None
    block(torch.rand(2, 4, 4, 4))
    per_solve = block.nfe_forward  # fixed steps: the same count for every batch
    records = [json.loads(x) for x in (out / "odenet" / "metrics.jsonl").read_text().splitlines()]
    assert [r["nfe_forward"] for r in records] == [per_solve, per_solve]
    assert all(r["nfe_backward"] > 0 for r in records)


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused: Refused
) -> None:
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main([*ODENET, "--out", str(whole), "--no-progress"]) == 0
    real = params.epoch_batches

    def stops_at_step_3(*args: Any, **kw: Any) -> Callable[[int], Any]:
        batch = real(*args, **kw)

        def stopping(step: int) -> Any:
            if step == 3:
                raise KeyboardInterrupt
            return batch(step)

        return stopping

    monkeypatch.setattr(params, "epoch_batches", stops_at_step_3)
    assert main([*ODENET, "--out", str(cut), "--no-progress"]) == 130
    assert load_checkpoint(cut / "odenet" / "checkpoint.pt")["step"] == 2
    assert not (cut / "summary.json").exists()
    monkeypatch.setattr(params, "epoch_batches", real)
    refused([*ODENET, "--lr", "0.5", "--resume"], cut, "--lr")  # a changed setting is refused
    asked: list[int] = []

    def recording(*args: Any, **kw: Any) -> Callable[[int], Any]:
        batch = real(*args, **kw)
        return lambda step: asked.append(step) or batch(step)

    monkeypatch.setattr(params, "epoch_batches", recording)
    assert main([*ODENET, "--out", str(cut), "--no-progress", "--resume"]) == 0
    assert asked == [2, 3]  # continued from the checkpoint at step 2, not started again
    a = load_checkpoint(whole / "odenet" / "checkpoint.pt")
    b = load_checkpoint(cut / "odenet" / "checkpoint.pt")
    assert a["step"] == b["step"] == 4
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    ra, rb = _summary(whole)["models"]["odenet"], _summary(cut)["models"]["odenet"]
    for key in ("seconds", "images_per_second"):
        del ra[key], rb[key]
    assert ra == rb


@pytest.mark.parametrize(
    ("flags", "flag"),
    [
        (["--dataset", "cifar"], "--dataset"),
        (["--data-dir", "/nonexistent"], "--data-dir"),
        (["--models", "odenet,vgg"], "--models"),
        (["--models", "odenet,odenet"], "--models"),
        (["--models", ""], "--models"),
        (["--epochs", "0"], "--epochs"),
        (["--batch", "0"], "--batch"),
        (["--batch", "100"], "--batch"),
        (["--batch", "1000000000000"], "--batch"),
        (["--channels", "0"], "--channels"),
        (["--channels", "1000000"], "--channels"),
        (["--res-blocks", "0"], "--res-blocks"),
        (["--lr", "0"], "--lr"),
        (["--lr", "nan"], "--lr"),
        (["--rtol", "-1"], "--rtol"),
        (["--atol", "inf"], "--atol"),
        (["--step-size", "1e-9"], "--step-size"),
        (["--t1-l2", "0.1"], "--t1-l2"),
        (["--t1-l2", "-1", "--learn-t1"], "--t1-l2"),
        (["--kinetic-energy", "-1"], "--kinetic-energy"),
        (["--jacobian-frobenius", "nan"], "--jacobian-frobenius"),
        (["--models", "resnet", "--jacobian-frobenius", "0.1"], "--jacobian-frobenius"),
        (["--control-integrals"], "--control-integrals"),
        (["--train-subset", "0"], "--train-subset"),
        (["--train-subset", "100000"], "--train-subset"),
        (["--train-subset", "1000000000000"], "--train-subset"),
        (["--seed", "-1"], "--seed"),
        (["--device", "tpu"], "--device"),
        (["--threads", "-1"], "--threads"),
    ],
)
def test_a_bad_flag_is_refused_before_anything_is_written(
    flags: list[str], flag: str, run_folder: Path, tmp_path: Path, refused: Refused
) -> None:
    refused([*TINY, *flags], tmp_path / "fresh", flag)
    refused([*TINY, *flags, "--overwrite"], run_folder, flag)
    refused([*TINY, *flags, "--resume"], run_folder, flag)


def test_an_existing_run_is_kept_without_overwrite(run_folder: Path, refused: Refused) -> None:
    refused(TINY, run_folder, "--out")


def test_a_batch_that_does_not_split_over_the_processes_is_refused() -> None:
    config = params.Config(batch=33)
    with pytest.raises(InputError, match=r"--batch=33 .* 2 processes"):
        params.check_sizes(config, 1437, (1, 8, 8), world=2)
    params.check_sizes(config, 1437, (1, 8, 8), world=1)
    params.check_sizes(params.Config(batch=34), 1437, (1, 8, 8), world=2)
