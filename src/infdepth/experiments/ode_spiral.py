"""Irregularly sampled time series: spirals learned by a neural ODE and by an RNN.

Data: trajectories of the spiral ``dy/dt = (y**3) A`` with ``A = [[-0.1, 2], [-2, -0.1]]``
(the torchdiffeq demo), started at random points, observed with Gaussian noise at
random, different times per trajectory on ``[0, t_obs]``; extrapolation targets at
random times on ``(t_obs, t_end]``.

Models: a neural ODE ``dy/dt = MLP(y)`` fitted by integrating from the first
observation through each trajectory's own time grid (per-sample dense output), and
a GRU baseline that reads ``(y_i, t_{i+1} - t_i)`` and predicts ``y_{i+1}``. Both
extrapolate from the observed window: the ODE integrates from the last observation,
the GRU runs over the observations and then feeds back its own predictions.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from infdepth.errors import InputError
from infdepth.experiments.ode_common import check_float, check_int, count_params, save_figure
from infdepth.io import append_jsonl, seed_everything, write_json
from infdepth.ode import Dopri5, odeint

SPIRAL_A = ((-0.1, 2.0), (-2.0, -0.1))


@dataclass(frozen=True)
class SpiralConfig:
    """Data, model and training settings."""

    n_train: int = 24
    n_test: int = 16
    n_obs: int = 40
    n_extrap: int = 20
    t_obs: float = 4.0
    t_end: float = 8.0
    noise: float = 0.02
    radius: tuple[float, float] = (0.8, 1.4)
    hidden: int = 64
    window: int = 5
    iterations: int = 1000
    lr: float = 1e-2
    rtol: float = 1e-5
    atol: float = 1e-6
    seed: int = 0
    device: str = "cpu"


@dataclass(frozen=True)
class SpiralData:
    """Observation and extrapolation times ``(T, B)``, noisy observations, true targets."""

    t_obs: torch.Tensor
    y_obs: torch.Tensor
    t_ext: torch.Tensor
    y_ext: torch.Tensor
    y_obs_true: torch.Tensor


def spiral_field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The true vector field ``(y**3) A``."""
    a = torch.tensor(SPIRAL_A, dtype=y.dtype, device=y.device)
    return (y**3) @ a


def make_data(n: int, cfg: SpiralConfig, gen: torch.Generator) -> SpiralData:
    """``n`` trajectories, each observed at its own random times."""
    lo, hi = cfg.radius
    radius = lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)
    angle = 2 * math.pi * torch.rand(n, generator=gen, dtype=torch.float64)
    y0 = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], 1)
    t_in = torch.sort(torch.rand(cfg.n_obs - 1, n, generator=gen, dtype=torch.float64), 0).values
    t_obs = torch.cat([torch.zeros(1, n, dtype=torch.float64), t_in * cfg.t_obs])
    u = torch.sort(torch.rand(cfg.n_extrap, n, generator=gen, dtype=torch.float64), 0).values
    t_ext = cfg.t_obs + u * (cfg.t_end - cfg.t_obs)
    t_all = torch.cat([t_obs, t_ext])
    with torch.no_grad():
        y_all = odeint(spiral_field, y0, t_all, rtol=1e-10, atol=1e-10)
    y_true = y_all[: cfg.n_obs]
    y_obs = y_true + cfg.noise * torch.randn(y_true.shape, generator=gen, dtype=torch.float64)
    return SpiralData(t_obs.float(), y_obs.float(), t_ext.float(), y_all[cfg.n_obs :].float(),
                      y_true.float())


