"""The image run of ``infdepth images``: build, train and report the all-g-infinity CNN (or a fixed depth).

What the experiment is and its flags: :mod:`infdepth.experiments.depth.images_config` (torch-free,
for ``--help``); ``Config`` is re-exported here.
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from infdepth.data.history import PAPER_FINAL_W, PAPER_PEAK_TEST_ACC
from infdepth.data.images import ImageData, load_images
from infdepth.depth.diagnostics import dw_parts
from infdepth.depth.groups import depth_param_groups
from infdepth.depth.layer import depth_layers
from infdepth.depth.schedule import FixDepthAt
from infdepth.errors import InputError, check_int, check_items
from infdepth.experiments._common import (
    RunContext,
    config_dict,
    config_from_args,
    context_from_args,
    epoch_batches,
    steps_per_epoch,
)
from infdepth.experiments.depth.images_config import (  # noqa: F401  (the flags' half, re-exported)
    DEFAULT_BATCH,
    DEFAULT_EPOCHS,
    DEFAULT_LR,
    OPTIMIZERS,
    PENALTY_GATES,
    RESUMABLE,
    Config,
    add_arguments,
    register,
)
from infdepth.experiments.depth.images_report import ImagesResult, plot_depth_comparison, plot_run, summarise
from infdepth.io import seed_everything, write_json
from infdepth.models.going_deeper import LAYERS, GoingDeeperCNN
from infdepth.runfolder import open_run
from infdepth.train import CHECKPOINT, FitConfig, fit, load_checkpoint


def build_model(cfg: Config, image_shape: tuple[int, int, int], classes: int) -> GoingDeeperCNN:
    """The network for ``cfg``, initialised from ``cfg.seed``, on ``cfg.device``."""
    torch.manual_seed(cfg.seed)
    return GoingDeeperCNN(
        image_shape, classes, channels=cfg.channels, dense_units=cfg.dense_units, dropout=cfg.dropout,
        conv_w_l2=cfg.conv_w_l2, dense_w_l2=cfg.dense_w_l2, gamma_l2=cfg.gamma_l2, w0=cfg.w0,
        grow_step=cfg.grow_step, fixed_depth=cfg.depth, seed=cfg.seed, zero_init=cfg.zero_init,
        penalty_gate=cfg.penalty_gate, alpha=cfg.alpha, amp=cfg.amp,
    ).to(cfg.device)


def make_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """Adadelta with the Keras 2 defaults of the original (rho 0.95, eps 1e-7) or Adam."""
    assert cfg.lr is not None  # filled in by Config.__post_init__
    params: Any = [p for p in model.parameters() if p.requires_grad]
    if not params:  # fixed depth 0: nothing trains; a zero-lr step keeps the loop uniform
        params = [nn.Parameter(torch.zeros(()))]
    elif cfg.w_lr is not None and cfg.depth is None:  # the w's in a group of their own
        params = depth_param_groups(model, lr=cfg.w_lr)
    if cfg.optimizer == "adadelta":
        return torch.optim.Adadelta(params, lr=cfg.lr, rho=0.95, eps=1e-7)
    return torch.optim.Adam(params, lr=cfg.lr)


def test_metrics(model: nn.Module, x: Tensor, y: Tensor, batch: int) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)``, in batches of ``batch``."""
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            logits = model(x[i : i + batch])
            loss_sum += float(F.cross_entropy(logits, y[i : i + batch], reduction="sum"))
            correct += int((logits.argmax(dim=1) == y[i : i + batch]).sum())
    return loss_sum / len(x), correct / len(x)


def precise_bn(model: nn.Module, x: Tensor, batch_size: int) -> nn.Module:
    """A copy of ``model`` whose BatchNorm statistics are recomputed on ``x`` with dropout off.

    The blocks put Dropout before BatchNorm (as the original), so the running variance
    is that of dropped-out activations, larger than what the layer sees at test time;
    recomputing the statistics without dropout removes that shift ("precise BN").
    """
    net = copy.deepcopy(model).eval()
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
            m.train()
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            net(x[i : i + batch_size])
    return net.eval()


