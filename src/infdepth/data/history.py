"""The original code's recorded training histories (``data/reference/*.csv.gz``), shipped as package data.

Records sit below both the runs that compare with them and the plots that draw them.
"""

from __future__ import annotations

import csv
import gzip
from collections import defaultdict
from pathlib import Path

REFERENCE = Path(__file__).resolve().parent / "reference"
XOR_CSV = REFERENCE / "going_deeper_xor_history.csv.gz"
MNIST_CSV = REFERENCE / "going_deeper_mnist_history.csv.gz"

#: published MNIST numbers (paper section IV.B)
PAPER_PEAK_TEST_ACC = 0.9955
PAPER_FINAL_TEST_ACC = 0.9921
PAPER_FINAL_W = {"dcnn0": 0.339, "dcnn1": 1.928, "dfc0": 0.406}


def xor_history(path: Path = XOR_CSV) -> dict[int, dict[str, list[float]]]:
    """The original XOR runs per k: iteration, w, val_acc, val_loss (empty if the file is absent)."""
    out: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    if not path.is_file():
        return {}
    with gzip.open(path, "rt", newline="") as fh:
        for row in csv.DictReader(fh):
            d = out[int(row["active_inputs"])]
            for key in ("iteration", "w", "val_acc", "val_loss"):
                d[key].append(float(row[key]))
    return {k: dict(v) for k, v in out.items()}


def mnist_history(path: Path = MNIST_CSV) -> dict[str, list[float]]:
    """The original MNIST run per epoch: epoch, w per layer, val_acc, val_loss, train_loss, train_acc."""
    if not path.is_file():
        return {}
    out: dict[str, list[float]] = {}
    with gzip.open(path, "rt", newline="") as fh:
        for row in csv.DictReader(fh):
            for key, value in row.items():
                out.setdefault(key, []).append(float(value))
    return out
