"""A process-wide count of growth events: the one thing an optimizer hook may remember.

:meth:`InfiniteDepth.grow` records every call that builds sub-layers; the hook of
:func:`infdepth.attach` compares the count with the one it saw last and looks the model
over only when something was built since.  An event count, not a copy of any state.
"""

from __future__ import annotations

_count = 0


def growth_events() -> int:
    """How many times any :class:`~infdepth.InfiniteDepth` has built sub-layers in this process."""
    return _count


def record_growth() -> None:
    """Called by :meth:`InfiniteDepth.grow` when it built sub-layers."""
    global _count
    _count += 1
