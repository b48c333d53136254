"""Exception types shared by the library and the command line, and the one family of validators.

Every check raises :class:`InputError` with a message that names the argument as the
user wrote it (a flag such as ``--w0`` or a keyword such as ``w0``), the value, and
what is accepted.  The command line turns it into one line and exit code 2.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

T = TypeVar("T")


class InputError(ValueError):
    """Bad user input: an argument, a file or a data set that cannot be used.

    The message names the argument (or path), the value and what is accepted.
    The command line turns it into one line on stderr and exit code 2.
    """


class DivergenceError(RuntimeError):
    """Training produced a non-finite value (loss or a depth parameter ``w``).

    The message names the step; checkpoints written before it stay intact.
    """


def brief(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, cut to ``limit`` characters (state_dict keys run to kilobytes)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def reject(name: str, value: object, accepted: str) -> InputError:
    """The :class:`InputError` for ``name=value``, saying what is ``accepted``."""
    shown = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else repr(value)
    return InputError(f"{name}={shown} is not accepted; expected {accepted}")


def raise_input(name: str, shown: str, expected: str) -> NoReturn:
    """Raise :class:`InputError` for ``name`` whose value is described by ``shown`` (e.g. a shape)."""
    raise InputError(f"{name}={shown} is not accepted; expected {expected}")


def check_choice(name: str, value: T, accepted: Sequence[Any]) -> T:
    """``value`` unless it is not one of ``accepted``."""
    if value not in accepted:
        raise InputError(f"{name}={value!r} is not accepted; choose one of {', '.join(map(repr, accepted))}")
    return value


def check_int(name: str, value: object, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int, unless it is not an integer in ``[low, high]`` (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise reject(name, value, "an integer")
    if (low is not None and value < low) or (high is not None and value > high):
        raise reject(name, value, _range("an integer", low, high, strict=False))
    return value


def check_float(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    strict: bool = False,
) -> float:
    """``value`` as a float, unless it is not a finite number in ``[low, high]``.

    ``strict=True`` excludes ``low`` itself (``low=0, strict=True``: a number > 0).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise reject(name, value, "a number")
    x = float(value)
    bad = not math.isfinite(x)
    if low is not None:
        bad = bad or (x <= low if strict else x < low)
    if high is not None:
        bad = bad or x > high
    if bad:
        raise reject(name, value, _range("a finite number", low, high, strict=strict))
    return x


def check_finite_tensor(name: str, value: Any) -> None:
    """Refuse a tensor that holds NaN or infinity."""
    import torch

    if not bool(torch.isfinite(value).all()):
        raise InputError(f"{name} is not accepted: it holds non-finite values")


def check_items(name: str, values: Sequence[T], check: Callable[[str, T], object]) -> tuple[T, ...]:
    """A non-empty sequence without repeats whose every item passes ``check(name, item)``."""
    if len(values) == 0:
        raise InputError(f"{name} is empty; give at least one value")
    if len(set(values)) != len(values):
        raise reject(name, list(values), "each value once (it repeats an entry)")
    for v in values:
        check(name, v)
    return tuple(values)


def check_device(name: str, value: str) -> str:
    """A torch device this machine has: ``cpu``, or ``cuda``/``cuda:N`` where CUDA is available."""
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise reject(name, value, "a torch device: cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise reject(name, value, "cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"{name}={value!r} is not accepted: CUDA is not available here; use cpu")
    return value


def check_allocatable(name: str, numel: int, *, limit: int = 2**33) -> None:
    """Refuse a size whose tensors would need more than ``limit`` elements (32 GiB of float32)."""
    if numel > limit:
        raise InputError(f"{name} asks for a tensor of {numel:.3g} elements; the limit is {limit:.3g}")


def _range(kind: str, low: float | None, high: float | None, *, strict: bool) -> str:
    if low is not None and high is not None:
        return f"{kind} in {'(' if strict else '['}{low}, {high}]"
    if low is not None:
        return f"{kind} {'>' if strict else '>='} {low}"
    if high is not None:
        return f"{kind} <= {high}"
    return kind
