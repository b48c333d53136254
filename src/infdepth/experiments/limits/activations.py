"""Experiment 2: the depth limit depends on the activation; the width limit does not look so.

For a fixed small width, ``Y_0 = W_in x ~ N(0, q0 I)`` is run through the diffusion of each
activation (Euler-Maruyama, the law of a very deep ResNet); the histogram of one
coordinate at ``t1`` is set against the Gaussian ``N(0, q_t1)`` of the infinite-width
limit (``dq/dt = E[phi(sqrt(q) Z)^2]``).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from infdepth.errors import check_float, check_int, check_items
from infdepth.experiments._common import (
    RunContext,
    add_config_arguments,
    add_run_arguments,
    check_allocatable,
    option,
    pyplot,
    run_from_args,
    save_figure,
    str_list,
)
from infdepth.experiments.limits._shared import (
    ACTIVATIONS_HELP,
    MAX_TIME,
    known_activation,
    progress,
    start_run,
    write_summary,
)
from infdepth.io import seed_everything
from infdepth.limits import EulerMaruyama, ResNetSDE, infinite_width_law, resolve_activation, simulate

MAX_VARIANCE = 1e6
"""Largest ``--q0``: squared norms of the coordinates must stay far from overflow."""


@dataclass(frozen=True)
class Config:
    """Width, time, sample size and the activations compared."""

    width: int = option(2, "width n of the network")
    t1: float = option(2.0, "diffusion time (depth as time)")
    q0: float = option(1.0, "variance of the coordinates of Y_0")
    samples: int = option(20_000, "samples per activation")
    steps: int = option(1000, "Euler-Maruyama steps")
    activations: tuple[str, ...] = option(("linear", "relu", "tanh"),
                                          f"comma-separated activations ({ACTIVATIONS_HELP})",
                                          type=str_list)
    seed: int = option(0, "random seed")

    def __post_init__(self) -> None:
        check_int("--width", self.width, low=1)
        check_float("--t1", self.t1, low=0.0, high=MAX_TIME, strict=True)
        check_float("--q0", self.q0, low=0.0, high=MAX_VARIANCE, strict=True)
        check_int("--samples", self.samples, low=1)
        check_int("--steps", self.steps, low=1)
        check_items("--activations", self.activations, known_activation)
        check_int("--seed", self.seed, low=0)
        # the state, the noise drawn a chunk of steps at a time, and the saved paths
        check_allocatable("--samples x --width", self.samples * self.width * (EulerMaruyama.chunk + 4))


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``infdepth limits activations`` (from :class:`Config`) and the run flags."""
    add_config_arguments(parser, Config)
    add_run_arguments(parser, "runs/limits-activations")


def main(args: argparse.Namespace) -> int:
    """``infdepth limits activations``: validate, run, print one line per activation."""
    summary, ctx = run_from_args(Config, run, args)
    for name, s in summary["activations"].items():
        ctx.say(f"{name}: excess kurtosis {s['excess_kurtosis']:.3f}, "
                f"KS vs Gaussian {s['ks_vs_gaussian']:.4f} (p={s['p_value_vs_gaussian']:.2g})")
    return 0
