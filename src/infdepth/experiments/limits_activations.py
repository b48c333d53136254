"""Experiment 2: the depth limit depends on the activation; the width limit does not look so.

For a fixed small width, ``Y_0 = W_in x ~ N(0, q0 I)`` is run through the diffusion of each
activation (Euler-Maruyama, the law of a very deep ResNet); the histogram of one
coordinate at ``t1`` is set against the Gaussian ``N(0, q_t1)`` of the infinite-width
limit (``dq/dt = E[phi(sqrt(q) Z)^2]``).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import stats
from tqdm.auto import tqdm

from infdepth.experiments.limits_common import (
    add_common,
    positive_float,
    positive_ints,
    prepare_run,
    pyplot,
    save_figure,
    set_threads,
    str_list,
)
from infdepth.io import seed_everything, write_json
from infdepth.limits import ResNetSDE, infinite_width_law, resolve_activation, simulate


@dataclass(frozen=True)
class ActivationsConfig:
    """Width, time, sample size and the activations compared."""

    width: int = 2
    t1: float = 2.0
    q0: float = 1.0
    samples: int = 20_000
    steps: int = 1000
    activations: list[str] = field(default_factory=lambda: ["linear", "relu", "tanh"])
    seed: int = 0


def run(cfg: ActivationsConfig) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Returns the summary and the simulated coordinate per activation."""
    positive_ints("width", [cfg.width])
    positive_ints("samples", [cfg.samples])
    positive_ints("steps", [cfg.steps])
    t1 = positive_float("t1", cfg.t1)
    q0 = positive_float("q0", cfg.q0)
    gen = seed_everything(cfg.seed)
    summary: dict[str, Any] = {"activations": {}}
    draws: dict[str, np.ndarray] = {}
    for name in tqdm(cfg.activations, desc="activations", leave=False):
        act = resolve_activation(name, "activations")
        y0 = math.sqrt(q0) * torch.randn(cfg.samples, cfg.width, generator=gen,
                                         dtype=torch.float64)
        x = simulate(ResNetSDE.create(cfg.width, act), y0, t1, cfg.steps,
                     generator=gen).values()[-1][:, 0].numpy()
        gauss = infinite_width_law(act, t1, q0)
        ks = stats.kstest(x, gauss.cdf)
        draws[act.name] = x
        summary["activations"][act.name] = {
            "variance_depth_limit": float(x.var()),
            "variance_infinite_width": float(gauss.var()),
            "excess_kurtosis": float(stats.kurtosis(x)),
            "excess_kurtosis_se_if_gaussian": math.sqrt(24 / cfg.samples),
            "ks_vs_gaussian": float(ks.statistic),
            "p_value_vs_gaussian": float(ks.pvalue),
            "fraction_exactly_frozen": float(np.mean(x == y0[:, 0].numpy())),
        }
    return summary, draws


def plot(summary: dict[str, Any], draws: dict[str, np.ndarray], cfg: ActivationsConfig,
         path: Any) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(draws), figsize=(4 * len(draws), 3.6))
    axes = np.atleast_1d(axes)
    for ax, (name, x) in zip(axes, draws.items(), strict=True):
        sd = math.sqrt(summary["activations"][name]["variance_infinite_width"])
        lo, hi = np.quantile(x, [0.002, 0.998])
        lo, hi = min(lo, -3 * sd), max(hi, 3 * sd)
        ax.hist(x, bins=120, range=(lo, hi), density=True, alpha=0.6, label="depth limit")
        grid = np.linspace(lo, hi, 400)
        ax.plot(grid, stats.norm(0, sd).pdf(grid), "k-", lw=1.5, label="infinite width")
        s = summary["activations"][name]
        ax.set_title(f"{name}: kurtosis {s['excess_kurtosis']:.2f}, KS {s['ks_vs_gaussian']:.3f}",
                     fontsize=9)
        ax.set_yscale("log")
        ax.set_ylim(bottom=1.0 / x.size)
        ax.set_xlabel(f"coordinate of X_t, t = {cfg.t1}, width {cfg.width}")
    axes[0].legend(fontsize=8)
    save_figure(fig, path)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p, "activations")
    d = ActivationsConfig()
    p.add_argument("--width", type=int, default=d.width, help="width n of the network")
    p.add_argument("--t1", type=float, default=d.t1, help="diffusion time (depth as time)")
    p.add_argument("--q0", type=float, default=d.q0, help="variance of Y_0 coordinates")
    p.add_argument("--samples", type=int, default=d.samples, help="samples per activation")
    p.add_argument("--steps", type=int, default=d.steps, help="Euler-Maruyama steps")
    p.add_argument("--activations", type=str_list, default=list(d.activations),
                   help="comma-separated activations (linear, relu, tanh)")


def main(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    cfg = ActivationsConfig(width=args.width, t1=args.t1, q0=args.q0, samples=args.samples,
                            steps=args.steps,
                            activations=list(args.activations),
                            seed=args.seed)
    for a in cfg.activations:
        resolve_activation(a, "--activations")
    out = prepare_run(args.out, cfg)
    summary, draws = run(cfg)
    write_json(out / "summary.json", summary)
    plot(summary, draws, cfg, out / "activations.png")
    for name, s in summary["activations"].items():
        print(f"{name}: excess kurtosis {s['excess_kurtosis']:.3f}, "
              f"KS vs Gaussian {s['ks_vs_gaussian']:.4f} (p={s['p_value_vs_gaussian']:.2g})")
    return 0