def run_images(cfg: Config, ctx: RunContext, *, data: ImageData | None = None) -> ImagesResult:
    """Train one network on ``cfg.dataset``; write metrics, checkpoints, summary and figures to ``ctx.out``.

    A fresh run needs an empty ``ctx.out`` (``ctx.overwrite`` replaces a previous run);
    ``ctx.resume`` continues the run there and refuses changed settings
    (see :func:`infdepth.runfolder.open_run`).  Under torchrun every rank trains on its
    slice of each global batch; rank 0 alone prints and writes.
    """
    out = ctx.out
    assert cfg.epochs is not None and cfg.batch_size is not None  # filled in by Config.__post_init__
    if ctx.resume and not (out / CHECKPOINT).is_file():
        raise InputError(f"no checkpoint at {out / CHECKPOINT}; run without --resume first")
    data = load_images(cfg.dataset, cfg.data_dir) if data is None else data
    config = {**config_dict(cfg), "world_size": ctx.dist.world}
    open_run(out, config, resume=ctx.resume, overwrite=ctx.overwrite, resumable=RESUMABLE)
    data = data.to(cfg.device)
    seed_everything(cfg.seed)
    model = build_model(cfg, data.image_shape, data.classes)
    optimizer = make_optimizer(cfg, model)
    per_epoch = steps_per_epoch(len(data.x_train), cfg.batch_size)
    earlier = 0.0
    if ctx.resume:
        old = load_checkpoint(out / CHECKPOINT)["history"]
        earlier = float(old[-1].get("seconds", 0.0)) if old else 0.0
    started = time.perf_counter()
    # running sums stay tensors so that a GPU run does not synchronise every step
    running: dict[str, Any] = {"loss": 0.0, "acc": 0.0, "n": 0}

    def step_metrics(logits: Tensor, y: Tensor) -> dict[str, Tensor]:
        acc = (logits.argmax(dim=1) == y).to(torch.float32).mean()
        running.update(loss=running["loss"] + F.cross_entropy(logits, y).detach(),
                       acc=running["acc"] + acc, n=running["n"] + 1)
        return {"train_acc": acc}

    def evaluate(net: nn.Module, step: int) -> dict[str, float]:
        loss, acc = test_metrics(net, data.x_test, data.y_test, cfg.eval_batch)
        rec: dict[str, Any] = {"epoch": float(round(step / per_epoch)), "test_loss": loss, "test_acc": acc,
                               "seconds": earlier + time.perf_counter() - started}
        if cfg.dw_probe:  # the parts of dL/dw on the first training images (changes nothing)
            probe = slice(0, cfg.dw_probe)
            parts = dw_parts(net, data.x_train[probe], data.y_train[probe], F.cross_entropy)
            if parts:  # none once learn-then-fix has fixed the depths
                rec["dw"] = parts
        if ctx.progress and ctx.is_main:
            k = max(running["n"], 1)
            layers = " ".join(f"{name}: w={layer.depth:.3f} ({layer.active_blocks} active)"
                              for name, layer in depth_layers(net))
            tqdm.write(f"[{cfg.label}] epoch {int(rec['epoch']):3d}  train loss "
                       f"{float(running['loss']) / k:.4f} acc {float(running['acc']) / k:.4f}  test loss "
                       f"{loss:.4f} acc {acc:.4f}  {layers}  ({rec['seconds']:.0f} s)")
        running.update(loss=0.0, acc=0.0, n=0)
        return rec

    steps = cfg.epochs * per_epoch
    schedule = None
    if cfg.fix_depth_at is not None and cfg.depth is None:
        schedule = FixDepthAt(model, max(1, round(cfg.fix_depth_at * steps)), cfg.fix_threshold)
    result = fit(
        model, optimizer, epoch_batches(data.x_train, data.y_train, cfg.batch_size, cfg.seed),
        F.cross_entropy,  # fit adds every submodule's penalty(): the g-inf layers' and the fixed stacks'
        FitConfig(steps=steps, eval_every=per_epoch, log_every=per_epoch,
                  checkpoint_every=per_epoch, out_dir=out, resume=ctx.resume, progress=ctx.progress,
                  desc=f"{cfg.dataset} {cfg.label}", device=cfg.device),
        evaluate=evaluate,
        step_metrics=step_metrics,
        scheduler=schedule,
    )
    history = [r for r in result.history if "test_acc" in r]
    accs = [r["test_acc"] for r in history]
    best = int(np.argmax(accs))
    layers = depth_layers(model)
    precise = None
    if cfg.precise_bn > 0:
        net = precise_bn(model, data.x_train[: cfg.precise_bn], cfg.batch_size)
        precise = test_metrics(net, data.x_test, data.y_test, cfg.eval_batch)[1]
    res = ImagesResult(
        label=cfg.label, epochs=cfg.epochs, final_test_acc=accs[-1], best_test_acc=accs[best],
        best_epoch=int(history[best]["epoch"]), final_test_loss=history[-1]["test_loss"],
        final_w={name: layer.depth for name, layer in layers},
        active_blocks={name: layer.active_blocks for name, layer in layers} if layers
        else {name: len(getattr(model, name).blocks) for name in LAYERS},
        built_blocks={name: layer.built_blocks for name, layer in layers},
        used_parameters=model.used_parameters(), seconds=result.seconds,
        images_per_second=len(data.x_train) * cfg.epochs / max(result.seconds, 1e-9),
        final_test_acc_precise_bn=precise,
    )
    if ctx.is_main:
        write_json(out / "summary.json", summarise(res, history, config))
        plot_run(out, history, cfg.label)
    return res


