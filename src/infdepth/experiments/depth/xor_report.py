"""What an ``xor`` sweep reports: per-run records, ``summary.json``, ``table.md`` and figures.

The records sit below the run that writes them (``xor.py``) and the plots that read them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from infdepth.data.history import xor_history as reference_history
from infdepth.experiments._common import pyplot
from infdepth.io import read_jsonl
from infdepth.models.xor_net import INPUTS


@dataclass(frozen=True)
class XorResult:
    """What one run ends with."""

    k: int
    seed: int
    final_w: float
    max_w: float
    final_val_acc: float
    steps_to_99: int | None
    built_blocks: int
    seconds: float


def summarise(results: list[XorResult], config: dict[str, Any]) -> dict[str, Any]:
    """Per-k means over seeds, the Spearman correlation of k with final w, the reference."""
    ref = reference_history()
    per_k: dict[str, Any] = {}
    by_k: dict[int, list[XorResult]] = defaultdict(list)
    for r in results:
        by_k[r.k].append(r)
    for k, runs in sorted(by_k.items()):
        entry: dict[str, Any] = {
            "final_w": float(np.mean([r.final_w for r in runs])),
            "final_w_std": float(np.std([r.final_w for r in runs])),
            "final_w_per_seed": [r.final_w for r in runs],
            "seconds": float(np.mean([r.seconds for r in runs])),
            "max_w": float(np.mean([r.max_w for r in runs])),
            "final_val_acc": float(np.mean([r.final_val_acc for r in runs])),
            "min_final_val_acc": min(r.final_val_acc for r in runs),
            "steps_to_99": [r.steps_to_99 for r in runs],
            "built_blocks": [r.built_blocks for r in runs],
        }
        if k in ref:
            entry["reference_final_w"] = ref[k]["w"][-1]
            entry["reference_max_w"] = max(ref[k]["w"])
        per_k[str(k)] = entry
    ks = [r.k for r in results]
    spearman = stats.spearmanr(ks, [r.final_w for r in results]) if len(set(ks)) > 1 else None
    mean_ks = sorted(by_k)
    spearman_mean = (
        stats.spearmanr(mean_ks, [per_k[str(k)]["final_w"] for k in mean_ks]) if len(mean_ks) > 1 else None
    )
    per_seed: dict[str, float | None] = {}
    for seed in sorted({r.seed for r in results}):
        mine = [r for r in results if r.seed == seed]
        rho = stats.spearmanr([r.k for r in mine], [r.final_w for r in mine]) if len(mine) > 2 else None
        per_seed[str(seed)] = None if rho is None else float(rho.statistic)
    return {
        "config": config,
        "spearman_k_vs_final_w_per_seed": per_seed,
        "runs": [asdict(r) for r in results],
        "per_k": per_k,
        "spearman_k_vs_final_w_runs": None if spearman is None else float(spearman.statistic),
        "spearman_k_vs_final_w_means": None if spearman_mean is None else float(spearman_mean.statistic),
        "all_runs_100pct": all(r.final_val_acc >= 1.0 for r in results),
    }


def _reference_w_at(ref: dict[str, list[float]], step: int) -> float:
    """The original run's ``w`` at the recorded iteration closest to ``step``."""
    its = np.asarray(ref["iteration"])
    return float(np.asarray(ref["w"])[int(np.argmin(np.abs(its - step)))])


def _seconds(value: float) -> str:
    return f"{value:.0f}" if math.isfinite(value) else "n/a"


