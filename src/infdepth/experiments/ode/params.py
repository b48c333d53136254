"""Parameters against accuracy: residual blocks against one ODE block (Chen et al. 2018, Table 1).

The paper's set-up, scaled to the data (:mod:`infdepth.models.odenet`): a downsampling
stem, then either ``--res-blocks`` residual blocks ``h + g(h)`` (``resnet``), a single one
(``resnet-1``, to separate "fewer parameters" from "continuous depth"), or one ODE block
``dh/dt = g(t, h)`` on ``[0, t1]`` (``odenet``: Dopri5, the adjoint unless ``--backprop``,
``t1`` learned with ``--learn-t1``), then norm, ReLU, pooling and a linear layer.

Each model trains through :func:`infdepth.train.fit` (Adam with a one-cycle schedule,
cross-entropy) in its own sub-folder of ``--out`` (``resnet/``, ``resnet-1/``,
``odenet/``: ``metrics.jsonl``, ``checkpoint.pt``), evaluated on the test set after
every epoch. An epoch is a fresh permutation of the training images seeded by
``(seed, epoch)``, cut into global batches of ``--batch`` (the last incomplete batch
dropped); under torchrun every process takes its slice of each batch. Reported per
model: parameters, test accuracy, and the ODE block's function evaluations per training
step over the last epoch (forward solve, and backward solve of the adjoint).

Its flags: :mod:`infdepth.experiments.ode.params_config` (torch-free, so that ``--help`` imports
no torch).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from infdepth import distributed
from infdepth.data.images import ImageData, load_images
from infdepth.errors import InputError, check_allocatable, reject
from infdepth.experiments._common import (
    RunContext,
    config_dict,
    count_params,
    epoch_batches,
    pyplot,
    run_from_args,
    save_figure,
    steps_per_epoch,
)
from infdepth.experiments.ode.params_config import (  # noqa: F401  (the flags' half, re-exported)
    KINDS,
    Config,
    add_arguments,
    register,
)
from infdepth.io import write_json
from infdepth.models.odenet import ode_block, odenet, resnet
from infdepth.ode import JacobianFrobenius, KineticEnergy, Regulariser
from infdepth.runfolder import open_run
from infdepth.train import CHECKPOINT, FitConfig, fit

#: settings that may change when a run is resumed (recorded in config.json under "resumes")
RESUMABLE = ("device", "world_size")
EVAL_BATCH = 256


@dataclass(frozen=True)
class ParamsRow:
    """Result of training one model.

    ``test_acc`` after the last epoch; ``nfe_forward``/``nfe_backward``: the ODE block's
    function evaluations per training step over the last epoch (mean over the processes;
    with a regulariser, of the solve that integrates it too); ``nfe_test``: per test batch of
    the last evaluation (the learned dynamics alone, in eval mode); ``t1``: its end time at the
    end; ``seconds`` of training (summed over resumed parts) and the training images per second
    of the whole run (all processes together).
    """

    kind: str
    params: int
    test_acc: float
    test_error: float
    nfe_forward: float | None
    nfe_backward: float | None
    nfe_test: float | None
    t1: float | None
    seconds: float
    images_per_second: float


def training_set(config: Config, data: ImageData) -> tuple[Tensor, Tensor]:
    """The training images, or ``--train-subset`` of them drawn with the seed."""
    x, y = data.x_train, data.y_train
    n = x.shape[0]
    if config.train_subset is None:
        return x, y
    if config.train_subset > n:
        raise reject("--train-subset", config.train_subset,
                     f"an integer in [1, {n}] (the training images of {config.dataset})")
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed))[: config.train_subset]
    return x[idx], y[idx]


def check_sizes(config: Config, n_train: int, image_shape: tuple[int, int, int], world: int) -> None:
    """Refuse a batch that the data, the process count or the memory cannot serve."""
    if config.batch > n_train:
        what = "the training images" if config.train_subset is None else "--train-subset"
        raise reject("--batch", config.batch, f"an integer in [1, {n_train}] ({what})")
    if config.batch % world:
        raise InputError(
            f"--batch={config.batch} is not accepted with {world} processes (torchrun); expected a "
            f"multiple of {world}, so that every process takes the same share of each batch"
        )
    _, h, w = image_shape
    check_allocatable(f"--batch={config.batch} with --channels={config.channels}",
                      max(config.batch, EVAL_BATCH) * (config.channels + 1) * h * w)


def regularisers(config: Config) -> list[Regulariser]:
    """The ODE block's regularisers of ``--kinetic-energy`` and ``--jacobian-frobenius``."""
    regs: list[Regulariser] = []
    if config.kinetic_energy:
        regs.append(KineticEnergy(config.kinetic_energy))
    if config.jacobian_frobenius:
        regs.append(JacobianFrobenius(config.jacobian_frobenius))
    return regs