def run_comparison(cfg: Config, ctx: RunContext, depths: tuple[int, ...]) -> dict[str, Any]:
    """The learned run plus one fixed-depth run per entry of ``depths``; comparison figure and JSON."""
    data = load_images(cfg.dataset, cfg.data_dir)

    def one(c: Config, folder: Path) -> ImagesResult:
        again = ctx.resume and (folder / CHECKPOINT).is_file()
        # a member run that had not reached its first checkpoint starts again from scratch
        member = replace(ctx, out=folder, resume=again, overwrite=ctx.resume and not again)
        return run_images(c, member, data=data)

    learned = one(cfg, ctx.out / "learned")
    fixed = [one(replace(cfg, fixed_depth=k), ctx.out / f"fixed{k}") for k in depths]
    summary = {"learned": asdict(learned), "fixed": [asdict(r) for r in fixed]}
    if ctx.is_main:
        plot_depth_comparison(ctx.out, learned, fixed)
        write_json(ctx.out / "comparison.json", summary)
    return summary


def main(args: argparse.Namespace) -> int:
    """Run the experiment described by the parsed ``args``; print the result."""
    cfg = config_from_args(Config, args)
    depths = args.compare_depths
    if depths is not None:
        check_items("--compare-depths", depths, lambda n, v: check_int(n, v, low=0, high=1000))
        if cfg.depth is not None:
            raise InputError("--fixed-depth/--layer-depths and --compare-depths exclude each other")
    ctx = context_from_args(args)
    if depths:
        study = {**config_dict(cfg), "compare_depths": list(depths), "world_size": ctx.dist.world}
        open_run(ctx.out, study, resume=ctx.resume, overwrite=ctx.overwrite, resumable=RESUMABLE)
        summary = run_comparison(cfg, ctx, depths)
        for r in (summary["learned"], *summary["fixed"]):
            ctx.say(f"{r['label']:>8}: final test acc {r['final_test_acc']:.4f}  best "
                    f"{r['best_test_acc']:.4f} (epoch {r['best_epoch']})  active blocks "
                    f"{r['active_blocks']}  {r['seconds']:.0f} s")
        ctx.say(f"results: {ctx.out / 'comparison.json'}; figure: {ctx.out / 'images_fixed_depth.png'}")
        return 0
    res = run_images(cfg, ctx)
    ws = "  ".join(f"{k}: w={v:.3f}" for k, v in res.final_w.items())
    ctx.say(f"{cfg.dataset} {res.label}: final test acc {res.final_test_acc:.4f}, best "
            f"{res.best_test_acc:.4f} (epoch {res.best_epoch}), {res.epochs} epochs, "
            f"{res.seconds:.1f} s  {ws}")
    if res.final_test_acc_precise_bn is not None:
        ctx.say("final test acc with BatchNorm statistics recomputed without dropout: "
                f"{res.final_test_acc_precise_bn:.4f}")
    ctx.say(f"paper (MNIST): peak test acc {PAPER_PEAK_TEST_ACC:.4f}, final w "
            + " / ".join(f"{v:.2f}" for v in PAPER_FINAL_W.values()))
    ctx.say(f"results: {ctx.out / 'summary.json'}; figures: {ctx.out}/images_*.png")
    return 0
