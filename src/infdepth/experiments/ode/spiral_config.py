"""The flags of ``infdepth ode spiral``: its ``Config`` (the only place its defaults are written),
torch-free so that its ``--help`` imports no torch.  The run: :mod:`infdepth.experiments.ode.spiral`."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from infdepth.errors import check_allocatable, check_device, check_float, check_int
from infdepth.experiments._flags import add_config_arguments, add_run_arguments, deferred, option

#: the shortest observed window and extrapolation span (``--t-obs``, ``--t-end - --t-obs``), and
#: the latest time (the true spiral is solved to ``--t-end`` at tolerance 1e-10)
MIN_SPAN = 1e-3
MAX_TIME = 1000.0


@dataclass(frozen=True)
class Config:
    """Data, model and training settings."""

    n_train: int = option(24, "training trajectories (under torchrun: a multiple of the process count)")
    n_test: int = option(16, "test trajectories")
    n_obs: int = option(40, "observations per trajectory (the first at t=0, the rest at random times)")
    n_extrap: int = option(20, "extrapolation targets per trajectory")
    t_obs: float = option(4.0, "end of the observed window")
    t_end: float = option(8.0, "end of the extrapolation window")
    noise: float = option(0.02, "std of the observation noise")
    radius: tuple[float, float] = option((0.8, 1.4), "range of the starting radius", cli=False)
    hidden: int = option(64, "hidden width of both models")
    window: int = option(5, "consecutive observations per neural-ODE training window")
    iterations: int = option(1000, "training iterations per model")
    lr: float = option(1e-2, "Adam learning rate (cosine decay)")
    rtol: float = option(1e-5, "ODE solver relative tolerance")
    atol: float = option(1e-6, "ODE solver absolute tolerance")
    seed: int = option(0, "seed of weights and data")
    device: str = option("cpu", "torch device, e.g. cpu or cuda")

    def __post_init__(self) -> None:
        check_int("--n-train", self.n_train, low=1)
        check_int("--n-test", self.n_test, low=1)
        check_int("--n-obs", self.n_obs, low=3)
        check_int("--n-extrap", self.n_extrap, low=1)
        check_int("--hidden", self.hidden, low=1)
        check_int("--iterations", self.iterations, low=1)
        check_int("--window", self.window, low=2, high=self.n_obs)
        # times below MIN_SPAN make steps the solvers cannot resolve (the run would fail, not refuse)
        check_float("--t-obs", self.t_obs, low=MIN_SPAN, high=MAX_TIME)
        check_float("--t-end", self.t_end, low=self.t_obs + MIN_SPAN, high=MAX_TIME)
        check_float("--noise", self.noise, low=0)
        lo, hi = self.radius
        check_float("radius[0]", lo, low=0, strict=True)
        check_float("radius[1]", hi, low=lo)
        check_float("--lr", self.lr, low=0, strict=True)
        check_float("--rtol", self.rtol, low=0, strict=True)
        check_float("--atol", self.atol, low=0, strict=True)
        check_int("--seed", self.seed, low=0)
        check_device("--device", self.device)
        check_allocatable(f"--hidden={self.hidden}", 4 * self.hidden * self.hidden)
        points = (self.n_train + self.n_test) * (self.n_obs + self.n_extrap)
        check_allocatable("--n-train/--n-test x --n-obs/--n-extrap", 4 * points)
        check_allocatable(f"--n-train={self.n_train}", 4 * self.n_train * self.n_obs * self.hidden)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``ode spiral``: one per :class:`Config` field, and the run folder."""
    add_config_arguments(parser, Config)
    add_run_arguments(parser, "runs/ode-spiral", resumable=True)


def register(sub: Any) -> None:
    """Add ``spiral`` to the ``ode`` subcommands (data-parallel under torchrun)."""
    p = sub.add_parser(
        "spiral", help="irregular time series: neural ODE vs GRU",
        description="Learn spiral dynamics from noisy observations at random times (a different grid "
        "per trajectory) and compare the extrapolation error of a neural ODE with a GRU baseline. "
        "Under torchrun both train data-parallel.",
    )
    add_arguments(p)
    p.set_defaults(func=deferred("infdepth.experiments.ode.spiral"), data_parallel=True)
