"""The ``infdepth`` command line: a thin layer that parses, sets up ranks, calls and prints.

Every subcommand lives with its experiment and exposes ``register(subparsers)``; a
command that trains one model data-parallel says so with
``set_defaults(data_parallel=True)``.  This module wires them together, joins the
torch.distributed process group once (under torchrun) for those commands, refuses the
others under torchrun, and turns every failure into one line on stderr and an exit code:

- 0: done;
- 1: the run could not go on: training diverged, an ODE solve failed, the disk is full,
  another torchrun rank died (the last checkpoint is intact; ``--resume`` continues);
- 2: refused before anything changed: a bad flag, a file or folder that cannot be used, a
  run folder in use, a resume that does not fit the run;
- 130: interrupted (Ctrl-C); 143: terminated (SIGTERM); checkpoints stay intact.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from infdepth._interrupt import TermWatch, _is_command
from infdepth.errors import DivergenceError, InputError, brief, check_device

# name -> (module exposing ``register(subparsers: argparse._SubParsersAction) -> None``, its
# one-line help).  Only the command being run is imported: ``infdepth --help`` lists the
# others from here without torch (a test checks that the lines match the modules' own), and
# the modules named are torch-free, so ``infdepth xor --help`` (or ``ode params --help``) is too.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "xor": ("infdepth.experiments.depth.xor_config",
            "reproduce the XOR experiment (learned depth against task difficulty)"),
    "images": ("infdepth.experiments.depth.images_config",
               "reproduce the MNIST experiment (all-g-infinity CNN) on digits, MNIST or Fashion-MNIST"),
    "study": ("infdepth.experiments.depth.study_config",
              "learned, fixed and continuous depth side by side on one data set (resumable)"),
    "ode": ("infdepth.experiments.ode", "continuous depth: neural ODE reproductions"),
    "limits": ("infdepth.experiments.limits", "depth limits of random ResNets: diffusions, laws, kernels"),
}


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: what was wrong, and where help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is: it unwinds like Ctrl-C (atomic writes stay whole)."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated


def _settle(watch: TermWatch | None) -> None:
    """The command is ending (its one line is next): a SIGTERM now must not raise into it."""
    if threading_main():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if watch is not None:
        watch.settled()


def _peer_lost(exc: RuntimeError) -> bool:
    """Whether ``exc`` is a collective that failed because another rank is gone."""
    import torch.distributed as dist

    text = str(exc)
    return isinstance(exc, getattr(dist, "DistError", ())) or any(
        word in text for word in ("gloo", "NCCL", "Connection reset", "Connection closed"))


def _os_error(exc: OSError) -> str:
    """An OS error on one line: what failed, on which path."""
    where = ": ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
    what = exc.strerror or str(exc)
    return f"{what}: {where}" if where else what


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser, with one subparser per experiment.

    ``only=None`` imports every experiment and registers all their flags; ``only="xor"``
    imports that one alone and lists the others by name and help line, which is what
    :func:`main` does (``only=""``: none imported, as for ``infdepth --help``).
    """
    parser = _Parser(
        prog="infdepth",
        description="Infinitely deep neural networks: learned depth (g-infinity), "
        "continuous depth (neural ODEs) and depth limits (diffusions, kernels).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_line) in SUBCOMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=help_line)  # listed, not imported: never the command parsed
            continue
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        mod.register(sub)
    return parser


def _command(argv: Sequence[str]) -> str:
    """The subcommand named in ``argv`` ("" if none or not one of ours: argparse will say so)."""
    words = [a for a in argv if not a.startswith("-")]
    return words[0] if words and words[0] in SUBCOMMANDS else ""


def _leaf(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the (sub)command ``args`` came from (``infdepth ode spiral``'s, say)."""
    for name in (args.command, getattr(args, "subcommand", None)):
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None or name not in sub.choices:
            break
        parser = sub.choices[name]
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
    """Entry point of the ``infdepth`` console script; returns the exit code (see the module's doc)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = build_parser(_command(argv))  # imports the command's experiment (torch: seconds)
        args, extra = parser.parse_known_args(argv)  # --help and bad flags end here
        if extra:  # said by the command that was given them, pointing at its own --help
            _leaf(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
        from infdepth import distributed, runfolder  # what running any command needs
        from infdepth.ode import SolverError

        load = getattr(args.func, "load", None)
        if load is not None:  # the command's own modules, while Ctrl-C still ends it at once
            load()
    except KeyboardInterrupt:  # Ctrl-C may well come during those imports
        print("infdepth: interrupted", file=sys.stderr)
        return 130
    if threading_main():  # the imports are done: Ctrl-C unwinds as KeyboardInterrupt again
        signal.signal(signal.SIGINT, signal.default_int_handler)
    name = " ".join(filter(None, (args.command, getattr(args, "subcommand", None))))
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and not getattr(args, "data_parallel", False):
        print(
            f"infdepth {name}: error: this command has nothing to train data-parallel and does not "
            f"run under torchrun (WORLD_SIZE={world}); run it in one process. Data-parallel "
            "commands: " + ", ".join(data_parallel_commands(build_parser())),
            file=sys.stderr,
        )
        return 2
    on_term = signal.getsignal(signal.SIGTERM)
    watch = None
    if threading_main():
        signal.signal(signal.SIGTERM, _terminate)
        if _is_command():  # this process is the command: a SIGTERM ends it, even blocked in C
            watch = TermWatch(name)
    code = 2  # until the command says otherwise: refused (or an unexpected error, whose traceback is a bug)
    try:
        if world > 1:
            distributed.setup(check_device("--device", str(getattr(args, "device", "cpu"))))
        code = int(args.func(args) or 0)
    except InputError as exc:
        _settle(watch)
        # one line: what was wrong and what is accepted (`infdepth <command> --help` lists every flag)
        print(f"infdepth {name}: error: {exc}", file=sys.stderr)
    except (DivergenceError, SolverError) as exc:
        _settle(watch)
        # a run that diverged (or whose ODE solve could not go on): one line, exit code 1
        what = "training diverged" if getattr(args, "data_parallel", False) else "the solve failed"
        print(f"infdepth {name}: {what}: {exc}", file=sys.stderr)
        code = 1
    except BrokenPipeError:  # the reader of stdout went away (`infdepth ... | head`): nothing to say
        _settle(watch)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush goes nowhere
        code = 141  # as a process ended by SIGPIPE
    except OSError as exc:
        _settle(watch)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # the run could not go on: exit 1, as a divergence
            print(f"infdepth {name}: stopped: {_os_error(exc)}; the checkpoints written before are intact: "
                  "free space, then --resume", file=sys.stderr)
            code = 1
        else:  # a path that cannot be used (permissions, a name too long, a folder in a file's place)
            print(f"infdepth {name}: error: {_os_error(exc)}", file=sys.stderr)
    except RuntimeError as exc:
        _settle(watch)
        if world <= 1 or not _peer_lost(exc):
            raise
        # another rank died (killed, out of memory): the survivors say so in one line each
        print(f"infdepth {name}: another process of this run stopped ({brief(exc, 160)}); the last "
              "checkpoint is intact: --resume continues it, with any process count", file=sys.stderr)
        code = 1
    except Terminated:
        _settle(watch)
        print(f"infdepth {name}: terminated; the last checkpoint is intact", file=sys.stderr)
        code = 143
    except KeyboardInterrupt:
        _settle(watch)
        print(f"infdepth {name}: interrupted; the last checkpoint is intact", file=sys.stderr)
        code = 130
    finally:
        if watch is not None:
            watch.close()
        if threading_main():
            signal.signal(signal.SIGTERM, on_term)
            if _is_command():  # this process is the command, and it is ending: a Ctrl-C that
                # arrives now (or one Python still holds pending) must not turn the exit code
                # into a KeyboardInterrupt; a program that calls main() keeps its own Ctrl-C
                signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if code == 2:
                runfolder.undo()  # a refused resume leaves its run folder as it found it
        finally:
            runfolder.forget()
            runfolder.release()
    return code


def threading_main() -> bool:
    """Whether this is the main thread (the only one that may set signal handlers)."""
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
