"""Experiment 5: inference with doubly infinite ResNets on scikit-learn's digits.

The NNGP (read-out trained only: Gaussian-process posterior) and the NTK (all layers
trained: kernel regression, and the linearised gradient-descent trajectory) of the
infinite-depth-and-width ResNet are computed by integrating their ODEs, then compared
with finite ResNets (NTK parameterisation, centred outputs ``f - f_0``) trained by full-batch
gradient descent with the same learning rate and number of steps: as width and depth grow
their test outputs approach the NTK prediction.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_digits
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
    gp_posterior,
    gradient_descent_prediction,
    infinite_kernels,
    kernel_regression,
)
from infdepth.limits.finite import FiniteResNet


@dataclass(frozen=True)
class InferenceConfig:
    """Data split, kernel time, training and the finite networks compared."""

    train: int = 150
    test: int = 300
    t1: float = 1.0
    activation: str = "relu"
    steps: int = 200
    lr_scale: float = 1.0
    widths: list[int] = field(default_factory=lambda: [32, 128, 512])
    fixed_depth: int = 4
    depths: list[int] = field(default_factory=lambda: [2, 8, 32])
    fixed_width: int = 128
    kernel_steps: int = 16
    gp_noise: float = 1e-2
    seed: int = 0


def load_task(train: int, test: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Digits (bundled with scikit-learn, no download): standardised, rows scaled to norm sqrt(d).

    Targets are one-hot minus 1/10 (zero mean); returns ``x_tr, y_tr, x_te, y_te, labels_te``.
    """
    x, labels = load_digits(return_X_y=True)
    if train + test > len(x):
        from infdepth.errors import InputError

        raise InputError(f"--train + --test = {train + test} is not accepted; digits has "
                         f"{len(x)} samples")
    perm = np.random.default_rng(seed).permutation(len(x))
    tr, te = perm[:train], perm[train:train + test]
    mean, sd = x[tr].mean(0), x[tr].std(0) + 1e-8
    z = (x - mean) / sd
    z = z / np.linalg.norm(z, axis=1, keepdims=True) * math.sqrt(z.shape[1])
    y = np.eye(10)[labels] - 0.1
    f = torch.float64
    return (torch.tensor(z[tr], dtype=f), torch.tensor(y[tr], dtype=f),
            torch.tensor(z[te], dtype=f), torch.tensor(y[te], dtype=f),
            torch.tensor(labels[te]))


def _accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    return float((pred.argmax(1) == labels).double().mean())


def train_finite(x_tr: torch.Tensor, y_tr: torch.Tensor, x_te: torch.Tensor, *, width: int,
                 depth: int, cfg: InferenceConfig, lr: float, seed: int) -> torch.Tensor:
    """Full-batch gradient descent on ``1/2 sum (f - f_0 - y)^2``; returns test outputs."""
    gen = torch.Generator().manual_seed(seed)
    net = FiniteResNet(x_tr.shape[1], width, depth, 10, activation=cfg.activation, t1=cfg.t1,
                       generator=gen)
    xt, xe, yt = x_tr.float(), x_te.float(), y_tr.float()
    with torch.no_grad():
        f0_tr, f0_te = net(xt), net(xe)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    for _ in range(cfg.steps):
        opt.zero_grad()
        loss = 0.5 * ((net(xt) - f0_tr - yt) ** 2).sum()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (net(xe) - f0_te).double()


def run(cfg: InferenceConfig) -> dict[str, Any]:
    positive_ints("train", [cfg.train])
    positive_ints("test", [cfg.test])
    positive_ints("steps", [cfg.steps])
    positive_ints("kernel_steps", [cfg.kernel_steps])
    positive_ints("widths", cfg.widths)
    positive_ints("depths", cfg.depths)
    positive_ints("fixed_depth", [cfg.fixed_depth])
    positive_ints("fixed_width", [cfg.fixed_width])
    positive_float("t1", cfg.t1)
    positive_float("lr_scale", cfg.lr_scale)
    positive_float("gp_noise", cfg.gp_noise)
    seed_everything(cfg.seed)
    x_tr, y_tr, x_te, y_te, labels = load_task(cfg.train, cfg.test, cfg.seed)
    start = time.perf_counter()
    kp = infinite_kernels(torch.cat([x_tr, x_te]), activation=cfg.activation, t1=cfg.t1,
                          steps=cfg.kernel_steps)
    kernel_seconds = time.perf_counter() - start
    n = cfg.train
    ntk_tr, ntk_te = kp.ntk[:n, :n], kp.ntk[n:, :n]
    nngp_tr, nngp_te = kp.nngp[:n, :n], kp.nngp[n:, :n]
    lam_max = float(torch.linalg.eigvalsh(ntk_tr).max())
    lr = cfg.lr_scale / lam_max
    ntk_gd = gradient_descent_prediction(ntk_tr, y_tr, ntk_te, lr=lr, steps=cfg.steps)
    ntk_ridgeless = kernel_regression(ntk_tr, y_tr, ntk_te, ridge=1e-8 * lam_max)
    gp_mean, gp_var = gp_posterior(nngp_tr, y_tr, nngp_te, kp.nngp.diagonal()[n:],
                                   noise=cfg.gp_noise)
    kernels = {
        "ntk_gradient_descent": {"accuracy": _accuracy(ntk_gd, labels)},
        "ntk_kernel_regression": {"accuracy": _accuracy(ntk_ridgeless, labels)},
        "nngp_gp_posterior": {"accuracy": _accuracy(gp_mean, labels),
                              "mean_posterior_sd": float(gp_var.sqrt().mean())},
    }
    grid = [(w, cfg.fixed_depth) for w in cfg.widths] + \
        [(cfg.fixed_width, d) for d in cfg.depths if (cfg.fixed_width, d) not in
         [(w, cfg.fixed_depth) for w in cfg.widths]]
    rows = []
    for width, depth in tqdm(grid, desc="finite ResNets", leave=False):
        t0 = time.perf_counter()
        out = train_finite(x_tr, y_tr, x_te, width=width, depth=depth, cfg=cfg, lr=lr,
                           seed=cfg.seed + 1000 * width + depth)
        rows.append({"width": width, "depth": depth,
                     "relative_distance_to_ntk": float((out - ntk_gd).norm() / ntk_gd.norm()),
                     "argmax_agreement_with_ntk": float((out.argmax(1) == ntk_gd.argmax(1))
                                                        .double().mean()),
                     "accuracy": _accuracy(out, labels),
                     "seconds": time.perf_counter() - t0})
    return {"learning_rate": lr, "ntk_lambda_max": lam_max,
            "kernel_seconds": kernel_seconds, "kernels": kernels, "finite": rows}


