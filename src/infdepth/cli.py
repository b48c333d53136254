"""The ``infdepth`` command line: a thin layer that parses, calls and prints.

Every subcommand lives with its experiment and exposes ``register(subparsers)``;
this module only wires them together and turns bad input into exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from infdepth.errors import DivergenceError, InputError
from infdepth.ode import SolverError

# name -> module exposing ``register(subparsers: argparse._SubParsersAction) -> None``
SUBCOMMANDS: dict[str, str] = {
    "xor": "infdepth.experiments.xor",
    "images": "infdepth.experiments.images",
    "ode": "infdepth.experiments.ode_cli",
    "limits": "infdepth.experiments.limits_cli",
}


#: commands that train one model data-parallel under torchrun (each joins the process group)
DATA_PARALLEL = ("xor", "images")


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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``infdepth`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and args.command not in DATA_PARALLEL:
        print(
            f"infdepth {args.command}: error: this command does not run under torchrun "
            f"(WORLD_SIZE={world}); run it in one process. Data-parallel commands: "
            + ", ".join(DATA_PARALLEL),
            file=sys.stderr,
        )
        return 2
    try:
        result = args.func(args)
    except (InputError, FileNotFoundError, NotADirectoryError) as exc:
        parser.print_usage(sys.stderr)
        print(f"infdepth {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (DivergenceError, SolverError) as exc:
        # a run that diverged (or whose ODE solve could not go on): one line, exit code 1
        print(f"infdepth {args.command}: training diverged: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"infdepth {args.command}: interrupted; the last checkpoint is intact", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
