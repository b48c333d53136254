"""Experiment 1: the law of a depth-L random ResNet approaches its diffusion limit.

Closed forms (linear activation: log-normal norm; ReLU width 1: log-normal output) are
compared with finite ResNets of growing depth by the Kolmogorov-Smirnov distance and
p-value and the Wasserstein-1 distance; tanh, which has no closed form, is compared with
a fine Euler-Maruyama solution of its diffusion by a two-sample KS test.
"""

from __future__ import annotations

import argparse
import math
import time
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
    int_list,
    option,
    pyplot,
    run_from_args,
    save_figure,
)
from infdepth.experiments.limits._shared import MAX_TIME, progress, start_run, write_summary
from infdepth.io import seed_everything
from infdepth.limits import (
    EulerMaruyama,
    ResNetSDE,
    linear_norm_law,
    relu_width1_law,
    simulate,
    simulate_resnet,
)

#: the deepest stack and the longest reference diffusion a run may ask for (each sample runs
#: every layer and step: larger values only stall the run)
MAX_DEPTH = 100_000
MAX_STEPS = 1_000_000


@dataclass(frozen=True)
class Config:
    """Depths, sample size and the cases compared."""

    depths: tuple[int, ...] = option((1, 3, 10, 30, 100, 300, 1000), "comma-separated depths L",
                                     type=int_list)
    samples: int = option(20_000, "networks sampled per depth")
    t1: float = option(1.0, "diffusion time covered by the stack")
    linear_width: int = option(3, "width n of the linear case")
    tanh_width: int = option(2, "width n of the tanh case")
    tanh_reference_steps: int = option(2000, "Euler-Maruyama steps of the tanh reference diffusion")
    seed: int = option(0, "random seed")

    def __post_init__(self) -> None:
        check_items("--depths", self.depths, lambda n, v: check_int(n, v, low=1, high=MAX_DEPTH))
        check_int("--samples", self.samples, low=1)
        check_float("--t1", self.t1, low=0.0, high=MAX_TIME, strict=True)
        check_int("--linear-width", self.linear_width, low=1)
        check_int("--tanh-width", self.tanh_width, low=1)
        check_int("--tanh-reference-steps", self.tanh_reference_steps, low=1, high=MAX_STEPS)
        check_int("--seed", self.seed, low=0)
        widest = max(self.linear_width, self.tanh_width)
        # the state, the reference's noise drawn a chunk of steps at a time, and the saved paths
        check_allocatable("--samples x --linear-width/--tanh-width",
                          self.samples * widest * (EulerMaruyama.chunk + 4))


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``infdepth limits convergence`` (from :class:`Config`) and the run flags."""
    add_config_arguments(parser, Config)
    add_run_arguments(parser, "runs/limits-convergence")


def main(args: argparse.Namespace) -> int:
    """``infdepth limits convergence``: validate, run, print the deepest comparison per case."""
    summary, ctx = run_from_args(Config, run, args)
    for name, r in summary["at_max_depth"].items():
        ctx.say(f"{name}: L={r['depth']} KS={r['ks']:.4f} p={r['p_value']:.3f}")
    return 0
