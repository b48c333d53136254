"""Does learned depth pay off?  Learned, fixed and continuous depth side by side, one command.

Every contender trains on the same data set for the same epoch budget, each in its own
run folder under ``--out``, one after the other; ``--resume`` continues the study where
it stopped (finished members are read back, an interrupted one resumes from its last
checkpoint).  Contenders, for every seed:

- ``learned``: the all-g-infinity CNN (``infdepth images``), the paper's optimizer settings;
- ``fixedK`` for every K of ``--fixed-depths``: the same CNN with K always-on residual
  blocks per layer and no gate (K = 0: the g-inf layers switched off, nothing trains);
- ``fixedA-B-C``: the same CNN at the learned run's final depths rounded per layer
  (``--rounded``);
- ``odenet-t1`` and ``odenet`` (``--ode``): the ODE-Net of ``infdepth ode params`` with a
  learnable end time t1 (continuous learned depth) and with t1 fixed.

``summary.json`` holds one row per member (accuracy with and without precise BN,
parameters used, wall time, depths, the command that reproduces it) and each member's
compute, from one training step of every contender timed side by side when the members
are done (:mod:`infdepth.experiments.depth.study_speed`; ``--speed-rounds``), since the
members' wall times are taken hours apart under different loads.  ``table.md`` and
``study.png`` (test accuracy against compute) sum it up; the verdict compares the learned
run with the best fixed depth and with the whole sweep's compute.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from infdepth.data.images import DATASETS, ImageData, load_images
from infdepth.errors import check_choice, check_device, check_int, check_items
from infdepth.experiments._common import (
    RunContext,
    add_config_arguments,
    add_run_arguments,
    config_dict,
    int_list,
    option,
    parallel_imap,
    run_from_args,
    str_list,
)
from infdepth.experiments.depth import images, search, study_speed
from infdepth.experiments.depth.recipes import RECIPES, recipe_settings
from infdepth.experiments.depth.study_report import accuracy, plot, plot_dw, table, verdict
from infdepth.io import read_jsonl, write_json
from infdepth.runfolder import open_run
from infdepth.train import CHECKPOINT

#: the member set may grow on resume (each member checks its own settings); the budget and data may not
RESUMABLE = ("seeds", "fixed_depths", "rounded", "ode", "device", "world_size", "speed_rounds", "jobs",
             "recipes", "search", "storage")


@dataclass(frozen=True)
class Config:
    """The study (the only place its defaults are written)."""

    dataset: str = option("fashion-mnist", f"data set: one of {', '.join(DATASETS)}")
    data_dir: str | None = option(None, "folder with the four MNIST-format IDX files "
                                  "(default: the data set's standard place)", type=str)
    epochs: int = option(30, "the epoch budget of every contender")
    seeds: tuple[int, ...] = option((0,), "comma-separated seeds; every contender runs once per seed",
                                    type=int_list)
    fixed_depths: tuple[int, ...] = option((0, 1, 2, 3, 5), "comma-separated fixed depths (blocks per "
                                           "layer) of the no-gate baseline", type=int_list)
    rounded: bool = option(False, "also train the CNN at each learned run's final depths rounded per layer")
    ode: bool = option(False, "also train the ODE-Net of `ode params`, with a learnable and a fixed t1")
    recipes: tuple[str, ...] = option((), "comma-separated learned-depth recipes trained beside the "
                                      f"paper's (`learned`): {', '.join(r for r in RECIPES if r != 'paper')}",
                                      type=str_list)
    search: bool = option(False, "also run the successive-halving search over --fixed-depths (Optuna; "
                          "one worker per --jobs)")
    storage: str | None = option(None, "Optuna storage URL of the search, shared by workers on several "
                                 "machines (default: an SQLite file in each search folder)", type=str)
    channels: int | None = option(None, "feature maps of the CNNs' first conv stage (default: the "
                                  "paper's 30; fewer for a cheaper proxy study)", type=int)
    dense_units: int | None = option(None, "units of the CNNs' dense stage (default: the paper's 256)",
                                     type=int)
    batch_size: int | None = option(None, "images per step of the CNNs (default: the paper's 512)", type=int)
    dw_probe: int = option(0, "learned members log the parts of dL/dw per layer at every epoch, on this "
                           "many training images (0: off)")
    device: str = option("cpu", "torch device, e.g. cpu or cuda")
    jobs: int = option(1, "members trained at once, each in its own process with one torch thread "
                       "(one process under torchrun)")
    speed_rounds: int = option(5, "timed rounds of the side-by-side step timing that gives every member's "
                               "compute (median; 0 skips it and the verdict falls back to wall time)")

    def __post_init__(self) -> None:
        check_choice("--dataset", self.dataset, DATASETS)
        check_int("--epochs", self.epochs, low=1)
        object.__setattr__(self, "seeds", tuple(self.seeds))
        object.__setattr__(self, "fixed_depths", tuple(self.fixed_depths))
        check_items("--seeds", self.seeds, lambda n, v: check_int(n, v, low=0))
        check_items("--fixed-depths", self.fixed_depths, lambda n, v: check_int(n, v, low=0, high=1000))
        object.__setattr__(self, "recipes", tuple(self.recipes))
        for recipe in self.recipes:
            check_choice("--recipes", recipe, tuple(RECIPES))
        if self.channels is not None:
            check_int("--channels", self.channels, low=1, high=4096)
        if self.dense_units is not None:
            check_int("--dense-units", self.dense_units, low=1, high=65536)
        if self.batch_size is not None:
            check_int("--batch-size", self.batch_size, low=1, high=2**24)
        check_int("--dw-probe", self.dw_probe, low=0, high=10**6)
        check_device("--device", self.device)
        check_int("--jobs", self.jobs, low=1, high=1024)
        check_int("--speed-rounds", self.speed_rounds, low=0, high=1000)


def _command(argv: list[str]) -> str:
    return "infdepth " + " ".join(shlex.quote(a) for a in argv)


def _images_member(cfg: Config, seed: int, recipe: str | None = None,
                   **depth: Any) -> tuple[images.Config, list[str]]:
    """The images configuration of a CNN member (``recipe`` for a learned one) and its command line."""
    shape = {k: v for k in ("channels", "dense_units", "batch_size") if (v := getattr(cfg, k)) is not None}
    learned = not depth or all(v is None for v in depth.values())
    settings = {**shape, **(recipe_settings(recipe) if recipe else {}),
                **({"dw_probe": cfg.dw_probe} if learned and cfg.dw_probe else {})}
    member = images.Config(dataset=cfg.dataset, data_dir=cfg.data_dir, epochs=cfg.epochs, seed=seed,
                           device=cfg.device, **settings, **depth)
    argv = ["images", "--dataset", cfg.dataset, "--epochs", str(cfg.epochs), "--seed", str(seed)]
    if cfg.data_dir:
        argv += ["--data-dir", cfg.data_dir]
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    if member.fixed_depth is not None:
        argv += ["--fixed-depth", str(member.fixed_depth)]
    if member.layer_depths is not None:
        argv += ["--layer-depths", ",".join(map(str, member.layer_depths))]
    return member, argv


def _member_ctx(ctx: RunContext, name: str, checkpoint: str = CHECKPOINT) -> RunContext:
    folder = ctx.out / name
    again = ctx.resume and (folder / checkpoint).is_file()
    # a member that had not reached its first checkpoint starts again from scratch
    return RunContext(out=folder, resume=again, overwrite=ctx.resume and not again, progress=ctx.progress,
                      dist=ctx.dist)


def _finished(ctx: RunContext, name: str) -> dict[str, Any] | None:
    """The row of a member that already finished (its summary.json), read back on ``--resume``."""
    path = ctx.out / name / "study_row.json"
    if ctx.resume and path.is_file():
        row: dict[str, Any] = json.loads(path.read_text())
        return row
    return None


def _images_row(cfg: Config, ctx: RunContext, seed: int, data: ImageData, **depth: Any) -> dict[str, Any]:
    member, argv = _images_member(cfg, seed, **depth)
    recipe = depth.get("recipe")
    contender = recipe if recipe and recipe != "paper" else member.label
    name = f"{contender}-s{seed}"
    done = _finished(ctx, name)
    if done is not None:
        return done
    res = images.run_images(member, _member_ctx(ctx, name), data=data)
    row = {"member": name, "contender": contender, "seed": seed, "kind": "g-inf CNN", **asdict(res),
           "recipe": recipe or ("paper" if member.depth is None else None),
           "command": _command([*argv, "--out", str(ctx.out / name)])}
    if ctx.is_main:
        write_json(ctx.out / name / "study_row.json", row)
    return row


def _ode_config(cfg: Config, seed: int, learn_t1: bool) -> Any:
    from infdepth.experiments.ode import params

    return params.Config(dataset=cfg.dataset, data_dir=cfg.data_dir, models=("odenet",), epochs=cfg.epochs,
                         seed=seed, device=cfg.device, learn_t1=learn_t1)


def _ode_row(cfg: Config, ctx: RunContext, seed: int, learn_t1: bool) -> dict[str, Any]:
    from infdepth.experiments.ode import params

    name = f"odenet{'-t1' if learn_t1 else ''}-s{seed}"
    done = _finished(ctx, name)
    if done is not None:
        return done
    member = _ode_config(cfg, seed, learn_t1)
    summary = params.run(member, _member_ctx(ctx, name, checkpoint=f"odenet/{CHECKPOINT}"))
    model = summary["models"]["odenet"]
    argv = ["ode", "params", "--dataset", cfg.dataset, "--models", "odenet", "--epochs", str(cfg.epochs),
            "--seed", str(seed), *(["--learn-t1"] if learn_t1 else []), "--out", str(ctx.out / name)]
    row = {"member": name, "contender": "odenet-t1" if learn_t1 else "odenet", "seed": seed,
           "kind": "ODE-Net", "epochs": cfg.epochs, "final_test_acc": model["test_acc"],
           "final_test_acc_precise_bn": None, "used_parameters": model["params"],
           "seconds": model.get("seconds", math.nan), "t1": model.get("t1"),
           "images_per_second": model.get("images_per_second", math.nan), "command": _command(argv)}
    if ctx.is_main:
        write_json(ctx.out / name / "study_row.json", row)
    return row


def _search_name(seed: int) -> str:
    return f"search-sha-s{seed}"


def _open_search(cfg: Config, ctx: RunContext, seed: int, *, resume: bool = False) -> Any:
    folder = ctx.out / _search_name(seed)
    folder.mkdir(parents=True, exist_ok=True)
    storage = cfg.storage or search.default_storage(folder)
    return search.open_search(storage, cfg.fixed_depths, resume=resume, name=f"depth-search-s{seed}")


def _search_worker(cfg: Config, ctx: RunContext, seed: int, data: ImageData, worker: int) -> dict[str, Any]:
    """One worker of the seed's search: trains queued depths until none is left."""
    name = _search_name(seed)
    done = _finished(ctx, name)
    if done is not None:
        return done
    member = _images_member(cfg, seed, fixed_depth=0)[0]
    ran = search.work(_open_search(cfg, ctx, seed), member, ctx.out / name, data)
    return {"member": name, "search_worker": worker, "ran": ran}


