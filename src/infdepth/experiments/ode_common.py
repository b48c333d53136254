"""Shared pieces of the continuous-depth reproductions: run folders, figures, checks."""

from __future__ import annotations

import json
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from infdepth.errors import InputError  # noqa: E402
from infdepth.io import write_json  # noqa: E402


def count_params(module: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def check_int(name: str, value: int, minimum: int = 1) -> None:
    """InputError unless ``value`` is an integer >= ``minimum``."""
    if not isinstance(value, int) or value < minimum:
        raise InputError(f"{name}={value!r} is not accepted; expected an integer >= {minimum}")


def check_float(name: str, value: float, *, low: float = 0.0, strict: bool = True) -> None:
    """InputError unless ``value`` is a finite number > ``low`` (>= when not strict)."""
    ok = value > low if strict else value >= low
    if not ok or value != value or value in (float("inf"), float("-inf")):
        op = ">" if strict else ">="
        raise InputError(f"{name}={value!r} is not accepted; expected a finite number {op} {low}")


def prepare_out(out: str | Path, config: Any) -> Path:
    """Create the run folder and write ``config.json`` (a dataclass or a mapping)."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise InputError(f"--out {path} exists and is not a folder")
    path.mkdir(parents=True, exist_ok=True)
    data = asdict(config) if is_dataclass(config) and not isinstance(config, type) else config
    write_json(path / "config.json", json.loads(json.dumps(data, default=str)))
    return path


def save_figure(fig: Any, path: Path) -> None:
    """Save a matplotlib figure as a compact PNG and close it."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pick_device(name: str) -> torch.device:
    """A torch device by name; InputError when it is not available here."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise InputError(f"--device {name!r} is not a torch device") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name!r}: CUDA is not available on this machine")
    return device
