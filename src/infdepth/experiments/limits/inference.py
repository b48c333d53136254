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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from infdepth.errors import InputError, check_choice, check_float, check_int, check_items, reject
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
from infdepth.experiments.limits._shared import (
    ACTIVATIONS_HELP,
    MAX_TIME,
    positive_int,
    progress,
    start_run,
    write_summary,
)
from infdepth.io import seed_everything
from infdepth.limits import (
    KNOWN_ACTIVATIONS,
    gp_posterior,
    gradient_descent_prediction,
    infinite_kernels,
    kernel_regression,
)
from infdepth.limits.finite import FiniteResNet
from infdepth.train import FitConfig, fit

DIGITS = 1797
"""Samples in scikit-learn's digits data set (8 x 8 images, 10 classes)."""
FEATURES = 64


@dataclass(frozen=True)
class Config:
    """Data split, kernel time, training and the finite networks compared."""

    train: int = option(150, "training points from digits")
    test: int = option(300, "test points from digits")
    t1: float = option(1.0, "diffusion time (depth) of the kernels")
    activation: str = option("relu", f"activation ({ACTIVATIONS_HELP})")
    steps: int = option(200, "full-batch gradient descent steps")
    lr_scale: float = option(1.0, "learning rate as a multiple of 1 / lambda_max(NTK on train); "
                             "gradient descent diverges beyond 2")
    widths: tuple[int, ...] = option((32, 128, 512), "widths of the finite ResNets (at --fixed-depth)",
                                     type=int_list)
    fixed_depth: int = option(4, "depth used for the width sweep")
    depths: tuple[int, ...] = option((2, 8, 32), "depths of the finite ResNets (at --fixed-width)",
                                     type=int_list)
    fixed_width: int = option(128, "width used for the depth sweep")
    kernel_steps: int = option(16, "RK4 steps of the kernel ODEs")
    gp_noise: float = option(1e-2, "observation noise variance of the NNGP posterior")
    seed: int = option(0, "random seed")

    def __post_init__(self) -> None:
        check_int("--train", self.train, low=2)  # standardising needs two
        check_int("--test", self.test, low=1)
        if self.train + self.test > DIGITS:
            raise reject("--train + --test", self.train + self.test,
                         f"at most {DIGITS} (the samples of digits)")
        check_float("--t1", self.t1, low=0.0, high=MAX_TIME, strict=True)
        check_choice("--activation", self.activation, KNOWN_ACTIVATIONS)
        check_int("--steps", self.steps, low=1)
        check_float("--lr-scale", self.lr_scale, low=0.0, high=2.0, strict=True)
        check_items("--widths", self.widths, positive_int)
        check_int("--fixed-depth", self.fixed_depth, low=1)
        check_items("--depths", self.depths, positive_int)
        check_int("--fixed-width", self.fixed_width, low=1)
        check_int("--kernel-steps", self.kernel_steps, low=1)
        check_float("--gp-noise", self.gp_noise, low=0.0, strict=True)
        check_int("--seed", self.seed, low=0)
        points = self.train + self.test
        # parameters, gradients and a step's temporaries; the pre-activations autograd keeps
        largest = max(3 * (w * w * d + w * (FEATURES + 10)) + 4 * points * w * d for w, d in self.grid())
        check_allocatable("--widths/--fixed-width x --depths/--fixed-depth", largest)

    def grid(self) -> list[tuple[int, int]]:
        """The ``(width, depth)`` pairs trained: the width sweep, then the depth sweep."""
        by_width = [(w, self.fixed_depth) for w in self.widths]
        return by_width + [(self.fixed_width, d) for d in self.depths
                           if (self.fixed_width, d) not in by_width]


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``infdepth limits inference`` (from :class:`Config`) and the run flags."""
    add_config_arguments(parser, Config)
    add_run_arguments(parser, "runs/limits-inference")


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
