"""What the ``infdepth limits ...`` runs share beyond :mod:`infdepth.experiments._common`.

The run folder is opened through :func:`infdepth.runfolder.open_run` (after the ``Config``
validated every flag), progress bars follow ``--no-progress``, and ``summary.json`` is
written atomically.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

from tqdm.auto import tqdm

from infdepth.experiments._common import RunContext, config_dict
from infdepth.experiments.limits._bounds import (  # noqa: F401  (re-exported: the flags' bounds)
    ACTIVATIONS_HELP,
    MAX_TIME,
    known_activation,
    positive_int,
)
from infdepth.io import write_json
from infdepth.runfolder import open_run

T = TypeVar("T")


def start_run(config: Any, ctx: RunContext) -> Path:
    """Open ``ctx.out`` for a fresh run of ``config`` and write its ``config.json``.

    Refuses (exit 2, naming ``--out``) a file, or a folder holding files unless it is a
    previous run folder and ``--overwrite`` was given; nothing is written before that.
    """
    record = {**config_dict(config), "world_size": ctx.dist.world}
    open_run(ctx.out, record, resume=False, overwrite=ctx.overwrite, resumable=(), can_resume=False)
    return ctx.out


def write_summary(ctx: RunContext, summary: dict[str, Any]) -> None:
    """Write ``summary.json`` (tensors and arrays as lists) into the run folder."""
    if ctx.is_main:
        write_json(ctx.out / "summary.json", {**summary, "world_size": ctx.dist.world})


def progress(ctx: RunContext, items: Iterable[T] | None = None, *, total: int | None = None,
             desc: str) -> Any:
    """A transient tqdm bar over ``items`` (or of ``total`` updates), off with ``--no-progress``."""
    return tqdm(items, total=total, desc=desc, leave=False, disable=not ctx.progress)
