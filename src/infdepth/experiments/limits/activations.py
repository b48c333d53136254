"""The run of ``infdepth limits activations`` (experiment 2).

What it measures and its flags: :mod:`infdepth.experiments.limits.activations_config` (torch-free,
for ``--help``); ``Config`` is re-exported here.
"""

from __future__ import annotations

import argparse
import math
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
from infdepth.experiments.limits._shared import (
    progress,
    start_run,
    write_summary,
)
from infdepth.experiments.limits.activations_config import (  # noqa: F401  (the flags' half, re-exported)
    MAX_VARIANCE,
    Config,
    add_arguments,
)
from infdepth.io import seed_everything
from infdepth.limits import ResNetSDE, infinite_width_law, resolve_activation, simulate


def simulate_activations(config: Config, ctx: RunContext) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The summary and the simulated coordinate at ``t1`` per activation."""
    from scipy import stats

    gen = seed_everything(config.seed)
    summary: dict[str, Any] = {"activations": {}}
    draws: dict[str, np.ndarray] = {}
    for name in progress(ctx, config.activations, desc="activations"):
        act = resolve_activation(name, "--activations")
        y0 = math.sqrt(config.q0) * torch.randn(config.samples, config.width, generator=gen,
                                                dtype=torch.float64)
        x = simulate(ResNetSDE.create(config.width, act), y0, config.t1, config.steps,
                     generator=gen).values()[-1][:, 0].numpy()
        gauss = infinite_width_law(act, config.t1, config.q0)
        ks = stats.kstest(x, gauss.cdf)
        draws[act.name] = x
        summary["activations"][act.name] = {
            "variance_depth_limit": float(x.var()),
            "variance_infinite_width": float(gauss.var()),
            "excess_kurtosis": float(stats.kurtosis(x)),
            "excess_kurtosis_se_if_gaussian": math.sqrt(24 / config.samples),
            "ks_vs_gaussian": float(ks.statistic),
            "p_value_vs_gaussian": float(ks.pvalue),
            "fraction_exactly_frozen": float(np.mean(x == y0[:, 0].numpy())),
        }
    return summary, draws


def plot(summary: dict[str, Any], draws: dict[str, np.ndarray], config: Config, path: Path) -> None:
    """Histograms of the depth limit against the infinite-width Gaussian, one panel per activation."""
    from scipy import stats

    plt = pyplot()
    fig, axes = plt.subplots(1, len(draws), figsize=(4 * len(draws), 3.6))
    axes = np.atleast_1d(axes)
    for ax, (name, x) in zip(axes, draws.items(), strict=True):
        s = summary["activations"][name]
        sd = math.sqrt(s["variance_infinite_width"])
        lo, hi = np.quantile(x, [0.002, 0.998])
        lo, hi = min(lo, -3 * sd), max(hi, 3 * sd)
        ax.hist(x, bins=120, range=(lo, hi), density=True, alpha=0.6, label="depth limit")
        grid = np.linspace(lo, hi, 400)
        ax.plot(grid, stats.norm(0, sd).pdf(grid), "k-", lw=1.5, label="infinite width")
        ax.set_title(f"{name}: kurtosis {s['excess_kurtosis']:.2f}, KS {s['ks_vs_gaussian']:.3f}",
                     fontsize=9)
        ax.set_yscale("log")
        ax.set_ylim(bottom=1.0 / x.size)
        ax.set_xlabel(f"coordinate of X_t, t = {config.t1}, width {config.width}")
    axes[0].legend(fontsize=8)
    save_figure(fig, path)


def run(config: Config, ctx: RunContext) -> dict[str, Any]:
    """Open the run folder, simulate, write ``summary.json`` and ``activations.png``."""
    out = start_run(config, ctx)
    summary, draws = simulate_activations(config, ctx)
    write_summary(ctx, summary)
    plot(summary, draws, config, out / "activations.png")
    return summary


def main(args: argparse.Namespace) -> int:
    """``infdepth limits activations``: validate, run, print one line per activation."""
    summary, ctx = run_from_args(Config, run, args)
    for name, s in summary["activations"].items():
        ctx.say(f"{name}: excess kurtosis {s['excess_kurtosis']:.3f}, "
                f"KS vs Gaussian {s['ks_vs_gaussian']:.4f} (p={s['p_value_vs_gaussian']:.2g})")
    return 0
