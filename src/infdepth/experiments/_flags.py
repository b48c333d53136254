"""The command line of an experiment, torch-free: flags derived from its ``Config``, comma lists.

``infdepth SUBCOMMAND --help`` builds its parser from these alone, so help costs no torch
(issue 29); :mod:`infdepth.experiments._common` re-exports every name for the experiments.

- :func:`option` makes a ``Config`` field that carries its ``--help`` text;
- :func:`add_config_arguments` derives one flag per field, :func:`config_from_args` turns
  the parsed flags back into the (validated) ``Config``;
- :func:`add_run_arguments` adds ``--out`` and the other run flags;
- :func:`deferred` is a command's ``func``: it imports the experiment's module (torch) only
  when the command runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import field, fields
from pathlib import Path
from typing import Any, TypeVar, cast

__all__ = [
    "INT_MAX", "MAX_SUBLAYERS", "SEED_MAX", "add_config_arguments", "add_run_arguments", "config_dict",
    "config_from_args", "deferred", "flag_of", "float_list", "int_list", "int_tuple", "integer", "number",
    "option", "out_path", "seed", "seed_list", "str_list",
]

C = TypeVar("C")

# ---------------------------------------------------------------- numbers on the command line

#: the largest integer a flag takes: torch and NumPy hold counts and seeds in 64 bits
INT_MAX = 2**63 - 1
#: seeds are integers in [0, SEED_MAX] (NumPy's range; derived seeds stay within 64 bits)
SEED_MAX = 2**32 - 1
#: the most sub-layers a learned-depth flag may ask for at once (``--w0``, ``--grow-step``):
#: each is built when the run starts or grows, so a larger value only stalls the run
MAX_SUBLAYERS = 10_000


def _ascii(text: str, what: str) -> str:
    # int() and float() read any script's digits ("١٢" is 12): a flag takes ASCII only
    if not text.isascii():
        raise ValueError(f"{text!r} is not {what} (ASCII digits only)")
    return text


def _int(text: str) -> int:
    try:
        return int(_ascii(text, "an integer"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def integer(text: str) -> int:
    """argparse type: an integer written in ASCII digits, within 64 bits (``|n| <= 2**63 - 1``)."""
    value = _int(text)
    if abs(value) > INT_MAX:
        raise argparse.ArgumentTypeError(f"{text} is not accepted; expected an integer of at most {INT_MAX}")
    return value


def number(text: str) -> float:
    """argparse type: a number written in ASCII (the ``Config`` checks its range and finiteness)."""
    try:
        return float(_ascii(text, "a number"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def seed(text: str) -> int:
    """argparse type: a seed, an integer in ``[0, SEED_MAX]``."""
    value = _int(text)
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"{text} is not accepted; expected a seed in [0, {SEED_MAX}]")
    return value


def out_path(text: str) -> Path:
    """argparse type of ``--out``: a non-empty path (an empty one would mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not accepted; expected a folder name")
    if "\0" in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not accepted; a path holds no NUL character")
    return Path(text)


# ---------------------------------------------------------------- comma-separated lists


def _listed(text: str, kind: Callable[[str], Any], what: str, *, unique: bool = True) -> tuple[Any, ...]:
    try:
        values = tuple(kind(v.strip()) for v in text.split(",") if v.strip())
    except (ValueError, argparse.ArgumentTypeError) as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {what} ({exc})") \
            from None
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} is empty; expected at least one value")
    if unique and len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text!r} repeats an entry; give each value once")
    return values


def int_list(text: str) -> tuple[int, ...]:
    """argparse type: ``"1,2,8"`` -> ``(1, 2, 8)`` (non-empty, no repeats)."""
    return _listed(text, integer, "integers")


def seed_list(text: str) -> tuple[int, ...]:
    """argparse type: ``"0,1,2"`` -> ``(0, 1, 2)``, seeds in ``[0, SEED_MAX]`` (non-empty, no repeats)."""
    return _listed(text, seed, "seeds")


def int_tuple(text: str) -> tuple[int, ...]:
    """argparse type: ``"2,2,0"`` -> ``(2, 2, 0)``, one value per position (repeats allowed)."""
    return _listed(text, integer, "integers", unique=False)


def float_list(text: str) -> tuple[float, ...]:
    """argparse type: ``"0.5,1,2"`` -> ``(0.5, 1.0, 2.0)`` (non-empty, no repeats)."""
    return _listed(text, number, "numbers")


