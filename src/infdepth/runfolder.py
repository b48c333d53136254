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
- a refused resume changes nothing: every file the resume reads back (``config.json``,
  every ``checkpoint.pt``) is checked before anything is written, and should a check
  that needs the model (a checkpoint of another command, fewer steps than it holds)
  refuse later, the command line puts ``config.json`` back as it was (:func:`undo`);
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
from infdepth.checkpoint import CHECKPOINT, load_checkpoint
from infdepth.errors import InputError
from infdepth.io import atomic_write_bytes, write_json

CONFIG = "config.json"
RESUMES = "resumes"
#: the files a run folder (or a member's sub-folder) holds by these names: never a folder
FILES = (CONFIG, "checkpoint.pt", "metrics.jsonl", "summary.json")
#: how messages name the config keys that are not flags
LABELS = {"world_size": "the process count (torchrun --nproc-per-node)"}
#: room kept for the names written below --out (``k1_seed0/.checkpoint.pt.XXXXXXXX.tmp``)
_ROOM = 64

#: open descriptors of the run folders this process has locked, by real path.  They are
#: the locks themselves (an OS resource held until exit), not a copy of any value.
_LOCKS: dict[str, int] = {}
#: each config.json a resume of this command rewrote, with its bytes before (see :func:`undo`)
_BEFORE: dict[Path, bytes] = {}


def flag(key: str) -> str:
    """The command-line flag of a config key: ``batch_size`` -> ``--batch-size``."""
    return "--" + key.replace("_", "-")


def check_writable(out: Path) -> None:
    """Raise :class:`InputError` unless ``out`` is a folder that exists or can be created.

    Refused: a file or a dangling symbolic link in place of the folder or one above it, a
    name or a path longer than the file system allows (with room for the files written
    below it), a folder that cannot be written, and, inside an existing ``out``, a
    sub-folder that cannot be written or a folder where a run's file belongs.
    """
    # lengths first: the file system answers a path too long with an error, not False
    full = os.fsencode(os.path.abspath(out))
    name_max, path_max = _limits(out)
    longest = max((len(os.fsencode(part)) for part in out.parts), default=0)
    if longest > name_max:
        raise InputError(f"--out={_cut(out)} is not accepted: a name in it has {longest} bytes; "
                         f"this file system allows {name_max}")
    if len(full) + _ROOM > path_max:
        raise InputError(f"--out={_cut(out)} is not accepted: its path has {len(full)} bytes; the files "
                         f"below it need paths of at most {path_max} bytes (use a shorter --out)")
    if out.is_symlink() and not out.exists():
        raise InputError(f"--out={out} is not accepted: it is a symbolic link to {os.readlink(out)}, "
                         "which does not exist")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out={out} is not accepted: it is a file, not a folder")
    parent = out
    while not parent.exists():
        if parent.is_symlink():
            raise InputError(f"--out={out} is not accepted: {parent} is a symbolic link to "
                             f"{os.readlink(parent)}, which does not exist")
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"--out={out} is not accepted: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"--out={out} is not accepted: {parent} is not writable")
    if out.is_dir():
        for path in sorted(out.rglob("*")):
            if path.name in FILES and not path.is_file():
                raise InputError(f"--out={out} is not accepted: {path} is a folder (or link) where the "
                                 "run's file belongs; move it away")
            if path.is_dir() and not path.is_symlink() and not os.access(path, os.W_OK | os.X_OK):
                raise InputError(f"--out={out} is not accepted: its sub-folder {path} is not writable")


def _limits(out: Path) -> tuple[int, int]:
    """The longest file name and path the file system under ``out`` takes (255 and 4096 where unknown)."""
    probe = Path(os.path.abspath(out))
    while probe != probe.parent:
        try:
            return os.pathconf(probe, "PC_NAME_MAX"), os.pathconf(probe, "PC_PATH_MAX")
        except (OSError, ValueError):  # not there (yet), or a name too long: ask its parent
            probe = probe.parent
    return 255, 4096


def _cut(out: Path, limit: int = 80) -> str:
    text = str(out)
    return text if len(text) <= limit else f"{text[:limit // 2]}...{text[-limit // 2:]}"


def check_checkpoints(out: Path) -> None:
    """Refuse a resume whose folder holds a ``checkpoint.pt`` that cannot be read safely.

    Every checkpoint below ``out`` is read as :func:`infdepth.checkpoint.load_checkpoint`
    reads it (the safe loader: no code runs), before the resume writes anything.
    """
    for path in sorted(out.rglob(CHECKPOINT)):
        load_checkpoint(path)


def undo() -> None:
    """Put back every ``config.json`` a resume of this command rewrote (the command was refused)."""
    while _BEFORE:
        path, data = _BEFORE.popitem()
        atomic_write_bytes(path, data)


def forget() -> None:
    """The command ended: every config.json it wrote stays as written."""
    _BEFORE.clear()


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
        return labels.get(key, LABELS.get(key, flag(key)))

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
        check_checkpoints(out)
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
        if resume:
            _BEFORE.setdefault(path, path.read_bytes())
        write_json(path, saved)
    return saved
