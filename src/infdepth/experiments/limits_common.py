"""Shared plumbing of the ``infdepth limits ...`` experiments: run folders, figures, checks."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np

from infdepth.errors import InputError
from infdepth.io import write_json


def prepare_run(out: str | os.PathLike[str], config: Any) -> Path:
    """Create the run folder and write ``config.json`` (a dataclass or mapping)."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise InputError(f"--out={str(out)!r} is not accepted; it exists and is not a folder")
    path.mkdir(parents=True, exist_ok=True)
    data = asdict(config) if is_dataclass(config) and not isinstance(config, type) else config
    write_json(path / "config.json", dict(data))
    return path


def save_figure(fig: Any, path: Path) -> None:
    """Save a matplotlib figure as a PNG (small: 100 dpi) and close it."""
    fig.savefig(path, dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def positive_ints(name: str, values: Sequence[int]) -> list[int]:
    """Validate a list of integers >= 1 (widths, depths)."""
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(f"{name}={v!r} is not accepted; expected integers >= 1")
        out.append(v)
    if not out:
        raise InputError(f"{name} is empty; give at least one value")
    return out


def positive_float(name: str, value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"{name}={value!r} is not accepted; expected a finite number > 0")
    return float(value)


def mean_ci(x: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and half-width of the normal 95% confidence interval along ``axis``."""
    x = np.asarray(x, dtype=float)
    n = x.shape[axis]
    return x.mean(axis), 1.96 * x.std(axis, ddof=1) / math.sqrt(n)


def _checked(text: str, values: list) -> list:
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} is empty; expected at least one value")
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text!r} repeats an entry; give each value once")
    return values


def int_list(text: str) -> list[int]:
    """argparse type: ``"1,2,8"`` -> ``[1, 2, 8]`` (non-empty, no repeats)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    return _checked(text, values)


def float_list(text: str) -> list[float]:
    """argparse type: ``"0.5,1,2"`` -> ``[0.5, 1.0, 2.0]`` (non-empty, no repeats)."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    return _checked(text, values)


def str_list(text: str) -> list[str]:
    """argparse type: ``"relu,tanh"`` -> ``["relu", "tanh"]`` (non-empty, no repeats)."""
    return _checked(text, [v.strip() for v in text.split(",") if v.strip()])


def add_common(parser: argparse.ArgumentParser, name: str) -> None:
    """``--out`` and ``--seed``, shared by every limits experiment."""
    parser.add_argument("--out", default=f"runs/limits-{name}", help="run folder for outputs")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1 avoids oversubscription on shared CPUs)")


def set_threads(threads: int) -> None:
    import torch

    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InputError(f"--threads={threads!r} is not accepted; expected an integer >= 1")
    torch.set_num_threads(threads)
