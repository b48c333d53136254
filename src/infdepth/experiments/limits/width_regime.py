"""The run of ``infdepth limits width-regime`` (experiment 3).

What it measures and its flags: :mod:`infdepth.experiments.limits.width_regime_config` (torch-free,
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
    config_from_args,
    context_from_args,
    mean_ci,
    pyplot,
    save_figure,
)
from infdepth.experiments.limits._shared import progress, start_run, write_summary
from infdepth.experiments.limits.width_regime_config import (  # noqa: F401  (the flags' half, re-exported)
    MAX_STEPS,
    Config,
    add_arguments,
)
from infdepth.io import seed_everything
from infdepth.limits import LogScaleEuler, ResNetSDE, expected_active_given_alive, simulate


def euler_one_active_slope(n: int, dt: float) -> float:
    """Slope of ``log ||relu X||^2`` that Euler-Maruyama itself has with one active coordinate.

    One step multiplies the active coordinate by ``1 + sqrt(dt/n) Z``: the slope is
    ``2 E[log |1 + sqrt(dt/n) Z|] / dt = -1/n - 3 dt / (2 n^2) + O(dt^2)`` (Gauss-Hermite).
    """
    z, w = np.polynomial.hermite_e.hermegauss(200)
    a = math.sqrt(dt / n)
    # the log singularity at Z = -1/a lies far in the tail for the steps used here
    return float(2 * (w * np.log(np.abs(1 + a * z))).sum() / w.sum() / dt)


def _ci(x: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    # mean and 95% half-width; NaN where fewer than two paths are left to average
    if x.shape[axis] < 2:
        shape = np.delete(np.asarray(x.shape), axis)
        return np.full(shape, np.nan), np.full(shape, np.nan)
    return mean_ci(x, axis=axis)


def _width_run(n: int, config: Config, gen: torch.Generator) -> dict[str, Any]:
    steps = max(1, round(config.t_max / config.dt))
    idx = np.unique(np.concatenate([[0, 1, 2, 4], np.round(np.geomspace(1, steps, config.saves))]))
    idx = idx[idx <= steps]
    y0 = torch.randn(config.samples, n, generator=gen, dtype=torch.float64)
    paths = simulate(ResNetSDE.create(n, "relu"), y0, config.t_max, steps, generator=gen,
                     solver=LogScaleEuler(), save_at=[int(i) for i in idx])
    t = paths.times.numpy()
    with np.errstate(divide="ignore"):
        log_s = (2 * paths.log_norm("relu")).numpy()
    k = (paths.y > 0).sum(-1).numpy()
    alive = k[0] >= 1
    ls, kk = log_s[:, alive], k[:, alive]
    frozen = ~np.isfinite(ls[-1])  # absorbed by the scheme (the diffusion never is)
    live = ~frozen
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = ls[:, live] - ls[0, live]
        mean_rel, ci_rel = _ci(rel, axis=1)
        drift0, drift0_ci = _ci((kk[0] - 2) / n)
        peak = int(np.nanargmax(mean_rel)) if np.isfinite(mean_rel).any() else 0
        half = t >= config.t_max / 2
        tt = t[half] - t[half].mean()
        late = ls[half][:, live]
        slopes = (tt[:, None] * (late - late.mean(0))).sum(0) / (tt**2).sum()
        one_late = (kk[half][:, live] == 1).all(0)
        slope_one, slope_one_ci = _ci(slopes[one_late])
        slope_all, slope_all_ci = _ci(slopes)
        k_one, k_one_ci = _ci((kk[-1] == 1).astype(float))
        below, below_ci = _ci((rel[-1] < 0).astype(float))
        mean_k = kk[:, live].astype(float).mean(1) if live.any() else np.full(t.shape, np.nan)
        median = float(np.median(rel[-1])) if rel.shape[1] else math.nan
    return {
        "width": n,
        "alive_at_start": float(alive.mean()),
        "frozen_by_scheme": float(frozen.mean()) if frozen.size else math.nan,
        "initial_drift": {"estimate": float(drift0), "ci95": float(drift0_ci),
                          "exact": (expected_active_given_alive(n) - 2) / n},
        "rise": {"max_mean_increase": float(mean_rel[peak]), "ci95": float(ci_rel[peak]),
                 "peak_time": float(t[peak])},
        "long_time": {"fraction_one_active": float(k_one), "ci95": float(k_one_ci),
                      "slope_when_one_active": float(slope_one), "slope_ci95": float(slope_one_ci),
                      "slope_all": float(slope_all), "slope_all_ci95": float(slope_all_ci),
                      "theory_slope": -1.0 / n,
                      "euler_slope": euler_one_active_slope(n, config.dt),
                      "fraction_norm_below_start": float(below), "below_ci95": float(below_ci),
                      "median_log_norm_sq_change": median},
        "_curves": {"t": t, "mean": mean_rel, "ci": ci_rel, "mean_k": mean_k},
    }


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Mean log-norm change (early, late), the drift at t = 0 and late, and active coordinates."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    cmap = plt.get_cmap("viridis")
    for i, r in enumerate(rows):
        c = r["_curves"]
        col = cmap(i / max(1, len(rows) - 1))
        for ax in (axes[0, 0], axes[0, 1]):
            ax.plot(c["t"], c["mean"], color=col, label=f"n={r['width']}")
            ax.fill_between(c["t"], c["mean"] - c["ci"], c["mean"] + c["ci"], color=col, alpha=0.25)
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


def run(config: Config, ctx: RunContext) -> dict[str, Any]:
    """Open the run folder, simulate every width, write ``summary.json`` and ``width_regime.png``."""
    out = start_run(config, ctx)
    gen = seed_everything(config.seed)
    rows = [_width_run(n, config, gen) for n in progress(ctx, config.widths, desc="widths")]
    plot(rows, out / "width_regime.png")
    public = [{k: v for k, v in r.items() if k != "_curves"} for r in rows]
    summary = {
        "widths": public,
        "initial_drift_negative_widths": [r["width"] for r in public
                                          if r["initial_drift"]["estimate"] + r["initial_drift"]["ci95"] < 0],
        "initial_drift_positive_widths": [r["width"] for r in public
                                          if r["initial_drift"]["estimate"] - r["initial_drift"]["ci95"] > 0],
    }
    write_summary(ctx, summary)
    return summary


def main(args: argparse.Namespace) -> int:
    """``infdepth limits width-regime``: validate, run, print one line per width."""
    cfg = config_from_args(Config, args)
    ctx = context_from_args(args)
    summary = run(cfg, ctx)
    for r in summary["widths"]:
        d, lt = r["initial_drift"], r["long_time"]
        ctx.say(f"n={r['width']}: drift(0) {d['estimate']:+.4f}±{d['ci95']:.4f} "
                f"(exact {d['exact']:+.4f}); rise {r['rise']['max_mean_increase']:.2f} at "
                f"t={r['rise']['peak_time']:.1f}; P(k_T=1) {lt['fraction_one_active']:.3f}; "
                f"late slope {lt['slope_when_one_active']:+.4f}±{lt['slope_ci95']:.4f} "
                f"(diffusion {lt['theory_slope']:+.4f}, Euler dt={cfg.dt} {lt['euler_slope']:+.4f})")
    return 0