def build_model(kind: str, config: Config, image_shape: tuple[int, int, int], classes: int) -> nn.Module:
    """The model of the given kind, the config unpacked into plain arguments."""
    c, size, _ = image_shape
    if kind == "odenet":
        return odenet(config.channels, size, rtol=config.rtol, atol=config.atol,
                      adjoint=not config.backprop, step_size=config.step_size,
                      learn_t1=config.learn_t1, t1_l2=config.t1_l2, classes=classes, in_channels=c,
                      regularisers=regularisers(config), control_integrals=config.control_integrals)
    blocks = config.res_blocks if kind == "resnet" else 1
    return resnet(config.channels, blocks, size, classes=classes, in_channels=c)


def train_model(
    kind: str,
    config: Config,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    classes: int,
    ctx: RunContext,
    device: str,
) -> tuple[ParamsRow, nn.Module]:
    """Train one model in ``ctx.out / kind`` (resuming its checkpoint with ``ctx.resume``)."""
    x_tr, y_tr = train
    x_te, y_te = test
    image_shape = (int(x_tr.shape[1]), int(x_tr.shape[2]), int(x_tr.shape[3]))
    torch.manual_seed(config.seed)
    model = build_model(kind, config, image_shape, classes).to(device)
    block = ode_block(model)
    per_epoch = steps_per_epoch(x_tr.shape[0], config.batch, drop_last=True)
    steps = config.epochs * per_epoch
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=steps)
    batches = epoch_batches(x_tr, y_tr, config.batch, config.seed, drop_last=True)
    since_eval = [0]  # training steps since the NFE counters were reset

    def batch(step: int) -> tuple[Tensor, Tensor]:
        since_eval[0] += 1
        return batches(step)

    def evaluate(net: nn.Module, step: int) -> dict[str, float]:
        record: dict[str, float] = {"epoch": step / per_epoch}
        if block is not None:
            k = max(since_eval[0], 1)
            record.update(distributed.mean_over_ranks(
                {"nfe_forward": block.nfe_forward / k, "nfe_backward": block.nfe_backward / k}))
            record["t1"] = float(block.t1.detach())
            block.reset_nfe()
        correct = 0
        for i in range(0, x_te.shape[0], EVAL_BATCH):
            correct += int((net(x_te[i : i + EVAL_BATCH]).argmax(1) == y_te[i : i + EVAL_BATCH]).sum())
        record["test_acc"] = correct / x_te.shape[0]
        if block is not None:  # the learned dynamics alone (eval mode: no regulariser channels)
            record["nfe_test"] = block.nfe_forward / -(-x_te.shape[0] // EVAL_BATCH)
            block.reset_nfe()
        since_eval[0] = 0
        if ctx.progress and ctx.is_main:
            nfe = f", NFE {record['nfe_forward']:.1f}/{record['nfe_backward']:.1f}" if block else ""
            tqdm.write(f"{kind} epoch {round(record['epoch'])}: test accuracy "
                       f"{record['test_acc']:.4f}{nfe}")
        return record

    folder = ctx.out / kind
    result = fit(
        model, optimizer, batch, F.cross_entropy,
        FitConfig(steps=steps, eval_every=per_epoch, log_every=per_epoch, checkpoint_every=per_epoch,
                  out_dir=folder, resume=ctx.resume and (folder / CHECKPOINT).is_file(),
                  progress=ctx.progress, desc=kind, device=device),
        evaluate=evaluate,
        step_metrics=lambda out, y: {"train_accuracy": (out.argmax(1) == y).to(torch.float32).mean()},
        scheduler=scheduler,
    )
    last = next(r for r in reversed(result.history) if "test_acc" in r)
    acc = float(last["test_acc"])
    row = ParamsRow(kind, count_params(model), acc, 1 - acc, last.get("nfe_forward"),
                    last.get("nfe_backward"), last.get("nfe_test"), last.get("t1"), result.seconds,
                    steps * config.batch / result.seconds)
    return row, model


def run(config: Config, ctx: RunContext) -> dict[str, Any]:
    """Train every model of ``config.models``; rank 0 writes ``summary.json`` and the figure.

    Returns ``{"dataset", "world_size", "models": {kind: ParamsRow as a dict}}`` (``summary.json``).
    """
    world = ctx.dist.world
    data = load_images(config.dataset, config.data_dir)
    x_tr, y_tr = training_set(config, data)
    check_sizes(config, x_tr.shape[0], data.image_shape, world)
    open_run(ctx.out, {**config_dict(config), "world_size": world}, resume=ctx.resume,
             overwrite=ctx.overwrite, resumable=RESUMABLE,
             labels={"world_size": "the process count (torchrun --nproc-per-node)"})
    device = distributed.local_device(config.device)
    train = (x_tr.to(device), y_tr.to(device))
    test = (data.x_test.to(device), data.y_test.to(device))
    models = {kind: asdict(train_model(kind, config, train, test, data.classes, ctx, device)[0])
              for kind in config.models}
    summary = {"dataset": config.dataset, "world_size": world, "models": models}
    if ctx.is_main:
        write_json(ctx.out / "summary.json", summary)
        _plot(list(models.values()), ctx.out / "params_vs_accuracy.png", config.dataset)
    return summary


def _plot(rows: list[dict[str, Any]], path: Path, dataset: str) -> None:
    fig, ax = pyplot().subplots(figsize=(5.0, 3.6))
    for r in rows:
        ax.scatter(r["params"] / 1e3, 100 * r["test_error"], s=50)
        ax.annotate(r["kind"], (r["params"] / 1e3, 100 * r["test_error"]), textcoords="offset points",
                    xytext=(5, 5))
    ax.set_xlabel("parameters (thousands)")
    ax.set_ylabel("test error (%)")
    ax.set_title(f"Parameters against error ({dataset})")
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def table(rows: list[dict[str, Any]]) -> str:
    """Plain-text summary table (``rows``: the values of ``summary.json``'s ``models``)."""
    lines = [f"{'model':>9} {'params':>8} {'test acc':>9} {'NFE fwd':>8} {'NFE bwd':>8} {'t1':>6} "
             f"{'seconds':>8}"]
    for r in rows:
        nf = "-" if r["nfe_forward"] is None else f"{r['nfe_forward']:.1f}"
        nb = "-" if r["nfe_backward"] is None else f"{r['nfe_backward']:.1f}"
        t1 = "-" if r["t1"] is None else f"{r['t1']:.3f}"
        lines.append(f"{r['kind']:>9} {r['params']:>8} {r['test_acc']:>9.4f} {nf:>8} {nb:>8} "
                     f"{t1:>6} {r['seconds']:>8.1f}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """Validate the flags, train, print the table (rank 0 only)."""
    summary, ctx = run_from_args(Config, run, args)
    ctx.say(table(list(summary["models"].values())))
    ctx.say(f"wrote {ctx.out / 'summary.json'} and {ctx.out / 'params_vs_accuracy.png'}")
    return 0