class NeuralODE(nn.Module):
    """``dy/dt = MLP(y)``, autonomous like the data."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, hidden),
                                 nn.Tanh(), nn.Linear(hidden, 2))
        self.nfe = 0

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        out: torch.Tensor = self.net(y)
        return out

    def predict(self, y0: torch.Tensor, t: torch.Tensor, cfg: SpiralConfig) -> torch.Tensor:
        """States at per-sample times ``t`` ``(T, B)`` from ``y0`` at ``t[0]``."""
        rel = t - t[:1]  # autonomous: every sample may start its clock at 0
        return odeint(self, y0, rel, solver=Dopri5(), rtol=cfg.rtol, atol=cfg.atol)

    def one_step(self, t: torch.Tensor, y: torch.Tensor, cfg: SpiralConfig) -> torch.Tensor:
        """Predictions of ``y[1:]``, each from the observation before it."""
        steps, batch = t.shape[0] - 1, t.shape[1]
        dt = (t[1:] - t[:-1]).reshape(-1)
        grid = torch.stack([torch.zeros_like(dt), dt])
        pred = odeint(self, y[:-1].reshape(-1, 2), grid, solver=Dopri5(), rtol=cfg.rtol,
                      atol=cfg.atol)[1]
        return pred.reshape(steps, batch, 2)


class GRUBaseline(nn.Module):
    """Reads ``(y_i, dt_i)`` and predicts ``y_{i+1} = y_i + head(state)``."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.cell = nn.GRUCell(3, hidden)
        self.head = nn.Linear(hidden, 2)
        self.hidden = hidden

    def _step(self, y: torch.Tensor, dt: torch.Tensor, h: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.cell(torch.cat([y, dt.unsqueeze(1)], 1), h)
        return y + self.head(h), h

    def teacher_forced(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One-step predictions of ``y[1:]`` from the true ``y[:-1]``."""
        h = y.new_zeros(y.shape[1], self.hidden)
        preds = []
        for i in range(y.shape[0] - 1):
            p, h = self._step(y[i], t[i + 1] - t[i], h)
            preds.append(p)
        return torch.stack(preds)

    def extrapolate(self, t: torch.Tensor, y: torch.Tensor, t_ext: torch.Tensor) -> torch.Tensor:
        """Read the observations, then feed back predictions at the times ``t_ext``."""
        h = y.new_zeros(y.shape[1], self.hidden)
        for i in range(y.shape[0] - 1):
            _, h = self._step(y[i], t[i + 1] - t[i], h)
        cur, prev_t = y[-1], t[-1]
        out = []
        for j in range(t_ext.shape[0]):
            cur, h = self._step(cur, t_ext[j] - prev_t, h)
            prev_t = t_ext[j]
            out.append(cur)
        return torch.stack(out)


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


def _rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).square().mean().sqrt())


def run_spiral(cfg: SpiralConfig, out: Path, progress: bool = True) -> SpiralResult:
    """Fit both models, extrapolate, write ``summary.json``, ``metrics.jsonl`` and figures."""
    gen = seed_everything(cfg.seed)
    device = torch.device(cfg.device)
    train = make_data(cfg.n_train, cfg, gen)
    test = make_data(cfg.n_test, cfg, gen)
    metrics = out / "metrics.jsonl"
    if metrics.exists():
        metrics.unlink()

    def dev(d: SpiralData) -> SpiralData:
        return SpiralData(*(x.to(device) for x in (d.t_obs, d.y_obs, d.t_ext, d.y_ext,
                                                   d.y_obs_true)))

    train, test = dev(train), dev(test)
    log_every = max(1, cfg.iterations // 20)
    torch.manual_seed(cfg.seed)
    ode = NeuralODE(cfg.hidden).to(device)
    rnn = GRUBaseline(cfg.hidden).to(device)

    start = time.perf_counter()
    opt = torch.optim.Adam(ode.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.iterations)
    ode.nfe = 0
    batch = torch.arange(cfg.n_train, device=device)
    offsets = torch.arange(cfg.window, device=device).unsqueeze(1)
    for it in tqdm(range(cfg.iterations), desc="neural ODE", disable=not progress):
        # short windows of consecutive observations, each trajectory its own start (and so
        # its own time grid), as in torchdiffeq's spiral demo: long rollouts of an
        # untrained field are hard to fit
        start_idx = torch.randint(0, cfg.n_obs - cfg.window + 1, (cfg.n_train,), generator=gen)
        rows = start_idx.to(device).unsqueeze(0) + offsets
        t_win, y_win = train.t_obs[rows, batch], train.y_obs[rows, batch]
        pred = ode.predict(y_win[0], t_win, cfg)
        loss = (pred[1:] - y_win[1:]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if (it + 1) % log_every == 0 or it + 1 == cfg.iterations:
            append_jsonl(metrics, {"model": "ode", "iteration": it + 1,
                                       "loss": float(loss.detach())})
    ode_nfe = ode.nfe / cfg.iterations
    ode_seconds = time.perf_counter() - start

    start = time.perf_counter()
    opt = torch.optim.Adam(rnn.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.iterations)
    for it in tqdm(range(cfg.iterations), desc="GRU", disable=not progress):
        pred = rnn.teacher_forced(train.t_obs, train.y_obs)
        loss = (pred - train.y_obs[1:]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if (it + 1) % log_every == 0 or it + 1 == cfg.iterations:
            append_jsonl(metrics, {"model": "gru", "iteration": it + 1,
                                       "loss": float(loss.detach())})
    rnn_seconds = time.perf_counter() - start

    with torch.no_grad():
        ode_fit = ode.one_step(test.t_obs, test.y_obs, cfg)
        last_t = test.t_obs[-1:]
        ode_ext = ode.predict(test.y_obs[-1], torch.cat([last_t, test.t_ext]), cfg)[1:]
        rnn_fit = rnn.teacher_forced(test.t_obs, test.y_obs)
        rnn_ext = rnn.extrapolate(test.t_obs, test.y_obs, test.t_ext)
    result = SpiralResult(
        ode_one_step_rmse=_rmse(ode_fit, test.y_obs_true[1:]),
        ode_extrap_rmse=_rmse(ode_ext, test.y_ext),
        rnn_one_step_rmse=_rmse(rnn_fit, test.y_obs_true[1:]),
        rnn_extrap_rmse=_rmse(rnn_ext, test.y_ext),
        ode_params=count_params(ode),
        rnn_params=count_params(rnn),
        ode_nfe_per_iteration=ode_nfe,
        ode_seconds=ode_seconds,
        rnn_seconds=rnn_seconds,
    )
    write_json(out / "summary.json", result.__dict__)
    _plot(ode, rnn, test, cfg, out / "spiral_extrapolation.png")
    return result


def _plot(ode: NeuralODE, rnn: GRUBaseline, test: SpiralData, cfg: SpiralConfig,
          path: Path) -> None:
    import matplotlib.pyplot as plt

    n = min(3, test.y_obs.shape[1])
    fig, axes = plt.subplots(1, n, figsize=(4.0 * n, 3.8))
    axes = [axes] if n == 1 else list(axes)
    fine = torch.linspace(0, 1, 200, device=test.t_obs.device)
    with torch.no_grad():
        for b, ax in enumerate(axes):
            t_last = test.t_obs[-1, b]
            tf = t_last + fine * (cfg.t_end - float(t_last))
            truth_t = torch.linspace(0, cfg.t_end, 400, dtype=torch.float64)
            true_curve = odeint(spiral_field, _true_start(test, b), truth_t.to(test.t_obs.device),
                                rtol=1e-9, atol=1e-9)
            ode_curve = ode.predict(test.y_obs[-1, b : b + 1], tf.unsqueeze(1), cfg)[:, 0]
            rnn_pts = rnn.extrapolate(test.t_obs[:, b : b + 1], test.y_obs[:, b : b + 1],
                                      test.t_ext[:, b : b + 1])[:, 0]
            ax.plot(*true_curve.cpu().T, color="0.7", lw=1, label="truth")
            ax.scatter(*test.y_obs[:, b].cpu().T, s=8, color="k", label="observations")
            ax.plot(*ode_curve.cpu().T, color="tab:blue", lw=1.5, label="neural ODE")
            ax.scatter(*rnn_pts.cpu().T, s=12, color="tab:red", marker="x", label="GRU")
            ax.scatter(*test.y_ext[:, b].cpu().T, s=10, facecolors="none",
                       edgecolors="tab:green", label="targets")
            ax.set_aspect("equal")
            ax.set_title(f"test trajectory {b}")
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"extrapolation beyond t={cfg.t_obs:g} from irregular noisy observations")
    save_figure(fig, path)


def _true_start(test: SpiralData, b: int) -> torch.Tensor:
    # the noise-free state at t = 0 is the first true observation
    return test.y_obs_true[0, b].double()


def check_config(cfg: SpiralConfig) -> None:
    """InputError on unusable settings."""
    check_int("--n-train", cfg.n_train)
    check_int("--n-test", cfg.n_test)
    check_int("--n-obs", cfg.n_obs, 3)
    check_int("--n-extrap", cfg.n_extrap)
    check_int("--hidden", cfg.hidden)
    check_int("--iterations", cfg.iterations)
    check_int("--window", cfg.window, 2)
    if cfg.window > cfg.n_obs:
        raise InputError(f"--window {cfg.window} is not accepted; expected at most --n-obs "
                         f"({cfg.n_obs})")
    check_float("--t-obs", cfg.t_obs)
    check_float("--t-end", cfg.t_end, low=cfg.t_obs)
    check_float("--noise", cfg.noise, strict=False)
    check_float("--lr", cfg.lr)
    check_float("--rtol", cfg.rtol)
    check_float("--atol", cfg.atol)
