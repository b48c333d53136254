"""XOR reproduction of "Going Deeper" (section IV.A): learned depth grows with the task's difficulty.

Network (REFERENCE.md section 1): frozen random Dense(8 -> 24, ReLU) ->
g-infinity layer [f_i = Dense(24) -> BatchNorm (gamma l2) -> Dropout(0.1), h = ReLU]
-> frozen random Dense(24 -> 1, sigmoid).  Adam (lr 1e-3), binary cross-entropy,
1000 fresh samples per step, validation on 10,000 fresh samples every 100 steps.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import math
import multiprocessing as mp
import os
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import Tensor, nn
from tqdm.auto import tqdm

from infdepth import distributed
from infdepth.data.xor import step_generator, xor_batch
from infdepth.depth.layer import InfiniteDepth
from infdepth.errors import InputError
from infdepth.io import seed_everything, write_json
from infdepth.runfolder import open_run
from infdepth.train import FitConfig, fit

INPUTS = 8
FULL_STEPS = 100_000  # the paper's setting
QUICK_STEPS = 3000
QUICK_SEEDS = (0, 1, 2)
REFERENCE_CSV = Path(__file__).resolve().parents[1] / "data" / "reference" / "going_deeper_xor_history.csv.gz"


@dataclass(frozen=True)
class XorConfig:
    """One XOR training run."""

    k: int
    seed: int = 0
    steps: int = 100_000
    width: int = 24
    batch_size: int = 1000
    val_size: int = 10_000
    eval_every: int = 100
    w0: float = 1.0
    w_l2: float = 1e-4
    gamma_l2: float = 1e-8
    dropout: float = 0.1
    lr: float = 1e-3
    grow_step: int = 5
    checkpoint_every: int = 5000
    device: str = "cpu"


@dataclass(frozen=True)
class XorResult:
    """What one run ends with."""

    k: int
    seed: int
    final_w: float
    max_w: float
    final_val_acc: float
    steps_to_99: int | None
    built_blocks: int
    seconds: float


def _glorot_(layer: nn.Linear) -> nn.Linear:
    # Keras' Dense defaults: glorot-uniform kernel, zero bias
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def xor_block(width: int, dropout: float) -> nn.Module:
    """``f_i``: Dense(width) -> BatchNorm (Keras momentum and eps) -> Dropout."""
    return nn.Sequential(
        _glorot_(nn.Linear(width, width)),
        nn.BatchNorm1d(width, eps=1e-3, momentum=0.01),
        nn.Dropout(dropout),
    )


def build_xor_model(cfg: XorConfig) -> nn.Sequential:
    """The paper's XOR network; only the g-infinity layer is trainable. Outputs logits."""
    torch.manual_seed(cfg.seed)
    stem = _glorot_(nn.Linear(INPUTS, cfg.width))
    head = _glorot_(nn.Linear(cfg.width, 1))
    for p in (*stem.parameters(), *head.parameters()):
        p.requires_grad_(False)
    layer = InfiniteDepth(
        lambda i: xor_block(cfg.width, cfg.dropout),
        h="relu",
        w0=cfg.w0,
        w_l2=cfg.w_l2,
        block_l2=cfg.gamma_l2,
        grow_step=cfg.grow_step,
        seed=cfg.seed,
    )
    return nn.Sequential(stem, nn.ReLU(), layer, head, nn.Flatten(0))


def _accuracy(logits: Tensor, y: Tensor) -> Tensor:
    return ((logits > 0).to(y.dtype) == y).to(torch.float32).mean()