def comparison_table(summary: dict[str, Any]) -> str:
    """Markdown table per k: our final w per seed beside the original run's w at the same step."""
    ref = reference_history()
    steps = int(summary["config"]["steps"])
    lines = [
        f"| k | final w per seed | mean +- sd | original w at step {steps:,} | original final w "
        "| max w (ours, mean) | steps to 99% val acc | final val acc (min) | s per run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for k, e in summary["per_k"].items():
        original = _reference_w_at(ref[int(k)], steps) if int(k) in ref else float("nan")
        per_seed = ", ".join(f"{w:.2f}" for w in e["final_w_per_seed"])
        to_99 = ", ".join("-" if s is None else str(s) for s in e["steps_to_99"])
        lines.append(
            f"| {k} | {per_seed} | {e['final_w']:.2f} +- {e['final_w_std']:.2f} | {original:.2f} | "
            f"{e.get('reference_final_w', float('nan')):.2f} | {e['max_w']:.2f} | {to_99} | "
            f"{e['min_final_val_acc']:.4f} | {_seconds(e['seconds'])} |"
        )
    lines.append("")
    rhos = ", ".join(
        f"seed {s}: {'n/a' if r is None else f'{r:.3f}'}"
        for s, r in summary["spearman_k_vs_final_w_per_seed"].items()
    )
    lines.append(f"Spearman(k, final w) per seed: {rhos}")
    lines.append(f"Spearman(k, final w) over runs: {summary['spearman_k_vs_final_w_runs']}")
    lines.append(f"Spearman(k, mean final w): {summary['spearman_k_vs_final_w_means']}")
    return "\n".join(lines) + "\n"


def plot_sweep(out_dir: Path, results: list[XorResult]) -> None:
    """w, validation accuracy and validation loss against step for every k (PNG)."""
    plt = pyplot()
    ref = reference_history()
    cmap = plt.get_cmap("viridis")
    panels = (("w", "w (depth)"), ("val_acc", "validation accuracy"), ("val_loss", "validation loss"))
    for key, label in panels:
        fig, ax = plt.subplots(figsize=(9, 5))
        for r in results:
            hist = read_jsonl(out_dir / f"k{r.k}_seed{r.seed}" / "metrics.jsonl")
            steps = [h["step"] for h in hist if key in h or key == "w"]
            vals = [h["w"]["2"] if key == "w" else h[key] for h in hist if key in h or key == "w"]
            ax.plot(
                steps,
                vals,
                color=cmap(r.k / INPUTS),
                lw=1,
                label=f"k={r.k}" if r.seed == min(x.seed for x in results if x.k == r.k) else None,
            )
        if key == "w" and ref:
            horizon = max(x.k for x in results)
            last = max(
                h["step"]
                for h in read_jsonl(out_dir / f"k{results[-1].k}_seed{results[-1].seed}" / "metrics.jsonl")
            )
            for k, d in ref.items():
                if k <= horizon:
                    it = np.asarray(d["iteration"])
                    mask = it <= last
                    ax.plot(it[mask], np.asarray(d["w"])[mask], color=cmap(k / INPUTS), lw=0.8, ls="--")
            ax.plot([], [], color="grey", ls="--", label="original run")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        if key == "val_loss":
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(ncol=2, fontsize=8)
        ax.set_title(f"XOR: {label} against step")
        fig.tight_layout()
        fig.savefig(out_dir / f"xor_{key}.png", dpi=110)
        plt.close(fig)
    _plot_w_per_k(out_dir, results, ref)


def _plot_w_per_k(out_dir: Path, results: list[XorResult], ref: dict[int, dict[str, list[float]]]) -> None:
    """``xor_w_by_k.png``: one panel per k, every seed's w against step beside the original run's."""
    plt = pyplot()
    ks = sorted({r.k for r in results})
    cols = min(3, len(ks))
    rows = math.ceil(len(ks) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4 * cols, 2.8 * rows), sharex=True, sharey=True, squeeze=False
    )
    for ax, k in zip(axes.flat, ks):
        last = 0
        for r in (r for r in results if r.k == k):
            hist = read_jsonl(out_dir / f"k{r.k}_seed{r.seed}" / "metrics.jsonl")
            steps = [h["step"] for h in hist]
            last = max(last, steps[-1] if steps else 0)
            ax.plot(steps, [h["w"]["2"] for h in hist], lw=1, label=f"seed {r.seed}")
        if k in ref:
            it = np.asarray(ref[k]["iteration"])
            mask = it <= last
            ax.plot(it[mask], np.asarray(ref[k]["w"])[mask], color="black", lw=1, ls="--", label="original")
        ax.set_title(f"k = {k}", fontsize=10)
        ax.grid(True, alpha=0.3)
    for ax in axes.flat[len(ks):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    for ax in axes[:, 0]:
        ax.set_ylabel("w")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("XOR: learned depth w against step, per number of active inputs k")
    fig.tight_layout()
    fig.savefig(out_dir / "xor_w_by_k.png", dpi=100)
    plt.close(fig)
