"""``infdepth ode``: the subcommands, their names, which of them train data-parallel."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from infdepth.cli import build_parser, data_parallel_commands
from infdepth.experiments import ode
from infdepth.experiments._common import config_from_args
from infdepth.experiments.ode import memory, params, spiral


def test_params_and_spiral_train_data_parallel_memory_does_not() -> None:
    found = data_parallel_commands(build_parser())
    assert "ode params" in found and "ode spiral" in found
    assert "ode memory" not in found


@pytest.mark.parametrize("module", [memory, params, spiral])
def test_the_flags_and_their_defaults_are_the_configs(module: object) -> None:
    """Every CLI field of ``Config`` is a flag whose default is the field's; parsing no flags
    gives ``Config()``."""
    name = module.__name__.rsplit(".", 1)[-1]  # type: ignore[attr-defined]
    args = build_parser().parse_args(["ode", name])
    assert args.command == "ode" and args.subcommand == name
    config_cls = module.Config  # type: ignore[attr-defined]
    assert config_from_args(config_cls, args) == config_cls()
    for f in dataclasses.fields(config_cls):
        if f.metadata.get("cli", True):
            assert getattr(args, f.name) == f.default, f.name


def test_the_ode_command_needs_a_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    sub = argparse.ArgumentParser(prog="infdepth").add_subparsers(dest="command")
    ode.register(sub)
    with pytest.raises(SystemExit) as exc:
        sub.choices["ode"].parse_args([])
    assert exc.value.code == 2 and "EXPERIMENT" in capsys.readouterr().err
    for name in ("memory", "params", "spiral"):
        assert sub.choices["ode"].parse_args([name]).subcommand == name
