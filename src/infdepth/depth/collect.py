"""Penalties produced with the forward pass, as auxiliary losses are.

A g-infinity layer reads ``w`` to the host in its ``forward``; computing its penalty
there, from the same value, spares the training step a second read (on a GPU, a second
device synchronisation) and a second look-up of the penalised tensors::

    with collect_penalties() as produced:
        out = model(x)
    # produced: {layer: its penalty at the w its forward used}, for the layers that ran

Nothing outlives the ``with`` block: the collector is made afresh for each forward, so
a penalty is never taken from an earlier step.  A module that did not run (or has no
collector support) is asked for ``penalty()`` as before (:func:`infdepth.train.model_penalty`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor, nn

_SINKS: list[dict[nn.Module, Tensor | None]] = []


@contextmanager
def collect_penalties() -> Iterator[dict[nn.Module, Tensor | None]]:
    """Collect, for every module that supports it, the penalty its ``forward`` produced.

    Yields a dict ``{module: penalty}``, filled while the block runs; a module called twice
    gives its first penalty only.  Nested blocks: the innermost collects.
    """
    sink: dict[nn.Module, Tensor | None] = {}
    _SINKS.append(sink)
    try:
        yield sink
    finally:
        _SINKS.pop()


def penalty_wanted(module: nn.Module) -> dict[nn.Module, Tensor | None] | None:
    """The collector that wants ``module``'s penalty now, or None (none open, or it has it)."""
    if not _SINKS:
        return None
    sink = _SINKS[-1]
    return None if module in sink else sink
