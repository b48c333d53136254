"""Exception types shared by the library and the command line."""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input: an argument, a file or a data set that cannot be used.

    The message names the argument (or path), the value and what is accepted.
    The command line turns it into a usage message and exit code 2.
    """


class DivergenceError(RuntimeError):
    """Training produced a non-finite value (loss or a depth parameter ``w``).

    The message names the step; checkpoints written before it stay intact.
    """


def check_choice(name: str, value: object, accepted: list[str] | tuple[str, ...]) -> None:
    """Raise :class:`InputError` unless ``value`` is one of ``accepted``."""
    if value not in accepted:
        raise InputError(f"{name}={value!r} is not accepted; choose one of {', '.join(map(repr, accepted))}")


def check_positive(name: str, value: float, *, strict: bool = True) -> None:
    """Raise :class:`InputError` unless ``value`` is (strictly) positive and finite."""
    ok = value > 0 if strict else value >= 0
    if not ok or value != value or value in (float("inf"), float("-inf")):
        kind = "a finite number > 0" if strict else "a finite number >= 0"
        raise InputError(f"{name}={value!r} is not accepted; expected {kind}")
