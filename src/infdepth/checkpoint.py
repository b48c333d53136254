"""Checkpoints of :func:`infdepth.train.fit`: what they hold, written atomically, read safely.

A checkpoint holds tensors and plain containers of numbers and strings only (the
``state_dict`` of the model, the optimizer and the LR scheduler, the RNG state, the
metric history, the log window's partial sums, the wall time), so that
:func:`load_checkpoint` reads it with torch's safe loader (``weights_only=True``): a file
holding any other object is refused, never executed.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from infdepth import distributed
from infdepth.errors import InputError, brief
from infdepth.io import atomic_torch_save

CHECKPOINT = "checkpoint.pt"


def rng_state() -> dict[str, Any]:
    """torch's RNG state (and every CUDA device's, once CUDA is in use)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a state taken by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


#: what a checkpoint written by :func:`~infdepth.train.fit` holds, with the type of each entry
CHECKPOINT_KEYS: dict[str, type] = {
    "step": int,
    "model": dict,
    "optimizer": dict,
    "rng": dict,
    "history": list,
}


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`~infdepth.train.fit`, never running code from it.

    The file is read by torch's safe loader (``weights_only=True``): tensors and plain
    containers of numbers and strings only; a pickled object of any other kind (code to
    run) is refused, not executed.

    Raises:
        InputError: the file is missing, unreadable, or not a checkpoint of :func:`~infdepth.train.fit`
            (a missing entry or one of the wrong type is named).
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        raise InputError(f"checkpoint {path} is not a file; move it away (or --overwrite the run)")
    if not path.is_file():
        raise InputError(f"no checkpoint at {path}; run without --resume first")
    try:
        with warnings.catch_warnings():  # a refusal is one line, not a loader's warnings too
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt file, or one holding objects other than data: say which
        raise InputError(f"checkpoint {path} cannot be read as an infdepth checkpoint ({brief(exc, 200)})") \
            from None
    if not isinstance(ckpt, dict):
        raise InputError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a checkpoint of infdepth")
    for key, kind in CHECKPOINT_KEYS.items():
        if key not in ckpt:
            raise InputError(f"checkpoint {path} has no {key!r} entry; it was not written by infdepth")
        if not isinstance(ckpt[key], kind) or (kind is int and isinstance(ckpt[key], bool)):
            raise InputError(
                f"checkpoint {path}: {key!r} is a {type(ckpt[key]).__name__}, expected {kind.__name__}"
            )
    if not isinstance(ckpt["rng"].get("torch"), torch.Tensor):
        raise InputError(f"checkpoint {path} has no torch RNG state; it was not written by infdepth")
    return ckpt


def save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: Optimizer,
    scheduler: Any | None,
    step: int,
    history: list[dict[str, Any]],
    seconds: float,
    window: dict[str, Any] | None = None,
) -> None:
    """Write model, optimizer, scheduler, RNG state, history and log window at ``step``, atomically.

    Everything in it is a tensor or a plain container of numbers and strings, so that
    :func:`load_checkpoint` reads it with torch's safe loader.
    """
    atomic_torch_save(
        {
            "step": step,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "rng": rng_state(),
            "history": history,
            "seconds": seconds,
            "window": window or {"sums": {}, "steps": 0},
        },
        path,
    )


def window_state(window: dict[str, Tensor], steps: int) -> dict[str, Any]:
    """The log window's sums for a checkpoint: this process's own, or their mean over the ranks."""
    if distributed.current().enabled:
        means = distributed.mean_over_ranks(dict(window))
        return {"sums": {k: torch.tensor(v, dtype=torch.float64) for k, v in means.items()}, "steps": steps}
    return {"sums": {k: v.detach().cpu() for k, v in window.items()}, "steps": steps}


def window_from(ckpt: dict[str, Any] | None, device: torch.device) -> tuple[dict[str, Tensor], int]:
    """The log window a checkpoint carries (empty for a fresh run or a checkpoint on the log grid)."""
    saved = (ckpt or {}).get("window")
    if not isinstance(saved, dict) or not isinstance(saved.get("sums"), dict):
        return {}, 0
    steps = saved.get("steps")
    sums = saved["sums"]
    if not isinstance(steps, int) or not all(isinstance(v, Tensor) for v in sums.values()):
        raise InputError("checkpoint: its 'window' entry is malformed; it was not written by infdepth")
    return {k: v.to(device) for k, v in sums.items()}, steps
