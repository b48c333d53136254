"""Experiment 6: limited expressive power of doubly infinite ResNets with i.i.d. parameters.

The correlation map ``rho_0 -> rho_t = K_t(a, b) / sqrt(K_t(a, a) K_t(b, b))`` of the kernel
ODE is drawn for growing diffusion time (depth) and several activations and
initialisations; inputs on a circle show every pair becoming correlated (ReLU, tanh with
bias) or the map staying the identity (linear). A Monte-Carlo check with finite wide
networks is included for one time.
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
    float_list,
    positive_float,
    positive_ints,
    prepare_run,
    pyplot,
    save_figure,
    set_threads,
)
from infdepth.io import seed_everything, write_json
from infdepth.limits import (
    KernelState,
    ShrinkingInit,
    input_layer,
    simulate_resnet,
)

# (label, activation, sigma_b, sigma_w)
SETTINGS: list[tuple[str, str, float, float]] = [
    ("linear", "linear", 0.0, 1.0),
    ("relu", "relu", 0.0, 1.0),
    ("tanh", "tanh", 0.0, 1.0),
    ("tanh, sigma_b=1 (P&F)", "tanh", 1.0, 1.0),
]


@dataclass(frozen=True)
class ExpressivityConfig:
    """Diffusion times, grid of input correlations and the Monte-Carlo check."""

    times: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0])
    grid: int = 41
    circle_points: int = 24
    mc_width: int = 512
    mc_depth: int = 64
    mc_samples: int = 16
    mc_time: float = 2.0
    seed: int = 0


def _unit_pairs(rho: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    # x_a = (1, 0), x_b = (rho, sqrt(1 - rho^2)), both scaled so that K_0(a, a) = 1 (d = 2)
    a = torch.tensor([[math.sqrt(2.0), 0.0]], dtype=torch.float64)
    r = torch.as_tensor(rho, dtype=torch.float64)
    b = math.sqrt(2.0) * torch.stack([r, torch.sqrt(1 - r * r)], 1)
    return a, b


def _flow(state: KernelState, times: list[float], activation: str, sigma_b: float,
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


def correlation_map(rho0: np.ndarray, times: list[float], activation: str, sigma_b: float,
                    sigma_w: float) -> list[np.ndarray]:
    """``rho_t`` as a function of ``rho_0`` for unit-variance inputs (kernel ODE), per time."""
    a, b = _unit_pairs(rho0)
    states = _flow(KernelState.initial(a, b), times, activation, sigma_b, sigma_w)
    return [st.correlation[0].numpy() for st in states]


def run(cfg: ExpressivityConfig) -> dict[str, Any]:
    positive_ints("grid", [cfg.grid])
    positive_ints("circle_points", [cfg.circle_points])
    positive_ints("mc_width", [cfg.mc_width])
    positive_ints("mc_depth", [cfg.mc_depth])
    positive_ints("mc_samples", [cfg.mc_samples])
    positive_float("mc_time", cfg.mc_time)
    for t in cfg.times:
        if not math.isfinite(t) or t < 0:
            raise_times(t)
    if list(cfg.times) != sorted(cfg.times):
        raise_times(cfg.times[0])
    gen = seed_everything(cfg.seed)
    rho0 = np.linspace(-1, 1, cfg.grid)
    angles = np.linspace(0, 2 * np.pi, cfg.circle_points, endpoint=False)
    circle = math.sqrt(2.0) * torch.tensor(np.stack([np.cos(angles), np.sin(angles)], 1))
    summary: dict[str, Any] = {"rho0": rho0, "settings": {}}
    for label, act, sb, sw in tqdm(SETTINGS, desc="expressivity", leave=False):
        maps = correlation_map(rho0, list(cfg.times), act, sb, sw)
        # K depends on inputs through inner products only: on a circle, pairs (0, j) suffice
        states = _flow(KernelState.initial(circle[:1], circle), list(cfg.times), act, sb, sw)
        min_corr = [float(st.correlation.min()) for st in states]
        summary["settings"][label] = {"times": list(cfg.times), "maps": maps,
                                      "min_correlation_on_circle": min_corr}
    # Monte-Carlo check of one point of the ReLU map with wide, deep finite networks
    rho_check = np.array([-0.5, 0.0, 0.5])
    a, b = _unit_pairs(rho_check)
    x = torch.cat([a, b])
    y = simulate_resnet(input_layer(x, cfg.mc_width, cfg.mc_samples, generator=gen),
                        cfg.mc_depth, activation="relu", t1=cfg.mc_time, generator=gen,
                        init=ShrinkingInit(0.0, 1.0)).final
    k = torch.einsum("sin,sjn->ij", y, y) / (cfg.mc_width * cfg.mc_samples)
    mc = (k[0, 1:] / torch.sqrt(k[0, 0] * k.diagonal()[1:])).numpy()
    summary["monte_carlo_check"] = {
        "activation": "relu", "t": cfg.mc_time, "width": cfg.mc_width, "depth": cfg.mc_depth,
        "rho0": rho_check, "rho_t_monte_carlo": mc,
        "rho_t_ode": correlation_map(rho_check, [cfg.mc_time], "relu", 0.0, 1.0)[0]}
    return summary


def raise_times(t: float) -> None:
    from infdepth.errors import InputError

    raise InputError(f"--times={t!r} is not accepted; expected increasing finite times >= 0")


def plot(summary: dict[str, Any], cfg: ExpressivityConfig, path: Any) -> None:
    plt = pyplot()
    settings = summary["settings"]
    fig, axes = plt.subplots(2, len(settings), figsize=(4 * len(settings), 7.5))
    cmap = plt.get_cmap("plasma")
    for j, (label, res) in enumerate(settings.items()):
        ax = axes[0, j]
        for i, (t, m) in enumerate(zip(res["times"], res["maps"], strict=True)):
            ax.plot(summary["rho0"], m, color=cmap(i / max(1, len(res["times"]) - 1)),
                    label=f"t={t:g}")
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p, "expressivity")
    d = ExpressivityConfig()
    p.add_argument("--times", type=float_list, default=d.times,
                   help="comma-separated diffusion times (depths) of the map")
    p.add_argument("--grid", type=int, default=d.grid, help="points of the rho_0 grid")
    p.add_argument("--circle-points", type=int, default=d.circle_points,
                   help="inputs on the unit circle")
    p.add_argument("--mc-width", type=int, default=d.mc_width, help="width of the MC check")
    p.add_argument("--mc-depth", type=int, default=d.mc_depth, help="depth of the MC check")
    p.add_argument("--mc-samples", type=int, default=d.mc_samples,
                   help="networks in the MC check")
    p.add_argument("--mc-time", type=float, default=d.mc_time, help="time of the MC check")


def main(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    cfg = ExpressivityConfig(times=args.times, grid=args.grid, circle_points=args.circle_points,
                             mc_width=args.mc_width, mc_depth=args.mc_depth,
                             mc_samples=args.mc_samples, mc_time=args.mc_time, seed=args.seed)
    out = prepare_run(args.out, cfg)
    summary = run(cfg)
    write_json(out / "summary.json", summary)
    plot(summary, cfg, out / "expressivity.png")
    for label, res in summary["settings"].items():
        pairs = ", ".join(f"t={t:g}: {c:.3f}" for t, c in
                          zip(res["times"], res["min_correlation_on_circle"], strict=True))
        print(f"{label}: min correlation {pairs}")
    mc = summary["monte_carlo_check"]
    print(f"MC check relu t={mc['t']}: ODE {np.round(mc['rho_t_ode'], 3)} vs MC "
          f"{np.round(mc['rho_t_monte_carlo'], 3)}")
    return 0
