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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import stats
from tqdm.auto import tqdm

from infdepth.experiments.limits_common import (
    add_common,
    int_list,
    positive_float,
    positive_ints,
    prepare_run,
    pyplot,
    save_figure,
    set_threads,
)
from infdepth.io import seed_everything, write_json
from infdepth.limits import (
    ResNetSDE,
    linear_norm_law,
    relu_width1_law,
    simulate,
    simulate_resnet,
)


@dataclass(frozen=True)
class ConvergenceConfig:
    """Depths, sample size and the cases compared."""

    depths: list[int] = field(default_factory=lambda: [1, 3, 10, 30, 100, 300, 1000])
    samples: int = 20_000
    t1: float = 1.0
    linear_width: int = 3
    tanh_width: int = 2
    tanh_reference_steps: int = 2000
    seed: int = 0


def _w1_to_law(sample: np.ndarray, law: Any) -> float:
    # Wasserstein-1 through the quantile coupling: mean |x_(i) - F^{-1}((i - 1/2)/N)|
    x = np.sort(sample)
    q = law.ppf((np.arange(x.size) + 0.5) / x.size)
    return float(np.mean(np.abs(x - q)))


def run(cfg: ConvergenceConfig) -> dict[str, Any]:
    """Run the comparison; returns the summary (also what ``summary.json`` holds)."""
    depths = positive_ints("depths", cfg.depths)
    positive_ints("samples", [cfg.samples])
    positive_ints("linear_width", [cfg.linear_width])
    positive_ints("tanh_width", [cfg.tanh_width])
    t1 = positive_float("t1", cfg.t1)
    gen = seed_everything(cfg.seed)
    dt = torch.float64
    n_lin = cfg.linear_width
    cases: dict[str, dict[str, Any]] = {
        f"linear n={n_lin} ||Y_L||": {"activation": "linear",
                                      "y0": torch.full((n_lin,), 1 / math.sqrt(n_lin), dtype=dt),
                                      "law": linear_norm_law(n_lin, t1, 1.0)},
        "relu n=1 Y_L": {"activation": "relu", "y0": torch.ones(1, dtype=dt),
                         "law": relu_width1_law(t1, 1.0)},
    }
    n_tanh = cfg.tanh_width
    y0_tanh = torch.full((n_tanh,), 1.0, dtype=dt)
    ref = simulate(ResNetSDE.create(n_tanh, "tanh"), y0_tanh, t1, cfg.tanh_reference_steps,
                   samples=cfg.samples, generator=gen).values()[-1][:, 0].numpy()
    cases[f"tanh n={n_tanh} Y_L[0] (vs EM)"] = {"activation": "tanh", "y0": y0_tanh,
                                                 "reference": ref}
    results: dict[str, list[dict[str, float]]] = {}
    bar = tqdm(total=len(cases) * len(depths), desc="convergence", leave=False)
    for name, case in cases.items():
        rows = []
        for depth in depths:
            start = time.perf_counter()
            y = simulate_resnet(case["y0"], depth, activation=case["activation"], t1=t1,
                                samples=cfg.samples, generator=gen).final[:, 0, :]
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
        "ks_critical_0.05": 1.358 / math.sqrt(cfg.samples),
    }


def plot(summary: dict[str, Any], path: Any) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, rows in summary["cases"].items():
        d = [r["depth"] for r in rows]
        axes[0].loglog(d, [r["ks"] for r in rows], "o-", label=name)
        axes[1].loglog(d, [r["wasserstein1"] for r in rows], "o-", label=name)
    axes[0].axhline(summary["ks_critical_0.05"], color="k", ls="--", lw=1,
                    label="KS critical value (5%)")
    for ax, label in zip(axes, ["Kolmogorov-Smirnov distance", "Wasserstein-1 distance"],
                         strict=True):
        ax.set_xlabel("depth L")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Finite-depth random ResNet vs its depth limit (t1 = 1)")
    save_figure(fig, path)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p, "convergence")
    p.add_argument("--depths", type=int_list, default=ConvergenceConfig().depths,
                   help="comma-separated depths L")
    p.add_argument("--samples", type=int, default=20_000, help="networks sampled per depth")
    p.add_argument("--t1", type=float, default=1.0, help="diffusion time covered by the stack")
    p.add_argument("--linear-width", type=int, default=3, help="width n of the linear case")
    p.add_argument("--tanh-width", type=int, default=2, help="width n of the tanh case")
    p.add_argument("--tanh-reference-steps", type=int, default=2000,
                   help="Euler-Maruyama steps of the tanh reference diffusion")


def main(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    cfg = ConvergenceConfig(depths=args.depths, samples=args.samples, t1=args.t1,
                            linear_width=args.linear_width, tanh_width=args.tanh_width,
                            tanh_reference_steps=args.tanh_reference_steps, seed=args.seed)
    positive_ints("--tanh-reference-steps", [cfg.tanh_reference_steps])
    out = prepare_run(args.out, cfg)
    summary = run(cfg)
    write_json(out / "summary.json", summary)
    plot(summary, out / "convergence.png")
    for name, r in summary["at_max_depth"].items():
        print(f"{name}: L={r['depth']} KS={r['ks']:.4f} p={r['p_value']:.3f}")
    return 0