def _search_row(cfg: Config, ctx: RunContext, seed: int) -> dict[str, Any]:
    """The seed's search row, once every worker has finished (written as its ``study_row.json``)."""
    name = _search_name(seed)
    done = _finished(ctx, name)
    if done is not None:
        return done
    result = search.summary_row(_open_search(cfg, ctx, seed), ctx.out / name)
    best = json.loads((Path(result["best_folder"]) / "summary.json").read_text())["result"]
    argv = ["study", "--dataset", cfg.dataset, "--epochs", str(cfg.epochs), "--seeds", str(seed),
            "--fixed-depths", ",".join(map(str, cfg.fixed_depths)), "--search"]
    row = {"member": name, "contender": "search-sha", "seed": seed, "kind": "search", "epochs": cfg.epochs,
           **result, "final_test_acc": best["final_test_acc"], "used_parameters": best["used_parameters"],
           "seconds": best["seconds"], "command": _command(argv)}
    if ctx.is_main:
        write_json(ctx.out / name / "study_row.json", row)
    return row


Task = tuple[int, str, dict[str, Any]]  # (seed, "images", "ode" or "search", the member's settings)


def _task_key(task: Task) -> str:
    return json.dumps(task, sort_keys=True, default=list)


def _row(cfg: Config, ctx: RunContext, task: Task, data: ImageData) -> dict[str, Any]:
    seed, kind, settings = task
    if kind == "ode":
        return _ode_row(cfg, ctx, seed, **settings)
    if kind == "search":
        return _search_worker(cfg, ctx, seed, data, **settings)
    return _images_row(cfg, ctx, seed, data, **settings)


