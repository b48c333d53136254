"""Experiment 3: the width 3 -> 4 change of regime of ReLU post-activation norms.

The ReLU diffusion ``dX = n^{-1/2} ||relu(X)|| dB`` is run from ``X_0 ~ N(0, I_n)`` for
widths 1..8 over long times (log-scale Euler-Maruyama). With ``k_t`` active coordinates,
``d log ||relu(X_t)||^2 = (k_t - 2)/n dt + 2 n^{-1/2} dbeta_t`` (exact). Measured, with 95%
confidence intervals: the initial drift of ``E[log ||relu(X_t)||^2 | relu(X_0) != 0]``
(negative for n <= 3, positive for n >= 4), its rise and peak time, and the long-time
behaviour (one active coordinate, slope -1/n, the norm going to 0 for every width).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from infdepth.experiments.limits_common import (
    add_common,
    int_list,
    mean_ci,
    positive_float,
    positive_ints,
    prepare_run,
    pyplot,
    save_figure,
    set_threads,
)
from infdepth.io import seed_everything, write_json
from infdepth.limits import LogScaleEuler, ResNetSDE, expected_active_given_alive, simulate


@dataclass(frozen=True)
class WidthRegimeConfig:
    """Widths, horizon, step and sample size."""

    widths: list[int] = field(default_factory=lambda: list(range(1, 9)))
    t_max: float = 400.0
    dt: float = 0.05
    samples: int = 2000
    saves: int = 200
    seed: int = 0


def euler_one_active_slope(n: int, dt: float) -> float:
    """Slope of ``log ||relu X||^2`` that Euler-Maruyama itself has with one active coordinate.

    One step multiplies the active coordinate by ``1 + sqrt(dt/n) Z``: the slope is
    ``2 E[log |1 + sqrt(dt/n) Z|] / dt = -1/n - 3 dt / (2 n^2) + O(dt^2)`` (Gauss-Hermite).
    """
    z, w = np.polynomial.hermite_e.hermegauss(200)
    a = math.sqrt(dt / n)
    # the log singularity at Z = -1/a lies far in the tail for the steps used here
    return float(2 * (w * np.log(np.abs(1 + a * z))).sum() / w.sum() / dt)


def _width_run(n: int, cfg: WidthRegimeConfig, gen: torch.Generator) -> dict[str, Any]:
    steps = max(1, round(cfg.t_max / cfg.dt))
    idx = np.unique(np.concatenate([[0, 1, 2, 4], np.round(np.geomspace(1, steps, cfg.saves))]))
    y0 = torch.randn(cfg.samples, n, generator=gen, dtype=torch.float64)
    paths = simulate(ResNetSDE.create(n, "relu"), y0, cfg.t_max, steps, generator=gen,
                     solver=LogScaleEuler(), save_at=[int(i) for i in idx])
    t = paths.times.numpy()
    with np.errstate(divide="ignore"):
        log_s = (2 * paths.log_norm("relu")).numpy()
    k = (paths.y > 0).sum(-1).numpy()
    alive = k[0] >= 1
    ls, kk = log_s[:, alive], k[:, alive]
    frozen = ~np.isfinite(ls[-1])  # absorbed by the scheme (the diffusion never is)
    live = ~frozen
    rel = ls[:, live] - ls[0, live]
    mean_rel, ci_rel = mean_ci(rel, axis=1)
    drift0, drift0_ci = mean_ci((kk[0] - 2) / n)
    peak = int(np.argmax(mean_rel))
    half = t >= cfg.t_max / 2
    tt = t[half] - t[half].mean()
    slopes = (tt[:, None] * (ls[half][:, live] - ls[half][:, live].mean(0))).sum(0) / (tt**2).sum()
    one_late = (kk[half][:, live] == 1).all(0)
    slope_one, slope_one_ci = mean_ci(slopes[one_late]) if one_late.sum() > 1 else (np.nan, np.nan)
    slope_all, slope_all_ci = mean_ci(slopes)
    k_one, k_one_ci = mean_ci((kk[-1] == 1).astype(float))
    below, below_ci = mean_ci((rel[-1] < 0).astype(float))
    mean_k, _ = mean_ci(kk[:, live].astype(float), axis=1)
    return {
        "width": n,
        "alive_at_start": float(alive.mean()),
        "frozen_by_scheme": float(frozen.mean()),
        "initial_drift": {"estimate": float(drift0), "ci95": float(drift0_ci),
                          "exact": (expected_active_given_alive(n) - 2) / n},
        "rise": {"max_mean_increase": float(mean_rel[peak]), "ci95": float(ci_rel[peak]),
                 "peak_time": float(t[peak])},
        "long_time": {"fraction_one_active": float(k_one), "ci95": float(k_one_ci),
                      "slope_when_one_active": float(slope_one), "slope_ci95": float(slope_one_ci),
                      "slope_all": float(slope_all), "slope_all_ci95": float(slope_all_ci),
                      "theory_slope": -1.0 / n,
                      "euler_slope": euler_one_active_slope(n, cfg.dt),
                      "fraction_norm_below_start": float(below), "below_ci95": float(below_ci),
                      "median_log_norm_sq_change": float(np.median(rel[-1]))},
        "_curves": {"t": t, "mean": mean_rel, "ci": ci_rel, "mean_k": mean_k},
    }


def run(cfg: WidthRegimeConfig) -> dict[str, Any]:
    """Simulate every width; returns the summary (curves under the private ``_curves`` keys)."""
    positive_ints("widths", cfg.widths)
    positive_ints("samples", [cfg.samples])
    positive_ints("saves", [cfg.saves])
    positive_float("t_max", cfg.t_max)
    positive_float("dt", cfg.dt)
    gen = seed_everything(cfg.seed)
    rows = [_width_run(n, cfg, gen) for n in tqdm(cfg.widths, desc="widths", leave=False)]
    neg = [r["width"] for r in rows
           if r["initial_drift"]["estimate"] + r["initial_drift"]["ci95"] < 0]
    pos = [r["width"] for r in rows
           if r["initial_drift"]["estimate"] - r["initial_drift"]["ci95"] > 0]
    return {"widths": rows, "initial_drift_negative_widths": neg,
            "initial_drift_positive_widths": pos}


def plot(summary: dict[str, Any], path: Any) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    cmap = plt.get_cmap("viridis")
    rows = summary["widths"]
    for i, r in enumerate(rows):
        c = r["_curves"]
        col = cmap(i / max(1, len(rows) - 1))
        for ax in (axes[0, 0], axes[0, 1]):
            ax.plot(c["t"], c["mean"], color=col, label=f"n={r['width']}")
            ax.fill_between(c["t"], c["mean"] - c["ci"], c["mean"] + c["ci"], color=col,
                            alpha=0.25)
        axes[1, 1].plot(c["t"], c["mean_k"], color=col, label=f"n={r['width']}")
    axes[0, 0].set_xlim(0, 20)
    axes[0, 0].set_ylim(-8, 8)
    axes[0, 0].set_title("E[log|relu X_t|^2 - log|relu X_0|^2], early times")
    axes[0, 1].set_title("same, long times (slope -> -1/n)")
    for ax in axes[0]:
        ax.axhline(0, color="k", lw=0.7)
        ax.set_xlabel("diffusion time t")
    axes[0, 0].legend(fontsize=7, ncol=2)
    w = [r["width"] for r in rows]
    est = [r["initial_drift"]["estimate"] for r in rows]
    ci = [r["initial_drift"]["ci95"] for r in rows]
    axes[1, 0].errorbar(w, est, yerr=ci, fmt="o", label="measured E[(k_0-2)/n | alive]")
    grid = np.arange(1, max(w) + 1)
    axes[1, 0].plot(grid, [(expected_active_given_alive(int(n)) - 2) / n for n in grid], "k--",
                    label="((n/2)/(1-2^-n) - 2)/n")
    axes[1, 0].plot(w, [r["long_time"]["slope_when_one_active"] for r in rows], "s",
                    label="late slope, one active")
    axes[1, 0].plot(grid, -1 / grid, "r:", label="-1/n")
    axes[1, 0].axhline(0, color="k", lw=0.7)
    axes[1, 0].set_xlabel("width n")
    axes[1, 0].set_title("drift of log|relu X|^2: at t = 0 and at late times")
    axes[1, 0].legend(fontsize=7)
    axes[1, 1].set_xscale("log")
    axes[1, 1].axhline(2, color="k", lw=0.7)
    axes[1, 1].set_title("mean number k_t of active coordinates")
    axes[1, 1].set_xlabel("diffusion time t")
    fig.tight_layout()
    save_figure(fig, path)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p, "width-regime")
    d = WidthRegimeConfig()
    p.add_argument("--widths", type=int_list, default=d.widths, help="comma-separated widths")
    p.add_argument("--t-max", type=float, default=d.t_max, help="diffusion time horizon")
    p.add_argument("--dt", type=float, default=d.dt, help="Euler-Maruyama step")
    p.add_argument("--samples", type=int, default=d.samples, help="paths per width")
    p.add_argument("--saves", type=int, default=d.saves, help="saved time points (log-spaced)")


def main(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    cfg = WidthRegimeConfig(widths=args.widths, t_max=args.t_max, dt=args.dt,
                            samples=args.samples, saves=args.saves, seed=args.seed)
    out = prepare_run(args.out, cfg)
    summary = run(cfg)
    plot(summary, out / "width_regime.png")
    public = {**summary, "widths": [{k: v for k, v in r.items() if k != "_curves"}
                                    for r in summary["widths"]]}
    write_json(out / "summary.json", public)
    for r in public["widths"]:
        d, lt = r["initial_drift"], r["long_time"]
        print(f"n={r['width']}: drift(0) {d['estimate']:+.4f}±{d['ci95']:.4f} "
              f"(exact {d['exact']:+.4f}); rise {r['rise']['max_mean_increase']:.2f} at "
              f"t={r['rise']['peak_time']:.1f}; P(k_T=1) {lt['fraction_one_active']:.3f}; "
              f"late slope {lt['slope_when_one_active']:+.4f}±{lt['slope_ci95']:.4f} "
              f"(diffusion {lt['theory_slope']:+.4f}, Euler dt={cfg.dt} {lt['euler_slope']:+.4f})")
    return 0

