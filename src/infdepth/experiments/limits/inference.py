"""The run of ``infdepth limits inference`` (experiment 5).

What it measures and its flags: :mod:`infdepth.experiments.limits.inference_config` (torch-free,
for ``--help``); ``Config`` is re-exported here.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from infdepth.errors import InputError
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
from infdepth.experiments.limits.inference_config import (  # noqa: F401  (the flags' half, re-exported)
    DIGITS,
    FEATURES,
    Config,
    add_arguments,
)
from infdepth.io import seed_everything
from infdepth.limits import (
    gp_posterior,
    gradient_descent_prediction,
    infinite_kernels,
    kernel_regression,
)
from infdepth.limits.finite import FiniteResNet
from infdepth.train import FitConfig, fit


def load_task(train: int, test: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Digits (bundled with scikit-learn, no download): standardised, rows scaled to norm sqrt(d).

    Targets are one-hot minus 1/10 (zero mean); returns ``x_tr, y_tr, x_te, y_te, labels_te``.
    """
    from sklearn.datasets import load_digits

    x, labels = load_digits(return_X_y=True)
    if train + test > len(x):
        raise InputError(f"--train + --test = {train + test} is not accepted; digits has {len(x)} samples")
    perm = np.random.default_rng(seed).permutation(len(x))
    tr, te = perm[:train], perm[train:train + test]
    mean, sd = x[tr].mean(0), x[tr].std(0) + 1e-8
    z = (x - mean) / sd
    z = z / np.linalg.norm(z, axis=1, keepdims=True) * math.sqrt(z.shape[1])
    y = np.eye(10)[labels] - 0.1
    f = torch.float64
    return (torch.tensor(z[tr], dtype=f), torch.tensor(y[tr], dtype=f),
            torch.tensor(z[te], dtype=f), torch.tensor(y[te], dtype=f), torch.tensor(labels[te]))


def _accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    return float((pred.argmax(1) == labels).double().mean())


def train_finite(x_tr: torch.Tensor, y_tr: torch.Tensor, x_te: torch.Tensor, *, width: int,
                 depth: int, config: Config, lr: float, seed: int) -> torch.Tensor:
    """Full-batch gradient descent on ``1/2 sum (f - f_0 - y)^2``; returns test outputs."""
    gen = torch.Generator().manual_seed(seed)
    net = FiniteResNet(x_tr.shape[1], width, depth, 10, activation=config.activation, t1=config.t1,
                       generator=gen)
    xt, xe, yt = x_tr.float(), x_te.float(), y_tr.float()
    with torch.no_grad():
        f0_tr, f0_te = net(xt), net(xe)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    # the library's one training loop, on the full batch at every step
    fit(net, opt, lambda step: (xt, yt), lambda out, y: 0.5 * ((out - f0_tr - y) ** 2).sum(),
        FitConfig(steps=config.steps, eval_every=config.steps, log_every=config.steps, progress=False))
    with torch.no_grad():
        return (net(xe) - f0_te).double()