def str_list(text: str) -> tuple[str, ...]:
    """argparse type: ``"relu,tanh"`` -> ``("relu", "tanh")`` (non-empty, no repeats)."""
    return _listed(text, str, "names")


def _show(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) or "none"
    return str(value)


# ---------------------------------------------------------------- Config -> flags


def option(
    default: Any,
    help: str,
    *,
    type: Callable[[str], Any] | None = None,
    flag: str | None = None,
    cli: bool = True,
) -> Any:
    """A ``Config`` field with its ``--help`` text (``type`` for lists or optional values)."""
    return field(default=default, metadata={"help": help, "type": type, "flag": flag, "cli": cli})


def flag_of(config_cls: type, name: str) -> str:
    """The command-line flag of a ``Config`` field (``batch_size`` -> ``--batch-size``)."""
    for f in fields(config_cls):
        if f.name == name and f.metadata.get("flag"):
            return str(f.metadata["flag"])
    return "--" + name.replace("_", "-")


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """One flag per field of the dataclass ``config_cls``, its default and help from the field."""
    for f in fields(config_cls):
        if not f.metadata.get("cli", True):
            continue
        default = f.default
        helptext = f.metadata.get("help", "")
        name = flag_of(config_cls, f.name)
        if isinstance(default, bool):
            if default:
                raise TypeError(f"{config_cls.__name__}.{f.name}: a flag defaults to off")
            parser.add_argument(name, dest=f.name, action="store_true", help=helptext)
            continue
        kind: Any = f.metadata.get("type") or (type(default) if default is not None else str)
        # every count and number is read the same way: ASCII, within 64 bits; a seed within SEED_MAX
        kind = {int: integer, float: number}.get(kind, kind)
        if f.name in ("seed", "seeds"):
            kind = {integer: seed, int_list: seed_list}.get(kind, kind)
        shown = "%(default)s" if not isinstance(default, tuple) else _show(default)
        # a help that explains its default (or None: unset) says it once, in words
        if default is not None and "default:" not in helptext and "(default" not in helptext:
            helptext = f"{helptext} (default: {shown})"
        parser.add_argument(name, dest=f.name, type=kind, default=default, metavar=f.name.upper(),
                            help=helptext)


def config_from_args(config_cls: type[C], args: argparse.Namespace, **overrides: Any) -> C:
    """The ``Config`` of the parsed flags (validated by its ``__post_init__``)."""
    values = {f.name: getattr(args, f.name) for f in fields(config_cls)  # type: ignore[arg-type]
              if f.metadata.get("cli", True) and hasattr(args, f.name)}
    values.update(overrides)
    return config_cls(**values)


def config_dict(config: Any) -> dict[str, Any]:
    """A ``Config`` as a JSON-ready dict (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


# ---------------------------------------------------------------- run flags and the command


def add_run_arguments(
    parser: argparse.ArgumentParser, default_out: str, *, resumable: bool = False, progress: bool = True
) -> None:
    """``--out`` (and ``--resume``/``--overwrite``, ``--no-progress``, ``--threads``) for a command."""
    parser.add_argument("--out", type=out_path, default=Path(default_out),
                        help="run folder (default: %(default)s)")
    if resumable:
        parser.add_argument("--resume", action="store_true",
                            help="continue the run in --out from its last checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the previous run in --out instead of refusing")
    if progress:
        parser.add_argument("--no-progress", action="store_true", help="no progress bars or per-epoch lines")
    parser.add_argument("--threads", type=integer, default=1,
                        help="torch CPU threads per process, at most the machine's cores (0: torch's "
                        "default; 1 is fastest on a shared machine) (default: %(default)s)")


@dataclasses.dataclass(frozen=True)
class Deferred:
    """A command's ``func``: ``module.name(args)``, ``module`` imported only when the command runs.

    :meth:`load` imports it ahead of the call: :func:`infdepth.cli.main` does so while its
    start-up Ctrl-C handler is still in place (a Ctrl-C inside an import can otherwise end
    the process with SIGINT's status although the command answered it).
    """

    module: str
    name: str = "main"

    def load(self) -> Callable[[argparse.Namespace], Any]:
        """The command's function, its module imported."""
        run = getattr(importlib.import_module(self.module), self.name)
        return cast(Callable[[argparse.Namespace], Any], run)

    def __call__(self, args: argparse.Namespace) -> int:
        return int(self.load()(args) or 0)


def deferred(module: str, name: str = "main") -> Deferred:
    """A command's ``func``: ``module.name(args)``, ``module`` imported only when the command runs."""
    return Deferred(module, name)
