"""The XOR sweep of ``infdepth xor``: build, train and report one network per (k, seed).

What the experiment is and its flags: :mod:`infdepth.experiments.depth.xor_config` (torch-free,
for ``--help``); ``Config`` is re-exported here.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from infdepth import distributed
from infdepth.data.xor import step_generator, xor_batch
from infdepth.depth.layer import InfiniteDepth
from infdepth.experiments._common import RunContext, config_dict, parallel_imap, run_from_args
from infdepth.experiments.depth.xor_config import (  # noqa: F401  (the flags' half, re-exported)
    FULL_STEPS,
    QUICK_SEEDS,
    QUICK_STEPS,
    RESUMABLE,
    Config,
    add_arguments,
    register,
)
from infdepth.experiments.depth.xor_report import XorResult, comparison_table, plot_sweep, summarise
from infdepth.io import seed_everything, write_json
from infdepth.models.xor_net import INPUTS, xor_net
from infdepth.runfolder import open_run
from infdepth.train import FitConfig, fit


def build_xor_model(cfg: Config, seed: int) -> nn.Sequential:
    """The paper's XOR network for ``cfg``, initialised from ``seed``; outputs logits."""
    return xor_net(width=cfg.width, dropout=cfg.dropout, w0=cfg.w0, w_l2=cfg.w_l2, gamma_l2=cfg.gamma_l2,
                   grow_step=cfg.grow_step, seed=seed)


def _accuracy(logits: Tensor, y: Tensor) -> Tensor:
    return ((logits > 0).to(y.dtype) == y).to(torch.float32).mean()


def run_xor(
    cfg: Config, k: int, seed: int, out_dir: Path | None = None, *, resume: bool = False,
    progress: bool = True,
) -> XorResult:
    """Train one XOR network on ``k`` active inputs; metrics and checkpoints go to ``out_dir``."""
    assert cfg.steps is not None  # filled in by Config.__post_init__
    seed_everything(seed)
    model = build_xor_model(cfg, seed).to(cfg.device)
    # fused Adam: one kernel for all parameters, a quarter less time per step on CPU (same update rule)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, fused=True)
    loss_fn = nn.BCEWithLogitsLoss()
    val_x, val_y = xor_batch(k, cfg.val_size, step_generator(seed, -1), INPUTS)
    val_x, val_y = val_x.to(cfg.device), val_y.to(cfg.device)

    def batch(step: int) -> tuple[Tensor, Tensor]:
        return xor_batch(k, cfg.batch_size, step_generator(seed, step), INPUTS)

    def evaluate(net: nn.Module, step: int) -> dict[str, float]:
        logits = net(val_x)
        return {"val_loss": float(loss_fn(logits, val_y)), "val_acc": float(_accuracy(logits, val_y))}

    result = fit(
        model, optimizer, batch, loss_fn,
        FitConfig(steps=cfg.steps, eval_every=cfg.eval_every, log_every=cfg.eval_every,
                  checkpoint_every=cfg.checkpoint_every, out_dir=out_dir, resume=resume, progress=progress,
                  desc=f"xor k={k} seed={seed}", device=cfg.device),
        evaluate=evaluate,
        step_metrics=lambda out, y: {"acc": _accuracy(out, y)},
    )
    ws = [r["w"]["2"] for r in result.history]
    layer = model[2]
    assert isinstance(layer, InfiniteDepth)
    return XorResult(
        k=k, seed=seed, final_w=ws[-1], max_w=max([cfg.w0, *ws]), final_val_acc=result.series("val_acc")[-1],
        steps_to_99=next((r["step"] for r in result.history if r.get("val_acc", 0) >= 0.99), None),
        built_blocks=layer.built_blocks, seconds=result.seconds,
    )


def _worker(job: tuple[Config, int, int, str, bool]) -> XorResult:
    cfg, k, seed, out, resume = job
    if not distributed.current().enabled:
        torch.set_num_threads(1)
    out_dir = Path(out)
    resume = resume and (out_dir / "checkpoint.pt").is_file()
    return run_xor(cfg, k, seed, out_dir, resume=resume, progress=False)


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    """Every (k, seed) of ``cfg`` in parallel processes; writes summary.json, figures and table.md.

    Under torchrun every run is data-parallel over the ranks, one run at a time, and the
    non-zero ranks train but write nothing.
    """
    assert cfg.seeds is not None
    jobs = 1 if ctx.dist.enabled else min(cfg.jobs, len(cfg.k) * len(cfg.seeds))
    device = distributed.local_device(cfg.device)
    config = {**config_dict(cfg), "jobs": jobs, "world_size": ctx.dist.world}
    open_run(ctx.out, config, resume=ctx.resume, overwrite=ctx.overwrite, resumable=RESUMABLE,
             labels={"world_size": "the process count (torchrun --nproc-per-node)"})
    work = [(replace(cfg, device=device), k, s, str(ctx.out / f"k{k}_seed{s}"), ctx.resume)
            for k in cfg.k for s in cfg.seeds]
    results: list[XorResult] = []
    with tqdm(total=len(work), desc="xor runs", dynamic_ncols=True,
              disable=not (ctx.is_main and ctx.progress)) as bar:
        for res in parallel_imap(_worker, work, jobs):
            results.append(res)
            bar.update(1)
    results.sort(key=lambda r: (r.k, r.seed))
    summary = summarise(results, config)
    if ctx.is_main:
        write_json(ctx.out / "summary.json", summary)
        (ctx.out / "table.md").write_text(comparison_table(summary))
        plot_sweep(ctx.out, results)
    return summary


def main(args: argparse.Namespace) -> int:
    """Run the sweep described by the parsed ``args``; print the table."""
    _, ctx = run_from_args(Config, run, args)
    ctx.say((ctx.out / "table.md").read_text() if ctx.is_main else "")
    ctx.say(f"results: {ctx.out / 'summary.json'}; figures: {ctx.out}/xor_*.png")
    return 0