def plot(summary: dict[str, Any], cfg: InferenceConfig, path: Any) -> None:
    plt = pyplot()
    rows = summary["finite"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    by_w = sorted((r for r in rows if r["depth"] == cfg.fixed_depth), key=lambda r: r["width"])
    by_d = sorted((r for r in rows if r["width"] == cfg.fixed_width), key=lambda r: r["depth"])
    for ax, sel, key, label in ((axes[0], by_w, "width", f"width n (depth {cfg.fixed_depth})"),
                                (axes[1], by_d, "depth", f"depth L (width {cfg.fixed_width})")):
        xs = [r[key] for r in sel]
        ax.plot(xs, [r["relative_distance_to_ntk"] for r in sel], "o-")
        ax.set_xscale("log")
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.minorticks_off()
        ax.set_ylim(0, None)
        ax.set_xlabel(label)
        ax.set_ylabel("||f_net - f_NTK|| / ||f_NTK|| (test)")
        ax.grid(True, alpha=0.3)
    labels = [f"n={r['width']},L={r['depth']}" for r in rows] + \
        ["NTK (GD)", "NTK (ridgeless)", "NNGP (GP)"]
    accs = [r["accuracy"] for r in rows] + [summary["kernels"][k]["accuracy"] for k in
                                            ("ntk_gradient_descent", "ntk_kernel_regression",
                                             "nngp_gp_posterior")]
    colors = ["C0"] * len(rows) + ["C3", "C1", "C2"]
    axes[2].barh(range(len(accs)), accs, color=colors)
    axes[2].set_yticks(range(len(accs)), labels, fontsize=7)
    axes[2].set_xlim(min(accs) - 0.05, 1.0)
    axes[2].set_xlabel("test accuracy (digits)")
    fig.suptitle(f"digits, {cfg.train} train / {cfg.test} test, {cfg.activation}, t1={cfg.t1}, "
                 f"{cfg.steps} GD steps")
    fig.tight_layout()
    save_figure(fig, path)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p, "inference")
    d = InferenceConfig()
    p.add_argument("--train", type=int, default=d.train, help="training points from digits")
    p.add_argument("--test", type=int, default=d.test, help="test points from digits")
    p.add_argument("--t1", type=float, default=d.t1, help="diffusion time (depth) of kernels")
    p.add_argument("--activation", default=d.activation, help="activation (linear, relu, tanh)")
    p.add_argument("--steps", type=int, default=d.steps, help="full-batch gradient descent steps")
    p.add_argument("--lr-scale", type=float, default=d.lr_scale,
                   help="learning rate as a multiple of 1 / lambda_max(NTK on train)")
    p.add_argument("--widths", type=int_list, default=d.widths,
                   help="widths of the finite ResNets (at --fixed-depth)")
    p.add_argument("--fixed-depth", type=int, default=d.fixed_depth,
                   help="depth used for the width sweep")
    p.add_argument("--depths", type=int_list, default=d.depths,
                   help="depths of the finite ResNets (at --fixed-width)")
    p.add_argument("--fixed-width", type=int, default=d.fixed_width,
                   help="width used for the depth sweep")
    p.add_argument("--kernel-steps", type=int, default=d.kernel_steps,
                   help="RK4 steps of the kernel ODEs")
    p.add_argument("--gp-noise", type=float, default=d.gp_noise,
                   help="observation noise variance of the NNGP posterior")


def main(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    from infdepth.limits import resolve_activation

    resolve_activation(args.activation, "--activation")
    cfg = InferenceConfig(train=args.train, test=args.test, t1=args.t1,
                          activation=args.activation, steps=args.steps, lr_scale=args.lr_scale,
                          widths=args.widths, fixed_depth=args.fixed_depth, depths=args.depths,
                          fixed_width=args.fixed_width, kernel_steps=args.kernel_steps,
                          gp_noise=args.gp_noise, seed=args.seed)
    out = prepare_run(args.out, cfg)
    summary = run(cfg)
    write_json(out / "summary.json", summary)
    plot(summary, cfg, out / "inference.png")
    for k, v in summary["kernels"].items():
        print(f"{k}: test accuracy {v['accuracy']:.3f}")
    for r in summary["finite"]:
        print(f"ResNet n={r['width']} L={r['depth']}: accuracy {r['accuracy']:.3f}, "
              f"relative distance to NTK {r['relative_distance_to_ntk']:.3f}, "
              f"argmax agreement {r['argmax_agreement_with_ntk']:.3f}")
    return 0
