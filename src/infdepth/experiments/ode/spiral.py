"""Irregularly sampled time series: spirals learned by a neural ODE and by a GRU.

Data: trajectories of the spiral ``dy/dt = (y**3) A`` with ``A = [[-0.1, 2], [-2, -0.1]]``
(the torchdiffeq demo), started at random points, observed with Gaussian noise at
random, different times per trajectory on ``[0, t_obs]``; extrapolation targets at
random times on ``(t_obs, t_end]``.

Models (:mod:`infdepth.models.odenet`): a neural ODE ``dy/dt = MLP(y)`` fitted on short
windows of consecutive observations (each trajectory its own window start, drawn per
step with a generator seeded by ``(seed, step)``, and its own time grid: per-sample
dense output), and a GRU baseline that reads ``(y_i, t_{i+1} - t_i)`` and predicts
``y_{i+1}`` on the whole training set every step. Both train through
:func:`infdepth.train.fit` (Adam, cosine decay) in ``--out``'s ``ode/`` and ``gru/``;
under torchrun each process takes its share of the trajectories. Both extrapolate from
the observed window: the ODE integrates from the last observation, the GRU runs over the
observations and then feeds back its own predictions.

Its flags: :mod:`infdepth.experiments.ode.spiral_config` (torch-free, so that ``--help`` imports
no torch).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from infdepth import distributed
from infdepth.errors import InputError
from infdepth.experiments._common import (
    RunContext,
    config_dict,
    count_params,
    pyplot,
    run_from_args,
    save_figure,
)
from infdepth.experiments.ode.spiral_config import (  # noqa: F401  (the flags' half, re-exported)
    MAX_TIME,
    MIN_SPAN,
    Config,
    add_arguments,
    register,
)
from infdepth.io import seed_everything, write_json
from infdepth.models.odenet import GRUBaseline, NeuralODE
from infdepth.ode import odeint
from infdepth.runfolder import open_run
from infdepth.train import CHECKPOINT, FitConfig, fit

SPIRAL_A = ((-0.1, 2.0), (-2.0, -0.1))
#: settings that may change when a run is resumed (recorded in config.json under "resumes")
RESUMABLE = ("device", "world_size")


@dataclass(frozen=True)
class SpiralData:
    """Observation and extrapolation times ``(T, B)``, noisy observations, true targets."""

    t_obs: Tensor
    y_obs: Tensor
    t_ext: Tensor
    y_ext: Tensor
    y_obs_true: Tensor

    def to(self, device: str) -> SpiralData:
        """The same data on ``device``."""
        return SpiralData(*(x.to(device) for x in (self.t_obs, self.y_obs, self.t_ext, self.y_ext,
                                                   self.y_obs_true)))

    @property
    def observations(self) -> Tensor:
        """Batch-first noisy observations ``(B, T, 3)``, columns ``t, y1, y2`` (what the models read)."""
        return torch.cat([self.t_obs.T.unsqueeze(-1), self.y_obs.transpose(0, 1)], -1)


@dataclass(frozen=True)
class SpiralResult:
    """Errors (RMSE against the noise-free truth) of both models.

    ``one_step``: each observation predicted from the one before it (inside the
    observed window); ``extrap``: the extrapolation targets after the window.
    """

    ode_one_step_rmse: float
    ode_extrap_rmse: float
    rnn_one_step_rmse: float
    rnn_extrap_rmse: float
    ode_params: int
    rnn_params: int
    ode_nfe_per_iteration: float
    ode_seconds: float
    rnn_seconds: float


def spiral_field(t: Tensor, y: Tensor) -> Tensor:
    """The true vector field ``(y**3) A``."""
    a = torch.tensor(SPIRAL_A, dtype=y.dtype, device=y.device)
    return (y**3) @ a


def make_data(n: int, config: Config, gen: torch.Generator) -> SpiralData:
    """``n`` trajectories, each observed at its own random times."""
    lo, hi = config.radius
    radius = lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)
    angle = 2 * math.pi * torch.rand(n, generator=gen, dtype=torch.float64)
    y0 = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], 1)
    t_in = torch.sort(torch.rand(config.n_obs - 1, n, generator=gen, dtype=torch.float64), 0).values
    t_obs = torch.cat([torch.zeros(1, n, dtype=torch.float64), t_in * config.t_obs])
    u = torch.sort(torch.rand(config.n_extrap, n, generator=gen, dtype=torch.float64), 0).values
    t_ext = config.t_obs + u * (config.t_end - config.t_obs)
    with torch.no_grad():
        y_all = odeint(spiral_field, y0, torch.cat([t_obs, t_ext]), rtol=1e-10, atol=1e-10)
    y_true = y_all[: config.n_obs]
    y_obs = y_true + config.noise * torch.randn(y_true.shape, generator=gen, dtype=torch.float64)
    return SpiralData(t_obs.float(), y_obs.float(), t_ext.float(), y_all[config.n_obs :].float(),
                      y_true.float())


def window_batches(obs: Tensor, window: int, seed: int) -> Callable[[int], tuple[Tensor, Tensor]]:
    """``step -> (windows (B, window, 3), targets (B, window-1, 2))``, pure in ``step``.

    Short windows of consecutive observations, each trajectory its own start, as in
    torchdiffeq's spiral demo: long rollouts of an untrained field are hard to fit.
    """
    n, n_obs = obs.shape[0], obs.shape[1]
    rows = torch.arange(n, device=obs.device).unsqueeze(1)
    offsets = torch.arange(window, device=obs.device).unsqueeze(0)

    def batch(step: int) -> tuple[Tensor, Tensor]:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        start = torch.randint(0, n_obs - window + 1, (n,), generator=gen).to(obs.device)
        win = obs[rows, start.unsqueeze(1) + offsets]
        return win, win[:, 1:, 1:]

    return batch


def _rmse(a: Tensor, b: Tensor) -> float:
    return float((a - b).square().mean().sqrt())


def _mse(pred: Tensor, target: Tensor) -> Tensor:
    return (pred - target).square().mean()


def _fit(model: nn.Module, batch: Callable[[int], tuple[Tensor, Tensor]], name: str, config: Config,
         ctx: RunContext, device: str, evaluate: Callable[[nn.Module, int], dict[str, float]]
         ) -> tuple[dict[str, Any], float]:
    """Train ``model`` in ``ctx.out / name``; the last evaluation and the training seconds."""
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.iterations)
    every = max(1, config.iterations // 20)
    folder = ctx.out / name
    result = fit(
        model, optimizer, batch, _mse,
        FitConfig(steps=config.iterations, eval_every=config.iterations, log_every=every,
                  checkpoint_every=every, out_dir=folder,
                  resume=ctx.resume and (folder / CHECKPOINT).is_file(), progress=ctx.progress,
                  desc="neural ODE" if name == "ode" else "GRU", device=device),
        evaluate=evaluate,
        scheduler=scheduler,
    )
    return next(r for r in reversed(result.history) if "one_step_rmse" in r), result.seconds


def run(config: Config, ctx: RunContext) -> dict[str, Any]:
    """Fit both models, extrapolate; rank 0 writes ``summary.json`` and the figure."""
    world = ctx.dist.world
    if config.n_train % world:
        raise InputError(
            f"--n-train={config.n_train} is not accepted with {world} processes (torchrun); expected a "
            f"multiple of {world}, so that every process takes the same share of the trajectories"
        )
    open_run(ctx.out, {**config_dict(config), "world_size": world}, resume=ctx.resume,
             overwrite=ctx.overwrite, resumable=RESUMABLE,
             labels={"world_size": "the process count (torchrun --nproc-per-node)"})
    device = distributed.local_device(config.device)
    gen = seed_everything(config.seed)
    train = make_data(config.n_train, config, gen).to(device)
    test = make_data(config.n_test, config, gen).to(device)
    torch.manual_seed(config.seed)
    ode = NeuralODE(config.hidden, rtol=config.rtol, atol=config.atol).to(device)
    rnn = GRUBaseline(config.hidden).to(device)

    windows = window_batches(train.observations, config.window, config.seed)
    since_eval = [0]

    def ode_batch(step: int) -> tuple[Tensor, Tensor]:
        since_eval[0] += 1
        return windows(step)

    def evaluate_ode(net: nn.Module, step: int) -> dict[str, float]:
        assert isinstance(net, NeuralODE)
        nfe = distributed.mean_over_ranks({"nfe_per_iteration": net.nfe / max(since_eval[0], 1)})
        fit_ = net.one_step(test.t_obs, test.y_obs)
        ext = net.predict(test.y_obs[-1], torch.cat([test.t_obs[-1:], test.t_ext]))[1:]
        return {**nfe, "one_step_rmse": _rmse(fit_, test.y_obs_true[1:]),
                "extrap_rmse": _rmse(ext, test.y_ext)}

    whole = (train.observations, train.y_obs[1:].transpose(0, 1))

    def evaluate_rnn(net: nn.Module, step: int) -> dict[str, float]:
        assert isinstance(net, GRUBaseline)
        fit_ = net.teacher_forced(test.t_obs, test.y_obs)
        ext = net.extrapolate(test.t_obs, test.y_obs, test.t_ext)
        return {"one_step_rmse": _rmse(fit_, test.y_obs_true[1:]), "extrap_rmse": _rmse(ext, test.y_ext)}

    ode_last, ode_seconds = _fit(ode, ode_batch, "ode", config, ctx, device, evaluate_ode)
    rnn_last, rnn_seconds = _fit(rnn, lambda step: whole, "gru", config, ctx, device, evaluate_rnn)
    result = SpiralResult(
        ode_one_step_rmse=ode_last["one_step_rmse"],
        ode_extrap_rmse=ode_last["extrap_rmse"],
        rnn_one_step_rmse=rnn_last["one_step_rmse"],
        rnn_extrap_rmse=rnn_last["extrap_rmse"],
        ode_params=count_params(ode),
        rnn_params=count_params(rnn),
        ode_nfe_per_iteration=ode_last["nfe_per_iteration"],
        ode_seconds=ode_seconds,
        rnn_seconds=rnn_seconds,
    )
    summary = {**result.__dict__, "world_size": world}
    if ctx.is_main:
        write_json(ctx.out / "summary.json", summary)
        _plot(ode, rnn, test, config, ctx.out / "spiral_extrapolation.png")
    return summary


def _plot(ode: NeuralODE, rnn: GRUBaseline, test: SpiralData, config: Config, path: Path) -> None:
    n = min(3, test.y_obs.shape[1])
    fig, axes = pyplot().subplots(1, n, figsize=(4.0 * n, 3.8), squeeze=False)
    fine = torch.linspace(0, 1, 200, device=test.t_obs.device)
    with torch.no_grad():
        for b, ax in enumerate(axes[0]):
            t_last = test.t_obs[-1, b]
            tf = t_last + fine * (config.t_end - float(t_last))
            truth_t = torch.linspace(0, config.t_end, 400, dtype=torch.float64, device=test.t_obs.device)
            # the noise-free state at t = 0 is the first true observation
            true_curve = odeint(spiral_field, test.y_obs_true[0, b].double(), truth_t, rtol=1e-9, atol=1e-9)
            ode_curve = ode.predict(test.y_obs[-1, b : b + 1], tf.unsqueeze(1))[:, 0]
            rnn_pts = rnn.extrapolate(test.t_obs[:, b : b + 1], test.y_obs[:, b : b + 1],
                                      test.t_ext[:, b : b + 1])[:, 0]
            ax.plot(*true_curve.cpu().T, color="0.7", lw=1, label="truth")
            ax.scatter(*test.y_obs[:, b].cpu().T, s=8, color="k", label="observations")
            ax.plot(*ode_curve.cpu().T, color="tab:blue", lw=1.5, label="neural ODE")
            ax.scatter(*rnn_pts.cpu().T, s=12, color="tab:red", marker="x", label="GRU")
            ax.scatter(*test.y_ext[:, b].cpu().T, s=10, facecolors="none", edgecolors="tab:green",
                       label="targets")
            ax.set_aspect("equal")
            ax.set_title(f"test trajectory {b}")
    axes[0, 0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"extrapolation beyond t={config.t_obs:g} from irregular noisy observations")
    save_figure(fig, path)


def table(summary: dict[str, Any]) -> str:
    """Plain-text table: parameters and RMSEs of both models."""
    s = summary
    return "\n".join([
        f"{'model':>10} {'params':>7} {'one-step RMSE':>14} {'extrapolation RMSE':>19}",
        f"{'neural ODE':>10} {s['ode_params']:>7} {s['ode_one_step_rmse']:>14.4f} "
        f"{s['ode_extrap_rmse']:>19.4f}",
        f"{'GRU':>10} {s['rnn_params']:>7} {s['rnn_one_step_rmse']:>14.4f} {s['rnn_extrap_rmse']:>19.4f}",
    ])


def main(args: argparse.Namespace) -> int:
    """Validate the flags, train both models, print the table (rank 0 only)."""
    summary, ctx = run_from_args(Config, run, args)
    ctx.say(table(summary))
    ctx.say(f"wrote {ctx.out / 'summary.json'} and {ctx.out / 'spiral_extrapolation.png'}")
    return 0
