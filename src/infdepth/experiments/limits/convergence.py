"""The run of ``infdepth limits convergence`` (experiment 1).

What it measures and its flags: :mod:`infdepth.experiments.limits.convergence_config` (torch-free,
for ``--help``); ``Config`` is re-exported here.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from infdepth.experiments._common import (
    RunContext,
    pyplot,
    run_from_args,
    save_figure,
)
from infdepth.experiments.limits._shared import progress, start_run, write_summary
from infdepth.experiments.limits.convergence_config import (  # noqa: F401  (the flags' half, re-exported)
    MAX_DEPTH,
    MAX_STEPS,
    Config,
    add_arguments,
)
from infdepth.io import seed_everything
from infdepth.limits import (
    ResNetSDE,
    linear_norm_law,
    relu_width1_law,
    simulate,
    simulate_resnet,
)


def _w1_to_law(sample: np.ndarray, law: Any) -> float:
    # Wasserstein-1 through the quantile coupling: mean |x_(i) - F^{-1}((i - 1/2)/N)|
    x = np.sort(sample)
    q = law.ppf((np.arange(x.size) + 0.5) / x.size)
    return float(np.mean(np.abs(x - q)))


def compare(config: Config, ctx: RunContext) -> dict[str, Any]:
    """KS and Wasserstein-1 distances of every case at every depth; the summary."""
    from scipy import stats

    gen = seed_everything(config.seed)
    dt, t1, n_lin, n_tanh = torch.float64, config.t1, config.linear_width, config.tanh_width
    cases: dict[str, dict[str, Any]] = {
        f"linear n={n_lin} ||Y_L||": {"activation": "linear",
                                      "y0": torch.full((n_lin,), 1 / math.sqrt(n_lin), dtype=dt),
                                      "law": linear_norm_law(n_lin, t1, 1.0)},
        "relu n=1 Y_L": {"activation": "relu", "y0": torch.ones(1, dtype=dt),
                         "law": relu_width1_law(t1, 1.0)},
    }
    y0_tanh = torch.full((n_tanh,), 1.0, dtype=dt)
    ref = simulate(ResNetSDE.create(n_tanh, "tanh"), y0_tanh, t1, config.tanh_reference_steps,
                   samples=config.samples, generator=gen).values()[-1][:, 0].numpy()
    cases[f"tanh n={n_tanh} Y_L[0] (vs EM)"] = {"activation": "tanh", "y0": y0_tanh, "reference": ref}
    results: dict[str, list[dict[str, float]]] = {}
    bar = progress(ctx, total=len(cases) * len(config.depths), desc="convergence")
    for name, case in cases.items():
        rows = []
        for depth in config.depths:
            start = time.perf_counter()
            y = simulate_resnet(case["y0"], depth, activation=case["activation"], t1=t1,
                                samples=config.samples, generator=gen).final[:, 0, :]
            if "law" in case:
                x = (y.norm(dim=-1) if case["activation"] == "linear" else y[:, 0]).numpy()
                ks = stats.kstest(x, case["law"].cdf)
                w1 = _w1_to_law(x, case["law"])
            else:
                x = y[:, 0].numpy()
                ks = stats.ks_2samp(x, case["reference"])
                w1 = float(stats.wasserstein_distance(x, case["reference"]))
            rows.append({"depth": depth, "ks": float(ks.statistic), "p_value": float(ks.pvalue),
                         "wasserstein1": w1, "seconds": time.perf_counter() - start})
            bar.update()
        results[name] = rows
    bar.close()
    deepest = {name: rows[-1] for name, rows in results.items()}
    return {
        "cases": results,
        "at_max_depth": {name: {"depth": r["depth"], "ks": r["ks"], "p_value": r["p_value"],
                                "rejected_at_0.05": r["p_value"] < 0.05}
                         for name, r in deepest.items()},
        "ks_critical_0.05": 1.358 / math.sqrt(config.samples),
    }


def plot(summary: dict[str, Any], config: Config, path: Path) -> None:
    """KS and Wasserstein-1 distance against depth, one line per case."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, rows in summary["cases"].items():
        d = [r["depth"] for r in rows]
        axes[0].loglog(d, [r["ks"] for r in rows], "o-", label=name)
        axes[1].loglog(d, [r["wasserstein1"] for r in rows], "o-", label=name)
    axes[0].axhline(summary["ks_critical_0.05"], color="k", ls="--", lw=1, label="KS critical value (5%)")
    for ax, label in zip(axes, ["Kolmogorov-Smirnov distance", "Wasserstein-1 distance"], strict=True):
        ax.set_xlabel("depth L")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Finite-depth random ResNet vs its depth limit (t1 = {config.t1:g})")
    save_figure(fig, path)


def run(config: Config, ctx: RunContext) -> dict[str, Any]:
    """Open the run folder, compare, write ``summary.json`` and ``convergence.png``."""
    out = start_run(config, ctx)
    summary = compare(config, ctx)
    write_summary(ctx, summary)
    plot(summary, config, out / "convergence.png")
    return summary


def main(args: argparse.Namespace) -> int:
    """``infdepth limits convergence``: validate, run, print the deepest comparison per case."""
    summary, ctx = run_from_args(Config, run, args)
    for name, r in summary["at_max_depth"].items():
        ctx.say(f"{name}: L={r['depth']} KS={r['ks']:.4f} p={r['p_value']:.3f}")
    return 0
