"""Run folders that cannot mix runs: a fresh run never meets an old checkpoint, a resume
continues the run its folder holds or refuses.

Every training command calls :func:`open_run` after validating its flags and before
writing anything:

- a fresh run needs an empty (or absent) ``--out``; ``--overwrite`` replaces a previous
  run folder (one holding ``config.json``) and nothing else;
- ``--resume`` needs the ``config.json`` of the run in ``--out`` and compares it with the
  command line: a differing setting is refused (exit 2, naming the flag) unless it is one
  that may change on resume (more steps, a device, a checkpoint cadence), which is then
  applied and recorded under ``"resumes"`` in ``config.json``;
- one process at a time: the folder is locked (``flock`` on the folder itself) from
  :func:`open_run` until the command (or the process) ends, and a second command on the same ``--out``
  (a ``--resume`` started twice, a study and a standalone run of one of its members)
  is refused, exit 2, before it writes anything.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from infdepth import distributed
from infdepth.errors import InputError
from infdepth.io import write_json

CONFIG = "config.json"
RESUMES = "resumes"

#: open descriptors of the run folders this process has locked, by real path.  They are
#: the locks themselves (an OS resource held until exit), not a copy of any value.
_LOCKS: dict[str, int] = {}


def flag(key: str) -> str:
    """The command-line flag of a config key: ``batch_size`` -> ``--batch-size``."""
    return "--" + key.replace("_", "-")


def check_writable(out: Path) -> None:
    """Raise :class:`InputError` unless ``out`` is a folder that exists or can be created."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out={out} is not accepted: it is a file, not a folder")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"--out={out} is not accepted: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"--out={out} is not accepted: {parent} is not writable")


def lock(out: Path) -> None:
    """Hold an exclusive lock on the run folder ``out`` until :func:`release` or the process ends.

    Creates ``out`` if needed.  Locking a folder this process already holds is a no-op
    (one process may open its run again, as a study opens its members' folders).

    Raises:
        InputError: another process holds ``out`` (it is training there now).
    """
    out.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(out)
    if key in _LOCKS:
        return
    fd = os.open(key, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        raise InputError(
            f"--out={out} is in use: another process is running there now; wait for it to end "
            "(or stop it) before you --resume or --overwrite it, or choose another --out"
        ) from None
    _LOCKS[key] = fd


def release() -> None:
    """Release every run folder this process has locked (the CLI does so when a command ends)."""
    while _LOCKS:
        _, fd = _LOCKS.popitem()
        os.close(fd)  # closing the descriptor drops its flock


def _jsonable(config: Mapping[str, Any]) -> dict[str, Any]:
    # the saved form, so that values compare as they will read back (tuples as lists, ...)
    return json.loads(json.dumps(dict(config), default=str))


def open_run(
    out: Path,
    config: Mapping[str, Any],
    *,
    resume: bool,
    overwrite: bool = False,
    resumable: Collection[str] = (),
    labels: Mapping[str, str] | None = None,
    can_resume: bool = True,
) -> dict[str, Any]:
    """Check ``out`` against the run about to start, then write its ``config.json``.

    Under torchrun every rank checks, then rank 0 alone replaces or writes, then all
    ranks go on together (so no rank sees the folder half-prepared).

    Args:
        out: the run folder (``--out``).
        config: the run's settings, keyed by flag name with ``_`` for ``-``.
        resume: ``--resume`` was given.
        overwrite: ``--overwrite`` was given (replace a previous run folder).
        resumable: keys that may differ on resume; the new values apply and are recorded.
        labels: how to name a key in messages where it is not ``--key`` (e.g. ``ks``: ``--k``).
        can_resume: the command has ``--resume`` (messages offer it only then).

    Returns:
        The config as written (with the ``"resumes"`` record of earlier resumes).

    Raises:
        InputError: naming the flag, the value and what is accepted.
    """
    ctx = distributed.current()
    saved = _prepare(out, config, resume, overwrite, resumable, labels or {}, can_resume, write=False)
    ctx.barrier()
    if ctx.is_main:
        lock(out)
        _prepare(out, config, resume, overwrite, resumable, labels or {}, can_resume, write=True)
    ctx.barrier()
    return saved


def _prepare(
    out: Path,
    config: Mapping[str, Any],
    resume: bool,
    overwrite: bool,
    resumable: Collection[str],
    labels: Mapping[str, str],
    can_resume: bool,
    *,
    write: bool,
) -> dict[str, Any]:
    check_writable(out)

    def name(key: str) -> str:
        return labels.get(key, flag(key))

    new = _jsonable(config)
    path = out / CONFIG
    if resume:
        if overwrite:
            raise InputError("--resume and --overwrite exclude each other: continue the run or replace it")
        if not path.is_file():
            raise InputError(
                f"--resume: no run to continue in --out={out} (no {CONFIG}); run without --resume first"
            )
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"--resume: {path} cannot be read ({exc})") from exc
        if not isinstance(old, dict):
            raise InputError(f"--resume: {path} is not a run configuration")
        history = list(old.pop(RESUMES, []))
        fixed = {k: (old.get(k), v) for k, v in new.items() if k not in resumable and old.get(k) != v}
        if fixed:
            changed = ", ".join(f"{name(k)}={b!r} (the run has {a!r})" for k, (a, b) in fixed.items())
            allowed = ", ".join(name(k) for k in resumable) or "none"
            raise InputError(
                f"--resume: {changed} differs from the run in {out}; on resume only these may change: "
                f"{allowed} (start a new run in another --out, or pass --overwrite without --resume)"
            )
        changes = {k: [old.get(k), v] for k, v in new.items() if old.get(k) != v}
        if changes:
            history.append(changes)
        saved = {**new, RESUMES: history}
    else:
        if out.is_dir() and any(out.iterdir()):
            if not overwrite:
                offer = "pass --resume to continue that run, " if can_resume else "pass "
                raise InputError(
                    f"--out={out} already holds files (a previous run?); {offer}--overwrite to "
                    "replace it, or choose another --out"
                )
            if not path.is_file():
                raise InputError(
                    f"--overwrite: --out={out} is not a run folder (no {CONFIG}); it is left as it is"
                )
            if write:
                for child in out.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
        saved = {**new, RESUMES: []}
    if write:
        out.mkdir(parents=True, exist_ok=True)
        write_json(path, saved)
    return saved