def run_xor(
    cfg: XorConfig, out_dir: Path | None = None, *, resume: bool = False, progress: bool = True
) -> XorResult:
    """Train one XOR network; writes ``metrics.jsonl`` and checkpoints into ``out_dir``."""
    seed_everything(cfg.seed)
    model = build_xor_model(cfg).to(cfg.device)
    # fused Adam: one kernel for all parameters, a quarter less time per step on CPU (same update rule)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, fused=True)
    loss_fn = nn.BCEWithLogitsLoss()
    val_x, val_y = xor_batch(cfg.k, cfg.val_size, step_generator(cfg.seed, -1), INPUTS)
    val_x, val_y = val_x.to(cfg.device), val_y.to(cfg.device)

    def batch(step: int) -> tuple[Tensor, Tensor]:
        return xor_batch(cfg.k, cfg.batch_size, step_generator(cfg.seed, step), INPUTS)

    def evaluate(net: nn.Module, step: int) -> dict[str, float]:
        logits = net(val_x)
        return {"val_loss": float(loss_fn(logits, val_y)), "val_acc": float(_accuracy(logits, val_y))}

    result = fit(
        model,
        optimizer,
        batch,
        loss_fn,
        FitConfig(
            steps=cfg.steps,
            eval_every=cfg.eval_every,
            log_every=cfg.eval_every,
            checkpoint_every=cfg.checkpoint_every,
            out_dir=out_dir,
            resume=resume,
            progress=progress,
            desc=f"xor k={cfg.k} seed={cfg.seed}",
            device=cfg.device,
        ),
        evaluate=evaluate,
        step_metrics=lambda out, y: {"acc": _accuracy(out, y)},
    )
    ws = [r["w"]["2"] for r in result.history]
    accs = result.series("val_acc")
    steps_99 = next((r["step"] for r in result.history if r.get("val_acc", 0) >= 0.99), None)
    layer = model[2]
    assert isinstance(layer, InfiniteDepth)
    return XorResult(
        k=cfg.k,
        seed=cfg.seed,
        final_w=ws[-1],
        max_w=max([cfg.w0, *ws]),
        final_val_acc=accs[-1],
        steps_to_99=steps_99,
        built_blocks=layer.built_blocks,
        seconds=result.seconds,
    )


def _die_with_parent(parent: int) -> None:
    """Pool initializer: end this worker as soon as the process that started it is gone.

    A killed ``infdepth xor`` must not leave workers training and writing into its run
    folder; checkpoints are atomic and a torn last metrics line is ignored on reading.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def _worker(job: tuple[XorConfig, str, bool]) -> XorResult:
    cfg, out, resume = job
    if not distributed.current().enabled:
        torch.set_num_threads(1)
    out_dir = Path(out)
    if resume and not (out_dir / "checkpoint.pt").is_file():
        resume = False
    return run_xor(cfg, out_dir, resume=resume, progress=False)


def reference_history(path: Path = REFERENCE_CSV) -> dict[int, dict[str, list[float]]]:
    """The original run's history per k: iteration, w, val_acc, val_loss (empty if absent)."""
    out: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    if not path.is_file():
        return {}
    with gzip.open(path, "rt", newline="") as fh:
        for row in csv.DictReader(fh):
            d = out[int(row["active_inputs"])]
            for key in ("iteration", "w", "val_acc", "val_loss"):
                d[key].append(float(row[key]))
    return {k: dict(v) for k, v in out.items()}


def run_sweep(
    ks: list[int],
    seeds: list[int],
    base: XorConfig,
    out_dir: Path,
    *,
    jobs: int,
    resume: bool = False,
    write: bool = True,
) -> dict[str, Any]:
    """Every (k, seed) in parallel processes; writes summary.json, figures and a table.

    ``write=False`` (the non-zero ranks under torchrun) trains but writes nothing.
    """
    if write:
        out_dir.mkdir(parents=True, exist_ok=True)
    work = [
        (XorConfig(**{**asdict(base), "k": k, "seed": s}), str(out_dir / f"k{k}_seed{s}"), resume)
        for k in ks
        for s in seeds
    ]
    results: list[XorResult] = []
    with tqdm(total=len(work), desc="xor runs", dynamic_ncols=True, disable=not write) as bar:
        if jobs <= 1:
            for job in work:
                results.append(_worker(job))
                bar.update(1)
        else:
            with mp.get_context("spawn").Pool(jobs, _die_with_parent, (os.getpid(),)) as pool:
                for res in pool.imap_unordered(_worker, work):
                    results.append(res)
                    bar.update(1)
    results.sort(key=lambda r: (r.k, r.seed))
    summary = summarise(results, base)
    if not write:
        return summary
    write_json(out_dir / "summary.json", summary)
    (out_dir / "table.md").write_text(comparison_table(summary))
    plot_sweep(out_dir, results)
    return summary