def _train_member(job: tuple[int, Config, str, bool, Task]) -> tuple[int, dict[str, Any]]:
    """One member in a worker process of ``--jobs``: its own data copy, one torch thread, no bars."""
    index, cfg, out, resume, task = job
    torch.set_num_threads(1)
    ctx = RunContext(out=Path(out), resume=resume, progress=False)
    return index, _row(cfg, ctx, task, load_images(cfg.dataset, cfg.data_dir))


def _train(cfg: Config, ctx: RunContext, tasks: list[Task], data: ImageData) -> list[dict[str, Any]]:
    """The rows of ``tasks``, in order: one after the other here, or ``--jobs`` at a time."""
    jobs = 1 if ctx.dist.enabled else min(cfg.jobs, len(tasks))
    if jobs <= 1:
        return [_row(cfg, ctx, task, data) for task in tasks]
    rows: dict[int, dict[str, Any]] = {}
    work = [(i, cfg, str(ctx.out), ctx.resume, task) for i, task in enumerate(tasks)]
    with tqdm(total=len(tasks), desc="study members", disable=not ctx.progress, dynamic_ncols=True) as bar:
        for i, row in parallel_imap(_train_member, work, jobs):
            rows[i] = row
            bar.update(1)
            # one line per member as it finishes (the workers print nothing)
            if "search_worker" in row:
                bar.write(f"{row['member']} worker {row['search_worker']} finished: trials {row['ran']}")
            else:
                bar.write(f"{row['member']} finished: test accuracy {accuracy(row):.4f}")
    return [rows[i] for i in range(len(tasks))]


