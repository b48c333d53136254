"""The run of ``infdepth limits expressivity`` (experiment 6).

What it measures and its flags: :mod:`infdepth.experiments.limits.expressivity_config` (torch-free,
for ``--help``); ``Config`` is re-exported here.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
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
from infdepth.experiments.limits.expressivity_config import (  # noqa: F401  (the flags' half, re-exported)
    MC_INPUTS,
    Config,
    add_arguments,
)
from infdepth.io import seed_everything
from infdepth.limits import KernelState, ShrinkingInit, input_layer, simulate_resnet

# (label, activation, sigma_b, sigma_w)
SETTINGS: list[tuple[str, str, float, float]] = [
    ("linear", "linear", 0.0, 1.0),
    ("relu", "relu", 0.0, 1.0),
    ("tanh", "tanh", 0.0, 1.0),
    ("tanh, sigma_b=1 (P&F)", "tanh", 1.0, 1.0),
]


def _unit_pairs(rho: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    # x_a = (1, 0), x_b = (rho, sqrt(1 - rho^2)), both scaled so that K_0(a, a) = 1 (d = 2)
    a = torch.tensor([[math.sqrt(2.0), 0.0]], dtype=torch.float64)
    r = torch.as_tensor(rho, dtype=torch.float64)
    b = math.sqrt(2.0) * torch.stack([r, torch.sqrt(1 - r * r)], 1)
    return a, b


def _flow(state: KernelState, times: Sequence[float], activation: str, sigma_b: float,
          sigma_w: float) -> list[KernelState]:
    """The kernel state at each of the sorted ``times``, integrating once (RK4, h <= 1/8)."""
    out = []
    for t in times:
        dt = t - state.t
        if dt > 0:
            state = state.evolve(dt, activation=activation, sigma_b=sigma_b, sigma_w=sigma_w,
                                 steps=max(2, math.ceil(8 * dt)))
        out.append(state)
    return out


def correlation_map(rho0: np.ndarray, times: Sequence[float], activation: str, sigma_b: float,
                    sigma_w: float) -> list[np.ndarray]:
    """``rho_t`` as a function of ``rho_0`` for unit-variance inputs (kernel ODE), per time."""
    a, b = _unit_pairs(rho0)
    states = _flow(KernelState.initial(a, b), times, activation, sigma_b, sigma_w)
    return [st.correlation[0].numpy() for st in states]


def measure(config: Config, ctx: RunContext) -> dict[str, Any]:
    """Correlation maps, minimum correlations on a circle and the Monte-Carlo check; the summary."""
    gen = seed_everything(config.seed)
    times = list(config.times)
    rho0 = np.linspace(-1, 1, config.grid)
    angles = np.linspace(0, 2 * np.pi, config.circle_points, endpoint=False)
    circle = math.sqrt(2.0) * torch.tensor(np.stack([np.cos(angles), np.sin(angles)], 1))
    summary: dict[str, Any] = {"rho0": rho0, "settings": {}}
    for label, act, sb, sw in progress(ctx, SETTINGS, desc="expressivity"):
        maps = correlation_map(rho0, times, act, sb, sw)
        # K depends on inputs through inner products only: on a circle, pairs (0, j) suffice
        states = _flow(KernelState.initial(circle[:1], circle), times, act, sb, sw)
        min_corr = [float(st.correlation.min()) for st in states]
        summary["settings"][label] = {"times": times, "maps": maps, "min_correlation_on_circle": min_corr}
    # Monte-Carlo check of one point of the ReLU map with wide, deep finite networks
    rho_check = np.array([-0.5, 0.0, 0.5])
    a, b = _unit_pairs(rho_check)
    x = torch.cat([a, b])
    y = simulate_resnet(input_layer(x, config.mc_width, config.mc_samples, generator=gen),
                        config.mc_depth, activation="relu", t1=config.mc_time, generator=gen,
                        init=ShrinkingInit(0.0, 1.0)).final
    k = torch.einsum("sin,sjn->ij", y, y) / (config.mc_width * config.mc_samples)
    mc = (k[0, 1:] / torch.sqrt(k[0, 0] * k.diagonal()[1:])).numpy()
    summary["monte_carlo_check"] = {
        "activation": "relu", "t": config.mc_time, "width": config.mc_width, "depth": config.mc_depth,
        "rho0": rho_check, "rho_t_monte_carlo": mc,
        "rho_t_ode": correlation_map(rho_check, [config.mc_time], "relu", 0.0, 1.0)[0]}
    return summary


def plot(summary: dict[str, Any], path: Path) -> None:
    """Correlation maps per time (top) and the minimum correlation on a circle (bottom)."""
    plt = pyplot()
    settings = summary["settings"]
    fig, axes = plt.subplots(2, len(settings), figsize=(4 * len(settings), 7.5))
    cmap = plt.get_cmap("plasma")
    for j, (label, res) in enumerate(settings.items()):
        ax = axes[0, j]
        for i, (t, m) in enumerate(zip(res["times"], res["maps"], strict=True)):
            ax.plot(summary["rho0"], m, color=cmap(i / max(1, len(res["times"]) - 1)), label=f"t={t:g}")
        ax.set_title(label)
        ax.set_xlabel("input correlation rho_0")
        ax.set_ylabel("correlation rho_t")
        ax.set_aspect("equal")
        if label == "relu":
            mc = summary["monte_carlo_check"]
            ax.plot(mc["rho0"], mc["rho_t_monte_carlo"], "kx", ms=8,
                    label=f"MC n={mc['width']}, L={mc['depth']}, t={mc['t']:g}")
        ax.legend(fontsize=6)
        ax2 = axes[1, j]
        ax2.plot(res["times"], res["min_correlation_on_circle"], "o-")
        ax2.set_xscale("symlog", linthresh=0.5)
        ax2.set_ylim(-1.05, 1.05)
        ax2.set_xlabel("diffusion time t (depth)")
        ax2.set_ylabel("min correlation, inputs on a circle")
        ax2.grid(True, alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def run(config: Config, ctx: RunContext) -> dict[str, Any]:
    """Open the run folder, measure, write ``summary.json`` and ``expressivity.png``."""
    out = start_run(config, ctx)
    summary = measure(config, ctx)
    write_summary(ctx, summary)
    plot(summary, out / "expressivity.png")
    return summary


def main(args: argparse.Namespace) -> int:
    """``infdepth limits expressivity``: validate, run, print the minimum correlations and the check."""
    summary, ctx = run_from_args(Config, run, args)
    for label, res in summary["settings"].items():
        pairs = ", ".join(f"t={t:g}: {c:.3f}" for t, c in
                          zip(res["times"], res["min_correlation_on_circle"], strict=True))
        ctx.say(f"{label}: min correlation {pairs}")
    mc = summary["monte_carlo_check"]
    ctx.say(f"MC check relu t={mc['t']}: ODE {np.round(mc['rho_t_ode'], 3)} vs MC "
            f"{np.round(mc['rho_t_monte_carlo'], 3)}")
    return 0
