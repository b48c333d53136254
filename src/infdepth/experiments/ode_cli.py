"""``infdepth ode ...``: the continuous-depth reproductions (Chen et al. 2018).

* ``memory``: training-step memory of a ResNet against an ODE block (backprop, adjoint)
  as depth grows;
* ``params``: parameters against accuracy, 6 residual blocks against one ODE block,
  on digits or Fashion-MNIST;
* ``spiral``: irregularly sampled spirals, neural ODE against an RNN baseline.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from infdepth.errors import InputError


def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    return values


def _common(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("--out", type=Path, default=Path(f"runs/ode-{name}"), help="output folder")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and data")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch (0: leave torch's default)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _threads(args: argparse.Namespace) -> None:
    import torch

    if args.threads < 0:
        raise InputError(f"--threads {args.threads} is not accepted; expected 0 or more")
    if args.threads:
        torch.set_num_threads(args.threads)


def _memory(args: argparse.Namespace) -> int:
    from infdepth.experiments.ode_common import pick_device, prepare_out
    from infdepth.experiments.ode_memory import MemoryConfig, check_config, run_memory, table

    _threads(args)
    cfg = MemoryConfig(depths=args.depths, width=args.width, batch=args.batch, seed=args.seed,
                       device=str(pick_device(args.device)))
    check_config(cfg)
    out = prepare_out(args.out, cfg)
    rows = run_memory(cfg, out, progress=not args.no_progress)
    print(table(rows))
    print(f"wrote {out / 'summary.json'} and {out / 'memory_vs_depth.png'}")
    return 0


def _params(args: argparse.Namespace) -> int:
    from infdepth.experiments.ode_common import pick_device, prepare_out
    from infdepth.experiments.ode_params import ParamsConfig, check_config, run_params, table

    _threads(args)
    cfg = ParamsConfig(dataset=args.dataset,
                       data_dir=None if args.data_dir is None else str(args.data_dir),
                       channels=args.channels, res_blocks=args.res_blocks, epochs=args.epochs,
                       batch=args.batch, lr=args.lr, rtol=args.rtol, atol=args.atol,
                       adjoint=not args.backprop, train_subset=args.train_subset,
                       seed=args.seed, device=str(pick_device(args.device)))
    check_config(cfg)
    out = prepare_out(args.out, cfg)
    rows = run_params(cfg, out, progress=not args.no_progress)
    print(table(rows))
    print(f"wrote {out / 'summary.json'} and {out / 'params_vs_accuracy.png'}")
    return 0


def _spiral(args: argparse.Namespace) -> int:
    from infdepth.experiments.ode_common import pick_device, prepare_out
    from infdepth.experiments.ode_spiral import SpiralConfig, check_config, run_spiral

    _threads(args)
    cfg = SpiralConfig(n_train=args.n_train, n_test=args.n_test, n_obs=args.n_obs,
                       n_extrap=args.n_extrap, t_obs=args.t_obs, t_end=args.t_end,
                       noise=args.noise, hidden=args.hidden, window=args.window,
                       iterations=args.iterations,
                       lr=args.lr, rtol=args.rtol, atol=args.atol, seed=args.seed,
                       device=str(pick_device(args.device)))
    check_config(cfg)
    out = prepare_out(args.out, cfg)
    r = run_spiral(cfg, out, progress=not args.no_progress)
    print(f"{'model':>10} {'params':>7} {'one-step RMSE':>14} {'extrapolation RMSE':>19}")
    print(f"{'neural ODE':>10} {r.ode_params:>7} {r.ode_one_step_rmse:>14.4f} "
          f"{r.ode_extrap_rmse:>19.4f}")
    print(f"{'GRU':>10} {r.rnn_params:>7} {r.rnn_one_step_rmse:>14.4f} "
          f"{r.rnn_extrap_rmse:>19.4f}")
    print(f"wrote {out / 'summary.json'} and {out / 'spiral_extrapolation.png'}")
    return 0


def register(sub: Any) -> None:
    """Add the ``ode`` subcommand and its reproductions."""
    p = sub.add_parser("ode", help="continuous depth: neural ODE reproductions",
                       description="Continuous depth (Chen et al. 2018): memory against depth, "
                       "parameters against accuracy, irregularly sampled time series.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ode_sub = p.add_subparsers(dest="ode_command", metavar="EXPERIMENT", required=True)

    m = ode_sub.add_parser("memory", help="memory of a training step against depth",
                           description="Memory a training step keeps for backward (and the CUDA peak): "
                           "ResNet with L blocks, ODE block with L Euler steps by backprop, "
                           "and by the adjoint.",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    m.add_argument("--depths", type=_int_tuple, default="1,2,4,8,16,32,64,128",
                   help="comma-separated depths L (ResNet blocks = Euler steps)")
    m.add_argument("--width", type=int, default=64, help="hidden width of every block")
    m.add_argument("--batch", type=int, default=128, help="batch size of the training step")
    _common(m, "memory")
    m.set_defaults(func=_memory)

    q = ode_sub.add_parser("params", help="parameters against accuracy: ResNet vs ODE-Net",
                           description="Train a 6-block ResNet, a 1-block ResNet and an "
                           "ODE-Net (one ODE block) after the same downsampling stem; report "
                           "parameters, test accuracy and NFE.",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    q.add_argument("--dataset", default="digits",
                   help="digits (bundled), mnist, fashion-mnist (apt package "
                        "dataset-fashion-mnist) or idx (with --data-dir)")
    q.add_argument("--data-dir", type=Path, default=None,
                   help="folder with the four MNIST-format IDX files (default: standard place)")
    q.add_argument("--channels", type=int, default=32, help="channels of every conv layer")
    q.add_argument("--res-blocks", type=int, default=6, help="residual blocks of the ResNet")
    q.add_argument("--epochs", type=int, default=12, help="training epochs per model")
    q.add_argument("--batch", type=int, default=64, help="images per step")
    q.add_argument("--lr", type=float, default=1e-2, help="peak learning rate (Adam, one-cycle)")
    q.add_argument("--rtol", type=float, default=1e-3, help="ODE solver relative tolerance")
    q.add_argument("--atol", type=float, default=1e-3, help="ODE solver absolute tolerance")
    q.add_argument("--backprop", action="store_true",
                   help="differentiate the ODE block by backprop instead of the adjoint")
    q.add_argument("--train-subset", type=int, default=None,
                   help="train on this many random training images (default: all)")
    _common(q, "params")
    q.set_defaults(func=_params)

    s = ode_sub.add_parser("spiral", help="irregular time series: neural ODE vs GRU",
                           description="Learn spiral dynamics from noisy observations at "
                           "random times (a different grid per trajectory) and compare the "
                           "extrapolation error of a neural ODE with a GRU baseline.",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("--n-train", type=int, default=24, help="training trajectories")
    s.add_argument("--n-test", type=int, default=16, help="test trajectories")
    s.add_argument("--n-obs", type=int, default=40,
                   help="observations per trajectory (the first at t=0, the rest at random times)")
    s.add_argument("--n-extrap", type=int, default=20, help="extrapolation targets per trajectory")
    s.add_argument("--t-obs", type=float, default=4.0, help="end of the observed window")
    s.add_argument("--t-end", type=float, default=8.0, help="end of the extrapolation window")
    s.add_argument("--noise", type=float, default=0.02, help="std of the observation noise")
    s.add_argument("--hidden", type=int, default=64, help="hidden width of both models")
    s.add_argument("--window", type=int, default=5,
                   help="consecutive observations per neural-ODE training window")
    s.add_argument("--iterations", type=int, default=1000, help="training iterations per model")
    s.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (cosine decay)")
    s.add_argument("--rtol", type=float, default=1e-5, help="ODE solver relative tolerance")
    s.add_argument("--atol", type=float, default=1e-6, help="ODE solver absolute tolerance")
    _common(s, "spiral")
    s.set_defaults(func=_spiral)