def run(cfg: Config, ctx: RunContext, *, data: ImageData | None = None) -> dict[str, Any]:
    """Train every contender of ``cfg``; write ``summary.json``, ``table.md`` and ``study.png``.

    Members train one after the other, or ``cfg.jobs`` at a time in worker processes; the
    rounded depths (``--rounded``) wait for their learned run.  The rows come in one order
    whatever the schedule: per seed, learned, the fixed depths, rounded, the ODE-Nets.
    """
    config = {**config_dict(cfg), "world_size": ctx.dist.world}
    open_run(ctx.out, config, resume=ctx.resume, overwrite=ctx.overwrite, resumable=RESUMABLE)
    data = load_images(cfg.dataset, cfg.data_dir) if data is None else data
    done: dict[str, dict[str, Any]] = {}

    def rounded(seed: int) -> list[Task]:
        """The learned run's final depths rounded per layer, unless one of the fixed depths is that."""
        learned = done.get(_task_key((seed, "images", {}))) or _finished(ctx, f"learned-s{seed}")
        if not cfg.rounded or learned is None:
            return []
        depths = tuple(max(0, round(w)) for w in learned["final_w"].values())
        if depths in {(k, k, k) for k in cfg.fixed_depths}:
            return []
        return [(seed, "images", {"layer_depths": depths})]

    # learned runs first; the fixed depths deepest first (the longest jobs first keeps a pool of
    # --jobs busy to the end); the rounded depths at once when their learned run has finished
    # before (on --resume), else after it
    tasks: list[Task] = [(seed, "images", {}) for seed in cfg.seeds]
    for seed in cfg.seeds:
        tasks += rounded(seed)
        tasks += [(seed, "images", {"fixed_depth": k}) for k in sorted(cfg.fixed_depths, reverse=True)]
        if cfg.ode:
            tasks += [(seed, "ode", {"learn_t1": True}), (seed, "ode", {"learn_t1": False})]
    # the recipes last: the fixed depths they are judged against come first
    tasks += [(seed, "images", {"recipe": r}) for r in cfg.recipes for seed in cfg.seeds if r != "paper"]
    if cfg.search:  # created (and a killed worker's trial queued again) here, before any worker starts
        for seed in cfg.seeds:
            if _finished(ctx, _search_name(seed)) is None and ctx.is_main:
                _open_search(cfg, ctx, seed, resume=ctx.resume)
        workers = 1 if ctx.dist.enabled else cfg.jobs
        tasks += [(seed, "search", {"worker": k}) for seed in cfg.seeds for k in range(workers)]
    done.update(zip(map(_task_key, tasks), _train(cfg, ctx, tasks, data)))
    later = [t for seed in cfg.seeds for t in rounded(seed) if _task_key(t) not in done]
    done.update(zip(map(_task_key, later), _train(cfg, ctx, later, data)))
    order: list[Task] = []  # per seed: learned, fixed depths (as given), rounded, ODE-Nets
    for seed in cfg.seeds:
        order.append((seed, "images", {}))
        order += [(seed, "images", {"recipe": r}) for r in cfg.recipes if r != "paper"]
        order += [(seed, "images", {"fixed_depth": k}) for k in cfg.fixed_depths]
        order += rounded(seed)
        order += [t for t in tasks if t[0] == seed and t[1] == "ode"]
    rows = [done[_task_key(t)] for t in order]
    if cfg.search:
        rows += [_search_row(cfg, ctx, seed) for seed in cfg.seeds]
    speed = None
    if cfg.speed_rounds and ctx.is_main:
        speed = study_speed.measure(
            rows, ctx.out, _images_member(cfg, cfg.seeds[0])[0],
            lambda r: _ode_config(cfg, r["seed"], r["contender"] == "odenet-t1"), data, cfg.speed_rounds)
    summary = {"config": config, "rows": rows, "speed": speed, "verdict": verdict(rows)}
    if ctx.is_main:
        write_json(ctx.out / "summary.json", summary)
        (ctx.out / "table.md").write_text(table(rows))
        plot(ctx.out / "study.png", rows)
        gated = [r["member"] for r in rows if r.get("recipe")]
        plot_dw(ctx.out / "dw.png", {m: read_jsonl(ctx.out / m / "metrics.jsonl") for m in gated})
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``infdepth study``, derived from :class:`Config`."""
    add_config_arguments(parser, Config)
    add_run_arguments(parser, "runs/study", resumable=True)


def register(sub: Any) -> None:
    """Add the ``study`` subcommand."""
    p = sub.add_parser("study", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="learned, fixed and continuous depth side by side on one data set (resumable)")
    add_arguments(p)
    p.set_defaults(func=main, data_parallel=True)


def main(args: argparse.Namespace) -> int:
    """Run the study of the parsed ``args``; print its table."""
    summary, ctx = run_from_args(Config, run, args)
    ctx.say(table(summary["rows"]))
    ctx.say(json.dumps(summary["verdict"], indent=1))
    ctx.say(f"results: {ctx.out / 'summary.json'}; figure: {ctx.out / 'study.png'}")
    return 0