def compare(config: Config, ctx: RunContext) -> dict[str, Any]:
    """Kernel predictions, then the finite ResNets trained against them; the summary."""
    seed_everything(config.seed)
    x_tr, y_tr, x_te, y_te, labels = load_task(config.train, config.test, config.seed)
    start = time.perf_counter()
    kp = infinite_kernels(torch.cat([x_tr, x_te]), activation=config.activation, t1=config.t1,
                          steps=config.kernel_steps)
    kernel_seconds = time.perf_counter() - start
    n = config.train
    ntk_tr, ntk_te = kp.ntk[:n, :n], kp.ntk[n:, :n]
    nngp_tr, nngp_te = kp.nngp[:n, :n], kp.nngp[n:, :n]
    try:
        lam_max = float(torch.linalg.eigvalsh(ntk_tr).max())
        lr = config.lr_scale / lam_max
        ntk_gd = gradient_descent_prediction(ntk_tr, y_tr, ntk_te, lr=lr, steps=config.steps)
        ntk_ridgeless = kernel_regression(ntk_tr, y_tr, ntk_te, ridge=1e-8 * lam_max)
        gp_mean, gp_var = gp_posterior(nngp_tr, y_tr, nngp_te, kp.nngp.diagonal()[n:],
                                       noise=config.gp_noise)
    except torch.linalg.LinAlgError as exc:
        # the kernels grow like e^t1 (linear) while --gp-noise stays put: numerically singular
        reason = str(exc).splitlines()[0]
        raise InputError(f"--t1={config.t1} with --gp-noise={config.gp_noise} is not accepted: the "
                         f"kernel matrices are numerically singular ({reason}); use a smaller --t1 "
                         "or a larger --gp-noise") from None
    kernels = {
        "ntk_gradient_descent": {"accuracy": _accuracy(ntk_gd, labels)},
        "ntk_kernel_regression": {"accuracy": _accuracy(ntk_ridgeless, labels)},
        "nngp_gp_posterior": {"accuracy": _accuracy(gp_mean, labels),
                              "mean_posterior_sd": float(gp_var.sqrt().mean())},
    }
    rows = []
    for width, depth in progress(ctx, config.grid(), desc="finite ResNets"):
        t0 = time.perf_counter()
        out = train_finite(x_tr, y_tr, x_te, width=width, depth=depth, config=config, lr=lr,
                           seed=config.seed + 1000 * width + depth)
        rows.append({"width": width, "depth": depth,
                     "relative_distance_to_ntk": float((out - ntk_gd).norm() / ntk_gd.norm()),
                     "argmax_agreement_with_ntk": float((out.argmax(1) == ntk_gd.argmax(1)).double().mean()),
                     "accuracy": _accuracy(out, labels),
                     "seconds": time.perf_counter() - t0})
    return {"learning_rate": lr, "ntk_lambda_max": lam_max,
            "kernel_seconds": kernel_seconds, "kernels": kernels, "finite": rows}


def plot(summary: dict[str, Any], config: Config, path: Path) -> None:
    """Distance to the NTK against width and depth, and every test accuracy."""
    plt = pyplot()
    rows = summary["finite"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    by_w = sorted((r for r in rows if r["depth"] == config.fixed_depth), key=lambda r: r["width"])
    by_d = sorted((r for r in rows if r["width"] == config.fixed_width), key=lambda r: r["depth"])
    for ax, sel, key, label in ((axes[0], by_w, "width", f"width n (depth {config.fixed_depth})"),
                                (axes[1], by_d, "depth", f"depth L (width {config.fixed_width})")):
        xs = [r[key] for r in sel]
        ax.plot(xs, [r["relative_distance_to_ntk"] for r in sel], "o-")
        ax.set_xscale("log")
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.minorticks_off()
        ax.set_ylim(0, None)
        ax.set_xlabel(label)
        ax.set_ylabel("||f_net - f_NTK|| / ||f_NTK|| (test)")
        ax.grid(True, alpha=0.3)
    labels = [f"n={r['width']},L={r['depth']}" for r in rows] + ["NTK (GD)", "NTK (ridgeless)", "NNGP (GP)"]
    accs = [r["accuracy"] for r in rows] + [
        summary["kernels"][k]["accuracy"]
        for k in ("ntk_gradient_descent", "ntk_kernel_regression", "nngp_gp_posterior")]
    colors = ["C0"] * len(rows) + ["C3", "C1", "C2"]
    axes[2].barh(range(len(accs)), accs, color=colors)
    axes[2].set_yticks(range(len(accs)), labels, fontsize=7)
    axes[2].set_xlim(min(accs) - 0.05, 1.0)
    axes[2].set_xlabel("test accuracy (digits)")
    fig.suptitle(f"digits, {config.train} train / {config.test} test, {config.activation}, "
                 f"t1={config.t1}, {config.steps} GD steps")
    fig.tight_layout()
    save_figure(fig, path)


def run(config: Config, ctx: RunContext) -> dict[str, Any]:
    """Open the run folder, compare, write ``summary.json`` and ``inference.png``."""
    out = start_run(config, ctx)
    summary = compare(config, ctx)
    write_summary(ctx, summary)
    plot(summary, config, out / "inference.png")
    return summary


def main(args: argparse.Namespace) -> int:
    """``infdepth limits inference``: validate, run, print the accuracies and distances to the NTK."""
    summary, ctx = run_from_args(Config, run, args)
    for k, v in summary["kernels"].items():
        ctx.say(f"{k}: test accuracy {v['accuracy']:.3f}")
    for r in summary["finite"]:
        ctx.say(f"ResNet n={r['width']} L={r['depth']}: accuracy {r['accuracy']:.3f}, "
                f"relative distance to NTK {r['relative_distance_to_ntk']:.3f}, "
                f"argmax agreement {r['argmax_agreement_with_ntk']:.3f}")
    return 0
