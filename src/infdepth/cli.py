"""The ``infdepth`` command line: a thin layer that parses, sets up ranks, calls and prints.

Every subcommand lives with its experiment and exposes ``register(subparsers)``; a
command that trains one model data-parallel says so with
``set_defaults(data_parallel=True)``.  This module wires them together, joins the
torch.distributed process group once (under torchrun) for those commands, refuses the
others under torchrun, and turns bad input into one line and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from infdepth import distributed, runfolder
from infdepth.errors import DivergenceError, InputError, check_device
from infdepth.ode import SolverError

# name -> module exposing ``register(subparsers: argparse._SubParsersAction) -> None``
SUBCOMMANDS: dict[str, str] = {
    "xor": "infdepth.experiments.depth.xor",
    "images": "infdepth.experiments.depth.images",
    "study": "infdepth.experiments.depth.study",
    "ode": "infdepth.experiments.ode",
    "limits": "infdepth.experiments.limits",
}



def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with one subparser per experiment."""
    parser = argparse.ArgumentParser(
        prog="infdepth",
        description="Infinitely deep neural networks: learned depth (g-infinity), "
        "continuous depth (neural ODEs) and depth limits (diffusions, kernels).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in SUBCOMMANDS.values():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        mod.register(sub)
    return parser


def data_parallel_commands(parser: argparse.ArgumentParser) -> list[str]:
    """The commands (``images``, ``ode params``, ...) that train data-parallel under torchrun."""
    found: list[str] = []

    def visit(p: argparse.ArgumentParser, prefix: str) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for cmd, child in action.choices.items():
                    visit(child, f"{prefix} {cmd}".strip())
        if prefix and p.get_default("data_parallel"):
            found.append(prefix)

    visit(parser, "")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``infdepth`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    name = " ".join(filter(None, (args.command, getattr(args, "subcommand", None))))
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and not getattr(args, "data_parallel", False):
        print(
            f"infdepth {name}: error: this command has nothing to train data-parallel and does not "
            f"run under torchrun (WORLD_SIZE={world}); run it in one process. Data-parallel "
            "commands: " + ", ".join(data_parallel_commands(parser)),
            file=sys.stderr,
        )
        return 2
    try:
        if world > 1:
            distributed.setup(check_device("--device", str(getattr(args, "device", "cpu"))))
        result = args.func(args)
    except (InputError, FileNotFoundError, NotADirectoryError) as exc:
        # one line: what was wrong and what is accepted (argparse's own parse errors keep
        # its usage line; `infdepth <command> --help` lists every flag)
        print(f"infdepth {name}: error: {exc}", file=sys.stderr)
        return 2
    except (DivergenceError, SolverError) as exc:
        # a run that diverged (or whose ODE solve could not go on): one line, exit code 1
        what = "training diverged" if getattr(args, "data_parallel", False) else "the solve failed"
        print(f"infdepth {name}: {what}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"infdepth {name}: interrupted; the last checkpoint is intact", file=sys.stderr)
        return 130
    finally:
        runfolder.release()
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
