"""The run of ``infdepth limits kernel-ode`` (experiment 4).

What it measures and its flags: :mod:`infdepth.experiments.limits.kernel_ode_config` (torch-free,
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
from infdepth.experiments.limits.kernel_ode_config import (  # noqa: F401  (the flags' half, re-exported)
    Config,
    add_arguments,
)
from infdepth.io import seed_everything
from infdepth.limits import (
    infinite_kernels,
    input_layer,
    pair_moments,
    resolve_activation,
    simulate_resnet,
)


def euler_recursion(x: torch.Tensor, activation: str, t1: float, depth: int) -> torch.Tensor:
    """Width-then-depth kernel of the depth-``L`` ResNet: ``L`` Euler steps of the kernel ODE."""
    phi = resolve_activation(activation)
    k = x @ x.T / x.shape[1]
    for _ in range(depth):
        d = k.diagonal()
        e, _ = pair_moments(phi, d.view(-1, 1), d.view(1, -1), k)
        k = k + t1 / depth * e
    return k


def estimate(config: Config, ctx: RunContext) -> dict[str, Any]:
    """Relative errors of the Monte-Carlo kernels against the kernel ODE; the summary."""
    gen = seed_everything(config.seed)
    x = torch.randn(config.inputs, config.features, generator=gen, dtype=torch.float64)
    out: dict[str, Any] = {"inputs": x, "activations": {}}
    bar = progress(ctx, total=len(config.activations) * len(config.widths) * len(config.depths),
                   desc="kernel-ode")
    for act in config.activations:
        exact = infinite_kernels(x, activation=act, t1=config.t1, ntk=False).nngp
        rows = []
        for depth in config.depths:
            floor = euler_recursion(x, act, config.t1, depth)
            floor_err = float((floor - exact).norm() / exact.norm())
            for width in config.widths:
                y = simulate_resnet(input_layer(x, width, config.samples, generator=gen), depth,
                                    activation=act, t1=config.t1, generator=gen).final
                per_net = (torch.einsum("sin,sjn->sij", y, y) / width).numpy()
                est = per_net.mean(0)
                err = float(np.linalg.norm(est - exact.numpy()) / exact.norm())
                # size of the error that sampling alone gives: ||standard errors||_F / ||K||
                noise = math.sqrt(per_net.var(0, ddof=1).sum() / config.samples) / float(
                    exact.norm()) if config.samples > 1 else math.nan
                rows.append({"width": width, "depth": depth, "relative_error": err,
                             "sampling_noise_level": noise, "width_then_depth_error": floor_err})
                bar.update()
        out["activations"][act] = {"exact_kernel": exact, "rows": rows}
    bar.close()
    return out


def plot(summary: dict[str, Any], path: Path) -> None:
    """Relative error against width (per depth) and against depth (per width), per activation."""
    plt = pyplot()
    acts = list(summary["activations"])
    fig, axes = plt.subplots(len(acts), 2, figsize=(10, 3.8 * len(acts)), squeeze=False)
    for i, act in enumerate(acts):
        rows = summary["activations"][act]["rows"]
        depths = sorted({r["depth"] for r in rows})
        widths = sorted({r["width"] for r in rows})
        for d in depths:
            sel = [r for r in rows if r["depth"] == d]
            line = axes[i, 0].plot([r["width"] for r in sel], [r["relative_error"] for r in sel],
                                   "o-", label=f"L={d}")
            axes[i, 0].plot([r["width"] for r in sel], [r["sampling_noise_level"] for r in sel], ":",
                            color=line[0].get_color())
        for w in widths:
            sel = [r for r in rows if r["width"] == w]
            axes[i, 1].loglog([r["depth"] for r in sel], [r["relative_error"] for r in sel], "o-",
                              label=f"n={w}")
        floor = [next(r["width_then_depth_error"] for r in rows if r["depth"] == d) for d in depths]
        axes[i, 1].loglog(depths, floor, "k--", label="width-then-depth, depth L")
        axes[i, 0].set_xscale("log")
        axes[i, 0].set_yscale("log")
        axes[i, 0].set_xlabel("width n")
        axes[i, 1].set_xlabel("depth L")
        for ax in axes[i]:
            ax.set_ylabel(f"{act}: rel. error vs kernel ODE")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        axes[i, 0].set_title("dotted: sampling-noise level of the estimate", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def run(config: Config, ctx: RunContext) -> dict[str, Any]:
    """Open the run folder, estimate, write ``summary.json`` and ``kernel_ode.png``."""
    out = start_run(config, ctx)
    summary = estimate(config, ctx)
    write_summary(ctx, summary)
    plot(summary, out / "kernel_ode.png")
    return summary


def main(args: argparse.Namespace) -> int:
    """``infdepth limits kernel-ode``: validate, run, print the worst and best case per activation."""
    summary, ctx = run_from_args(Config, run, args)
    for act, res in summary["activations"].items():
        for r in (max(res["rows"], key=lambda r: r["relative_error"]),
                  min(res["rows"], key=lambda r: r["relative_error"])):
            ctx.say(f"{act}: n={r['width']} L={r['depth']} relative error {r['relative_error']:.4f} "
                    f"(sampling-noise level {r['sampling_noise_level']:.4f})")
    return 0
