"""Start-up cost (issue 29): ``infdepth --help`` imports no torch, and the library's imports
pull in only what a name needs.  The times themselves are measured in bench/bench_startup.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

#: modules that cost a second or so to import and that no public name needs at import time
HEAVY = ("torch._dynamo", "sympy", "scipy.stats", "sklearn", "matplotlib", "optuna", "lightning")


def _modules_after(code: str) -> set[str]:
    """The top-level-and-dotted module names loaded after running ``code`` in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys; print('\\n'.join(sys.modules))"],
                         capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_infdepth_help_imports_no_torch_and_lists_every_command() -> None:
    code = ("from infdepth.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit as e:\n"
            "    assert e.code == 0, e.code")
    loaded = _modules_after(code)
    assert not {"torch", "numpy"} & loaded, sorted(m for m in loaded if m.split(".")[0] in ("torch", "numpy"))
    out = subprocess.run([sys.executable, "-m", "infdepth", "--help"], capture_output=True, text=True).stdout
    from infdepth.cli import SUBCOMMANDS

    for name, (_, line) in SUBCOMMANDS.items():
        assert name in out and line.split()[0] in out


def test_the_help_lines_listed_without_importing_match_the_commands_own() -> None:
    import argparse

    from infdepth.cli import SUBCOMMANDS, build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    own = {c.dest: c.help for c in sub._choices_actions}
    assert own == {name: line for name, (_, line) in SUBCOMMANDS.items()}


#: every command whose ``--help`` must import no torch
LIGHT_COMMANDS = ["xor", "images", "study", "limits", "limits convergence", "limits activations",
                  "limits width-regime", "limits kernel-ode", "limits inference", "limits expressivity",
                  "ode", "ode memory", "ode params", "ode spiral"]


@pytest.mark.parametrize("command", LIGHT_COMMANDS)
def test_a_subcommand_help_imports_no_torch(command: str) -> None:
    argv = [*command.split(), "--help"]
    code = ("import contextlib, io\nfrom infdepth.cli import main\ntry:\n"
            f"    with contextlib.redirect_stdout(io.StringIO()) as help:\n        main({argv!r})\n"
            "except SystemExit as e:\n    assert e.code == 0 and 'usage:' in help.getvalue(), e.code")
    loaded = _modules_after(code)
    assert not {"torch", "numpy", "tqdm"} & loaded, sorted(
        m for m in loaded if m.split(".")[0] in ("torch", "numpy", "tqdm"))


@pytest.mark.parametrize("command", [c for c in LIGHT_COMMANDS if c not in ("limits", "ode")])
def test_a_subcommand_runs_the_module_of_its_experiment(command: str) -> None:
    import importlib

    from infdepth.cli import build_parser

    args = build_parser(command.split()[0]).parse_args(command.split())
    module, name = args.func.module, args.func.name  # deferred: imported when the command runs
    run = importlib.import_module(module)
    assert callable(getattr(run, name)) and run.Config.__module__ == module + "_config"


def test_a_subcommand_builds_its_own_parser_alone() -> None:
    loaded = _modules_after("from infdepth.cli import build_parser\nbuild_parser('limits').parse_args("
                            "['limits', 'convergence'])")
    assert "infdepth.experiments.limits" in loaded
    assert not {"infdepth.experiments.depth.xor", "infdepth.experiments.ode"} & loaded


@pytest.mark.parametrize("code", [
    "import infdepth",
    "from infdepth import InfiniteDepth, ODEBlock, odeint, fit, attach, limits",
])
def test_importing_the_library_pulls_in_no_heavy_module(code: str) -> None:
    loaded = _modules_after(code)
    assert not [m for m in HEAVY if m in loaded]


@pytest.mark.parametrize("package", ["infdepth", "infdepth.limits"])
def test_every_public_name_resolves_and_an_unknown_one_raises(package: str) -> None:
    import importlib

    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, name
    assert set(module.__all__) <= set(dir(module))
    with pytest.raises(AttributeError, match=f"module '{package}' has no attribute 'Nonexistent'"):
        module.Nonexistent  # noqa: B018


def test_a_public_name_comes_from_its_defining_module() -> None:
    import infdepth
    import infdepth.limits

    assert infdepth.InfiniteDepth.__module__.startswith("infdepth.depth")
    assert infdepth.limits.simulate.__module__ == "infdepth.limits.sde"
    assert infdepth.ode.__name__ == "infdepth.ode"