def summarise(results: list[XorResult], base: XorConfig) -> dict[str, Any]:
    """Per-k means over seeds, the Spearman correlation of k with final w, the reference."""
    ref = reference_history()
    per_k: dict[str, Any] = {}
    by_k: dict[int, list[XorResult]] = defaultdict(list)
    for r in results:
        by_k[r.k].append(r)
    for k, runs in sorted(by_k.items()):
        entry: dict[str, Any] = {
            "final_w": float(np.mean([r.final_w for r in runs])),
            "final_w_std": float(np.std([r.final_w for r in runs])),
            "final_w_per_seed": [r.final_w for r in runs],
            "seconds": float(np.mean([r.seconds for r in runs])),
            "max_w": float(np.mean([r.max_w for r in runs])),
            "final_val_acc": float(np.mean([r.final_val_acc for r in runs])),
            "min_final_val_acc": min(r.final_val_acc for r in runs),
            "steps_to_99": [r.steps_to_99 for r in runs],
            "built_blocks": [r.built_blocks for r in runs],
        }
        if k in ref:
            entry["reference_final_w"] = ref[k]["w"][-1]
            entry["reference_max_w"] = max(ref[k]["w"])
        per_k[str(k)] = entry
    ks = [r.k for r in results]
    spearman = stats.spearmanr(ks, [r.final_w for r in results]) if len(set(ks)) > 1 else None
    mean_ks = sorted(by_k)
    spearman_mean = (
        stats.spearmanr(mean_ks, [per_k[str(k)]["final_w"] for k in mean_ks]) if len(mean_ks) > 1 else None
    )
    per_seed: dict[str, float | None] = {}
    for seed in sorted({r.seed for r in results}):
        mine = [r for r in results if r.seed == seed]
        rho = stats.spearmanr([r.k for r in mine], [r.final_w for r in mine]) if len(mine) > 2 else None
        per_seed[str(seed)] = None if rho is None else float(rho.statistic)
    return {
        "config": asdict(base),
        "spearman_k_vs_final_w_per_seed": per_seed,
        "runs": [asdict(r) for r in results],
        "per_k": per_k,
        "spearman_k_vs_final_w_runs": None if spearman is None else float(spearman.statistic),
        "spearman_k_vs_final_w_means": None if spearman_mean is None else float(spearman_mean.statistic),
        "all_runs_100pct": all(r.final_val_acc >= 1.0 for r in results),
    }


def _reference_w_at(ref: dict[str, list[float]], step: int) -> float:
    """The original run's ``w`` at the recorded iteration closest to ``step``."""
    its = np.asarray(ref["iteration"])
    return float(np.asarray(ref["w"])[int(np.argmin(np.abs(its - step)))])


def _seconds(value: float) -> str:
    return f"{value:.0f}" if math.isfinite(value) else "n/a"


