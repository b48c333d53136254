"""What an ``images`` run reports: its result record, ``summary.json`` and figures.

The records sit below the run that writes them (``images.py``) and the study that reads them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from infdepth.data.history import PAPER_FINAL_TEST_ACC, PAPER_FINAL_W, PAPER_PEAK_TEST_ACC, mnist_history
from infdepth.experiments._common import pyplot, save_figure
from infdepth.models.going_deeper import LAYERS


@dataclass(frozen=True)
class ImagesResult:
    """What one run ends with."""

    label: str
    epochs: int
    final_test_acc: float
    best_test_acc: float
    best_epoch: int
    final_test_loss: float
    final_w: dict[str, float]
    active_blocks: dict[str, int]
    built_blocks: dict[str, int]
    used_parameters: int
    seconds: float
    images_per_second: float
    final_test_acc_precise_bn: float | None = None


def summarise(res: ImagesResult, history: list[dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    """The run's result, its per-epoch history and the paper's MNIST numbers beside it."""
    ref = mnist_history()
    epochs = [int(r["epoch"]) for r in history]
    reference: dict[str, Any] = {
        "paper_peak_test_acc": PAPER_PEAK_TEST_ACC,
        "paper_final_test_acc": PAPER_FINAL_TEST_ACC,
        "paper_final_w": PAPER_FINAL_W,
    }
    if ref:
        last = min(epochs[-1], len(ref["epoch"]))
        reference["original_run_at_same_epoch"] = {
            "epoch": last,
            "val_acc": ref["val_acc"][last - 1],
            "w": {name: ref[f"w_{name}"][last - 1] for name in LAYERS},
        }
        reference["original_run_final"] = {
            "epoch": int(ref["epoch"][-1]),
            "val_acc": ref["val_acc"][-1],
            "max_val_acc": max(ref["val_acc"]),
            "w": {name: ref[f"w_{name}"][-1] for name in LAYERS},
        }
    return {
        "config": config,
        "result": asdict(res),
        "history": {
            "epoch": epochs,
            "train_loss": [r["loss"] for r in history],
            "train_acc": [r.get("train_acc") for r in history],
            "test_loss": [r["test_loss"] for r in history],
            "test_acc": [r["test_acc"] for r in history],
            "w": {name: [r["w"].get(name) for r in history] for name in res.final_w},
            "active_blocks": {name: [r["active_blocks"].get(name) for r in history] for name in res.final_w},
            "seconds": [r["seconds"] for r in history],
        },
        "reference_mnist": reference,
    }


def plot_run(out_dir: Path, history: list[dict[str, Any]], label: str) -> None:
    """Accuracy, loss and w per layer against epoch, the original MNIST run dashed beside ours."""
    plt = pyplot()
    ref = mnist_history()
    epochs = np.array([r["epoch"] for r in history])
    horizon = int(epochs.max())
    ref_ep = np.array(ref.get("epoch", []))
    mask = ref_ep <= max(horizon, 10)
    for key, title in (("acc", "accuracy"), ("loss", "loss")):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        train_key = "train_acc" if key == "acc" else "loss"
        ax.plot(epochs, [r[train_key] for r in history], "C0-", label=f"train ({label})")
        ax.plot(epochs, [r[f"test_{key}"] for r in history], "C1-", lw=2, label=f"test ({label})")
        if ref:
            ax.plot(ref_ep[mask], np.array(ref[f"train_{key}"])[mask], "C0:", lw=1,
                    label="original MNIST, train (last batch)")
            ax.plot(ref_ep[mask], np.array(ref[f"val_{key}"])[mask], "C1--", lw=1,
                    label="original MNIST, test")
        if key == "acc":
            lo = min(min(r["test_acc"] for r in history), 0.8)
            ax.set_ylim(max(lo, 0.0), 1.0)
        else:
            ax.set_yscale("log")
        ax.set(xlabel="epoch", ylabel=title, title=f"{title} against epoch")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        save_figure(fig, out_dir / f"images_{key}.png")
    names = sorted({k for r in history for k in r["w"]})
    if not names:
        return
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for j, name in enumerate(names):
        ax.plot(epochs, [r["w"][name] for r in history], f"C{j}-", lw=2, label=f"{name} (ours)")
        if ref:
            ax.plot(ref_ep[mask], np.array(ref[f"w_{name}"])[mask], f"C{j}--", lw=1,
                    label=f"{name} (original MNIST)")
            ax2.plot(ref_ep, ref[f"w_{name}"], f"C{j}-", lw=1, label=name)
    ax.set(xlabel="epoch", ylabel="w (depth)", title="w per layer against epoch")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax2.set_xscale("log")
    ax2.set(xlabel="epoch", title="original MNIST run, all 5000 epochs")
    ax2.grid(True, alpha=0.3)
    ax2.legend(fontsize=8)
    save_figure(fig, out_dir / "images_w.png")


def plot_depth_comparison(out_dir: Path, learned: ImagesResult, fixed: list[ImagesResult]) -> None:
    """Test accuracy against fixed depth, the learned run marked at its mean active depth."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ks = [int(r.label.removeprefix("fixed")) for r in fixed]
    ax.plot(ks, [r.final_test_acc for r in fixed], "o-", color="C0", label="fixed depth, final")
    ax.plot(ks, [r.best_test_acc for r in fixed], "s:", color="C0", alpha=0.6, label="fixed depth, best")
    depth = float(np.mean(list(learned.active_blocks.values())))
    blocks = "/".join(str(v) for v in learned.active_blocks.values())
    ax.plot([depth], [learned.final_test_acc], "*", ms=16, color="C3",
            label=f"learned (active blocks {blocks}), final")
    ax.axhline(learned.final_test_acc, color="C3", lw=0.8, ls="--")
    ax.set(xlabel="blocks per layer (learned: mean active blocks)", ylabel="test accuracy",
           title="fixed depth against learned depth")
    ax.set_xticks(ks)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, out_dir / "images_fixed_depth.png")
