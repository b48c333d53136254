"""``infdepth ode memory``: the memory claim at toy size, its flags, its run folder."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from infdepth.cli import main
from infdepth.experiments.ode.memory import Config

Refused = Callable[[list[str], Path, str], str]  # the ``refused`` fixture of conftest.py
TINY = ["ode", "memory", "--depths", "1,4", "--width", "8", "--batch", "4"]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("memory") / "run"
    assert main([*TINY, "--out", str(out), "--no-progress"]) == 0
    return out


def test_adjoint_memory_does_not_grow_with_depth(run_folder: Path) -> None:
    assert {"config.json", "summary.json", "memory_vs_depth.png"} <= {p.name for p in run_folder.iterdir()}
    summary = json.loads((run_folder / "summary.json").read_text())
    by = {(r["kind"], r["depth"]): r["saved_bytes"] for r in summary["rows"]}
    # the claim, at toy size: backprop memory grows with depth, the adjoint's does not
    assert by[("ode-backprop", 4)] > by[("ode-backprop", 1)]
    assert by[("resnet", 4)] > by[("resnet", 1)]
    assert by[("ode-adjoint", 4)] == by[("ode-adjoint", 1)]
    assert summary["world_size"] == 1
    assert json.loads((run_folder / "config.json").read_text())["world_size"] == 1


def test_defaults_come_from_the_config() -> None:
    from infdepth.cli import build_parser

    args = build_parser().parse_args(["ode", "memory"])
    assert args.subcommand == "memory"
    assert (args.depths, args.width, args.batch) == (Config.depths, Config.width, Config.batch)


@pytest.mark.parametrize(
    ("flags", "flag"),
    [
        (["--depths", "0,2"], "--depths"),
        (["--width", "0"], "--width"),
        (["--batch", "-3"], "--batch"),
        (["--seed", "-1"], "--seed"),
        (["--device", "tpu"], "--device"),
        (["--width", "1000000"], "--width"),
        (["--batch", "100000000000"], "--batch"),
        (["--depths", "1,100000000000"], "--depths"),
        (["--depths", "1,2,1"], "--depths"),
        (["--depths", "1,20000"], "--depths"),  # more Euler steps than an ODE block takes
        (["--depths", "2048", "--width", "2048"], "--depths"),
    ],
)
def test_a_bad_flag_is_refused_before_anything_is_written(
    flags: list[str], flag: str, run_folder: Path, tmp_path: Path, refused: Refused
) -> None:
    refused([*TINY, *flags], tmp_path / "fresh", flag)
    refused([*TINY, *flags, "--overwrite"], run_folder, flag)


def test_an_existing_run_is_kept_without_overwrite(run_folder: Path, refused: Refused) -> None:
    refused(TINY, run_folder, "--out")
