"""Every numeric flag of every command, fed values a user or an attacker might type (issue 28).

The flags are found in the parser itself, so a new flag is fuzzed without a change here.
Each value is either refused (exit 2, one line on stderr naming the flag, no traceback,
nothing written) or accepted, and then only where :data:`ACCEPTED` says so: the test stops
the command where it would open its run folder, so nothing trains.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from infdepth import runfolder
from infdepth.cli import build_parser, main

FUZZ = ["nan", "inf", "-inf", "-1", "0", "1e30", str(2**64), "", "\u0661\u0662", "\uff11"]

#: the (command, flag) pairs for which some of the fuzz values are meaningful, and those values
ACCEPTED: dict[tuple[str, str], set[str]] = {
    ("xor", "--k"): {"0"},
    ("xor", "--w-l2"): {"0", "1e30", str(2**64)},
    ("xor", "--gamma-l2"): {"0", "1e30", str(2**64)},
    ("xor", "--w0"): {"-1", "0"},  # w <= 0: no sub-layer runs
    ("xor", "--lr"): {"1e30", str(2**64)},  # diverges: exit 1 at run time
    ("xor", "--dropout"): {"0"},
    ("xor", "--checkpoint-every"): {"0"},  # at the end only
    ("images", "--dropout"): {"0"},
    ("images", "--conv-w-l2"): {"0", "1e30", str(2**64)},
    ("images", "--dense-w-l2"): {"0", "1e30", str(2**64)},
    ("images", "--gamma-l2"): {"0", "1e30", str(2**64)},
    ("images", "--lr"): {"1e30", str(2**64)},
    ("images", "--w0"): {"-1", "0"},
    ("images", "--w-lr"): {"1e30", str(2**64)},
    ("images", "--alpha"): {"1e30", str(2**64)},
    ("images", "--fix-threshold"): {"0"},
    ("images", "--dw-probe"): {"0"},
    ("images", "--fixed-depth"): {"0"},
    ("images", "--precise-bn"): {"0"},
    ("images", "--compare-depths"): {"0"},
    ("study", "--fixed-depths"): {"0"},
    ("study", "--dw-probe"): {"0"},
    ("study", "--speed-rounds"): {"0"},
    ("ode params", "--lr"): {"1e30", str(2**64)},
    ("ode params", "--rtol"): {"1e30", str(2**64)},
    ("ode params", "--atol"): {"1e30", str(2**64)},
    ("ode params", "--step-size"): {"1e30", str(2**64)},
    ("ode params", "--t1-l2"): {"0"},
    ("ode params", "--kinetic-energy"): {"0", "1e30", str(2**64)},  # a weight: any finite value >= 0
    ("ode params", "--jacobian-frobenius"): {"0", "1e30", str(2**64)},
    ("ode spiral", "--noise"): {"0", "1e30", str(2**64)},
    ("ode spiral", "--lr"): {"1e30", str(2**64)},
    ("ode spiral", "--rtol"): {"1e30", str(2**64)},
    ("ode spiral", "--atol"): {"1e30", str(2**64)},
    ("limits inference", "--gp-noise"): {"1e30", str(2**64)},
    ("limits expressivity", "--times"): {"0"},
}
#: in every command: seed 0 and torch's default thread count
EVERYWHERE: dict[str, set[str]] = {"--seed": {"0"}, "--seeds": {"0"}, "--threads": {"0"}}

NUMERIC = {"integer", "number", "seed", "int_list", "float_list", "seed_list", "int_tuple"}


def _commands() -> list[tuple[tuple[str, ...], list[str]]]:
    found: list[tuple[tuple[str, ...], list[str]]] = []

    def visit(parser: argparse.ArgumentParser, prefix: tuple[str, ...]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    visit(child, (*prefix, name))
                return
        flags = [a.option_strings[0] for a in parser._actions
                 if a.option_strings and getattr(a.type, "__name__", "") in NUMERIC]
        found.append((prefix, flags))

    visit(build_parser(), ())
    return found


COMMANDS = _commands()


class Reached(BaseException):
    """The command got past every check to its run folder (not an Exception: nothing catches it)."""


def _base(command: tuple[str, ...]) -> list[str]:
    """Flags that make the command's defaults valid (``study``: the bundled data set, one member kind)."""
    if command != ("study",):
        return []
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    recipes = ["--recipes", "paper"] if "--recipes" in sub.choices["study"]._option_string_actions else []
    return ["--dataset", "digits", *recipes]


@pytest.mark.parametrize(("command", "flags"), COMMANDS, ids=[" ".join(c) for c, _ in COMMANDS])
def test_every_numeric_flag_refuses_bad_values_in_one_line(command, flags, tmp_path: Path, monkeypatch,
                                                           capsys) -> None:
    def reached(*args, **kwargs):
        raise Reached

    monkeypatch.setattr(runfolder, "_prepare", reached)
    assert flags, f"{command} has no numeric flag?"
    wrong: list[str] = []
    for flag in flags:
        accepted = ACCEPTED.get((" ".join(command), flag), set()) | EVERYWHERE.get(flag, set())
        for value in FUZZ:
            out = tmp_path / "run"
            try:
                code = main([*command, *_base(command), flag, value, "--out", str(out)])
            except SystemExit as exc:
                code = int(exc.code or 0)
            except Reached:
                code = None
            err = capsys.readouterr().err
            case = f"{flag} {value!r}"
            if code is None:
                if value not in accepted:
                    wrong.append(f"{case}: accepted")
                continue
            lines = [line for line in err.splitlines() if line.strip()]
            if value in accepted:
                wrong.append(f"{case}: refused ({err.strip()})")
            elif code != 2 or len(lines) != 1 or "Traceback" in err or flag not in err:
                wrong.append(f"{case}: exit {code}, stderr {err.strip()[-300:]!r}")
            elif out.exists() or any(tmp_path.iterdir()):
                wrong.append(f"{case}: refused but wrote into {tmp_path}")
    assert wrong == [], "\n".join(wrong)


@pytest.mark.parametrize("value", ["", " ", "a\0b"])
def test_an_out_that_names_no_folder_is_refused(value: str, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["xor", "--steps", "5", "--out", value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--out" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [c for c, _ in COMMANDS], ids=[" ".join(c) for c, _ in COMMANDS])
def test_a_misspelled_flag_is_named_by_its_own_command(command, tmp_path: Path, monkeypatch, capsys) -> None:
    """``infdepth ode spiral --stpes 3`` says so as ``infdepth ode spiral``, pointing at that
    command's ``--help`` (where the flag's spelling is), not at ``infdepth --help``."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main([*command, "--no-such-flag", "3"])
    err = capsys.readouterr().err
    name = " ".join(("infdepth", *command))
    assert info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"{name}: error: unrecognized arguments: --no-such-flag 3 (see {name} --help)")
    assert list(tmp_path.iterdir()) == []