def comparison_table(summary: dict[str, Any]) -> str:
    """Markdown table per k: our final w per seed beside the original run's w at the same step."""
    ref = reference_history()
    steps = int(summary["config"]["steps"])
    lines = [
        f"| k | final w per seed | mean +- sd | original w at step {steps:,} | original final w "
        "| max w (ours, mean) | steps to 99% val acc | final val acc (min) | s per run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for k, e in summary["per_k"].items():
        original = _reference_w_at(ref[int(k)], steps) if int(k) in ref else float("nan")
        per_seed = ", ".join(f"{w:.2f}" for w in e["final_w_per_seed"])
        to_99 = ", ".join("-" if s is None else str(s) for s in e["steps_to_99"])
        lines.append(
            f"| {k} | {per_seed} | {e['final_w']:.2f} +- {e['final_w_std']:.2f} | {original:.2f} | "
            f"{e.get('reference_final_w', float('nan')):.2f} | {e['max_w']:.2f} | {to_99} | "
            f"{e['min_final_val_acc']:.4f} | {_seconds(e['seconds'])} |"
        )
    lines.append("")
    rhos = ", ".join(
        f"seed {s}: {'n/a' if r is None else f'{r:.3f}'}"
        for s, r in summary["spearman_k_vs_final_w_per_seed"].items()
    )
    lines.append(f"Spearman(k, final w) per seed: {rhos}")
    lines.append(f"Spearman(k, final w) over runs: {summary['spearman_k_vs_final_w_runs']}")
    lines.append(f"Spearman(k, mean final w): {summary['spearman_k_vs_final_w_means']}")
    return "\n".join(lines) + "\n"


def plot_sweep(out_dir: Path, results: list[XorResult]) -> None:
    """w, validation accuracy and validation loss against step for every k (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from infdepth.io import read_jsonl

    ref = reference_history()
    cmap = plt.get_cmap("viridis")
    panels = (("w", "w (depth)"), ("val_acc", "validation accuracy"), ("val_loss", "validation loss"))
    for key, label in panels:
        fig, ax = plt.subplots(figsize=(9, 5))
        for r in results:
            hist = read_jsonl(out_dir / f"k{r.k}_seed{r.seed}" / "metrics.jsonl")
            steps = [h["step"] for h in hist if key in h or key == "w"]
            vals = [h["w"]["2"] if key == "w" else h[key] for h in hist if key in h or key == "w"]
            ax.plot(
                steps,
                vals,
                color=cmap(r.k / INPUTS),
                lw=1,
                label=f"k={r.k}" if r.seed == min(x.seed for x in results if x.k == r.k) else None,
            )
        if key == "w" and ref:
            horizon = max(x.k for x in results)
            last = max(
                h["step"]
                for h in read_jsonl(out_dir / f"k{results[-1].k}_seed{results[-1].seed}" / "metrics.jsonl")
            )
            for k, d in ref.items():
                if k <= horizon:
                    it = np.asarray(d["iteration"])
                    mask = it <= last
                    ax.plot(it[mask], np.asarray(d["w"])[mask], color=cmap(k / INPUTS), lw=0.8, ls="--")
            ax.plot([], [], color="grey", ls="--", label="original run")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        if key == "val_loss":
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(ncol=2, fontsize=8)
        ax.set_title(f"XOR: {label} against step")
        fig.tight_layout()
        fig.savefig(out_dir / f"xor_{key}.png", dpi=110)
        plt.close(fig)
    _plot_w_per_k(out_dir, results, ref)


def _plot_w_per_k(out_dir: Path, results: list[XorResult], ref: dict[int, dict[str, list[float]]]) -> None:
    """``xor_w_by_k.png``: one panel per k, every seed's w against step beside the original run's."""
    import matplotlib.pyplot as plt

    from infdepth.io import read_jsonl

    ks = sorted({r.k for r in results})
    cols = min(3, len(ks))
    rows = math.ceil(len(ks) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4 * cols, 2.8 * rows), sharex=True, sharey=True, squeeze=False
    )
    for ax, k in zip(axes.flat, ks):
        last = 0
        for r in (r for r in results if r.k == k):
            hist = read_jsonl(out_dir / f"k{r.k}_seed{r.seed}" / "metrics.jsonl")
            steps = [h["step"] for h in hist]
            last = max(last, steps[-1] if steps else 0)
            ax.plot(steps, [h["w"]["2"] for h in hist], lw=1, label=f"seed {r.seed}")
        if k in ref:
            it = np.asarray(ref[k]["iteration"])
            mask = it <= last
            ax.plot(it[mask], np.asarray(ref[k]["w"])[mask], color="black", lw=1, ls="--", label="original")
        ax.set_title(f"k = {k}", fontsize=10)
        ax.grid(True, alpha=0.3)
    for ax in axes.flat[len(ks):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    for ax in axes[:, 0]:
        ax.set_ylabel("w")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("XOR: learned depth w against step, per number of active inputs k")
    fig.tight_layout()
    fig.savefig(out_dir / "xor_w_by_k.png", dpi=100)
    plt.close(fig)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def register(sub: Any) -> None:
    """Add the ``xor`` subcommand."""
    p = sub.add_parser(
        "xor",
        help="reproduce the XOR experiment (learned depth against task difficulty)",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"quick setting: {QUICK_STEPS} steps and seeds {','.join(map(str, QUICK_SEEDS))} "
        "unless --steps / --seeds are given",
    )
    p.add_argument(
        "--steps", type=int, default=None, help=f"optimizer steps per run (default: the paper's {FULL_STEPS})"
    )
    p.add_argument(
        "--k",
        type=_int_list,
        default=list(range(INPUTS + 1)),
        help="comma-separated numbers of active inputs to run (0..8)",
    )
    p.add_argument("--seeds", type=_int_list, default=None, help="comma-separated seeds (default: 0)")
    p.add_argument("--w-l2", type=float, default=1e-4, help="l2 factor on w (the paper's text: 1e-5)")
    p.add_argument(
        "--gamma-l2", type=float, default=1e-8, help="l2 factor on the BatchNorm gamma of each sub-layer"
    )
    p.add_argument("--w0", type=float, default=1.0, help="initial depth w")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--batch-size", type=int, default=1000, help="fresh samples per step")
    p.add_argument(
        "--eval-every", type=int, default=100, help="steps between validations (10,000 fresh samples)"
    )
    p.add_argument(
        "--checkpoint-every", type=int, default=5000, help="steps between checkpoints (0: end only)"
    )
    p.add_argument(
        "--jobs", type=int, default=max(1, os.cpu_count() or 1), help="parallel processes (one run each)"
    )
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--out", type=Path, default=Path("runs/xor"), help="output folder")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the sweep in --out from its checkpoints (only --steps, --checkpoint-every, "
        "--jobs and --device may differ from the saved config.json)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace the previous run in --out instead of refusing"
    )
    p.set_defaults(func=main, data_parallel=True)


#: settings that may change when a sweep is resumed (recorded in config.json under "resumes")
RESUMABLE = ("steps", "checkpoint_every", "jobs", "device", "world_size")


def _check_args(args: argparse.Namespace) -> tuple[int, list[int]]:
    """Validate every flag (before anything is written); returns the steps and seeds to run."""
    steps = args.steps if args.steps is not None else QUICK_STEPS if args.quick else FULL_STEPS
    seeds = args.seeds if args.seeds is not None else list(QUICK_SEEDS) if args.quick else [0]
    bad_k = [k for k in args.k if not 0 <= k <= INPUTS]
    if bad_k:
        raise InputError(f"--k={bad_k} is not accepted; each k must be in 0..{INPUTS}")
    for name, values in (("--k", args.k), ("--seeds", seeds)):
        if len(set(values)) != len(values):
            raise InputError(f"{name}={','.join(map(str, values))} is not accepted: it repeats an entry")
    if any(s < 0 for s in seeds):
        raise InputError(f"--seeds={','.join(map(str, seeds))} is not accepted; seeds must be >= 0")
    for name, value in (
        ("steps", steps),
        ("batch_size", args.batch_size),
        ("eval_every", args.eval_every),
        ("jobs", args.jobs),
    ):
        if value < 1:
            raise InputError(f"--{name.replace('_', '-')}={value} is not accepted; expected an integer >= 1")
    if args.checkpoint_every < 0:
        raise InputError(
            f"--checkpoint-every={args.checkpoint_every} is not accepted; expected an integer >= 0"
        )
    for name in ("w_l2", "gamma_l2"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value >= 0):
            raise InputError(
                f"--{name.replace('_', '-')}={value} is not accepted; expected a finite number >= 0"
            )
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise InputError(f"--lr={args.lr} is not accepted; expected a finite number > 0")
    if not math.isfinite(args.w0):
        raise InputError(f"--w0={args.w0} is not accepted; expected a finite number")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise InputError(f"--device={args.device!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device={args.device!r} is not accepted: CUDA is not available here; use cpu")
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"--device={args.device!r} is not accepted; use cpu or cuda")
    return steps, seeds


def main(args: argparse.Namespace) -> int:
    """Run the sweep described by the parsed ``args``; print the table."""
    steps, seeds = _check_args(args)
    ctx = distributed.setup(args.device)
    device = distributed.local_device(args.device)
    base = XorConfig(
        k=0,
        steps=steps,
        w0=args.w0,
        w_l2=args.w_l2,
        gamma_l2=args.gamma_l2,
        lr=args.lr,
        batch_size=args.batch_size,
        eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every,
        device=args.device,
    )
    jobs = min(args.jobs, len(args.k) * len(seeds))
    if ctx.enabled:
        jobs = 1  # under torchrun every run is data-parallel over the ranks, one run at a time
    config = {**asdict(base), "ks": args.k, "seeds": seeds, "jobs": jobs, "world_size": ctx.world}
    options: dict[str, Any] = dict(
        resume=args.resume,
        overwrite=args.overwrite,
        resumable=RESUMABLE,
        labels={"ks": "--k", "world_size": "the process count (torchrun --nproc-per-node)"},
    )
    open_run(args.out, config, **options)
    base = replace(base, device=device)
    run_sweep(args.k, seeds, base, args.out, jobs=jobs, resume=args.resume, write=ctx.is_main)
    if ctx.is_main:
        print((args.out / "table.md").read_text())
        print(f"results: {args.out / 'summary.json'}; figures: {args.out}/xor_*.png")
    return 0
