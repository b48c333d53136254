"""The study of ``infdepth study``: train every member, time their steps side by side, sum up.

What the study is and its flags: :mod:`infdepth.experiments.depth.study_config` (torch-free,
for ``--help``); ``Config`` is re-exported here.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from infdepth.data.images import ImageData, load_images
from infdepth.experiments._common import RunContext, config_dict, parallel_imap, run_from_args
from infdepth.experiments.depth import images, search, study_speed
from infdepth.experiments.depth.recipes import recipe_settings
from infdepth.experiments.depth.study_config import (  # noqa: F401  (the flags' half, re-exported)
    RESUMABLE,
    Config,
    add_arguments,
    register,
)
from infdepth.experiments.depth.study_report import accuracy, plot, plot_dw, table, verdict
from infdepth.io import read_jsonl, write_json
from infdepth.runfolder import open_run
from infdepth.train import CHECKPOINT

Task = tuple[int, str, dict[str, Any]]  # (seed, "images", "ode" or "search", the member's settings)


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


def _contender(member: images.Config, recipe: str | None) -> str:
    """A CNN member's contender name: its recipe (``paper`` aside) or its label (``learned``, ``fixed2``)."""
    return recipe if recipe and recipe != "paper" else member.label


def _member_name(cfg: Config, task: Task) -> str:
    """The folder of ``task``'s member under the study's ``--out``."""
    seed, kind, settings = task
    if kind == "search":
        return _search_name(seed)
    if kind == "ode":
        return f"odenet{'-t1' if settings['learn_t1'] else ''}-s{seed}"
    return f"{_contender(_images_member(cfg, seed, **settings)[0], settings.get('recipe'))}-s{seed}"


def _schedule(cfg: Config, ctx: RunContext, tasks: list[Task]) -> list[Task]:
    """``tasks`` with the members in flight first (on ``--resume``, by seed), else in their order.

    A member is in flight when it has a checkpoint (a search: any trial's) and no row yet:
    a resumed study finishes what it started before it starts anything new, the earlier
    seeds first, so a study whose seed list grew does not leave a member half trained
    behind the new seed's.
    """
    def in_flight(task: Task) -> bool:
        folder = ctx.out / _member_name(cfg, task)
        return (ctx.resume and not (folder / "study_row.json").is_file()
                and next(folder.rglob(CHECKPOINT), None) is not None)

    return sorted(tasks, key=lambda task: (0, task[0]) if in_flight(task) else (1, 0))  # stable


def _images_row(cfg: Config, ctx: RunContext, seed: int, data: ImageData, **depth: Any) -> dict[str, Any]:
    member, argv = _images_member(cfg, seed, **depth)
    recipe = depth.get("recipe")
    contender = _contender(member, recipe)
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

    name = _member_name(cfg, (seed, "ode", {"learn_t1": learn_t1}))
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


def _rounded(cfg: Config, ctx: RunContext, seed: int, done: dict[str, dict[str, Any]]) -> list[Task]:
    """The learned run's final depths rounded per layer, unless one of the fixed depths is that."""
    learned = done.get(_task_key((seed, "images", {}))) or _finished(ctx, f"learned-s{seed}")
    if not cfg.rounded or learned is None:
        return []
    depths = tuple(max(0, round(w)) for w in learned["final_w"].values())
    if depths in {(k, k, k) for k in cfg.fixed_depths}:
        return []
    return [(seed, "images", {"layer_depths": depths})]


def tasks_of(cfg: Config, ctx: RunContext) -> list[Task]:
    """The study's members before the schedule: learned runs first; the fixed depths deepest
    first (the longest jobs first keeps a pool of ``--jobs`` busy to the end); the rounded
    depths at once when their learned run has finished before (on ``--resume``, else they
    follow it); the recipes after the fixed depths they are judged against; one task per
    search worker."""
    tasks: list[Task] = [(seed, "images", {}) for seed in cfg.seeds]
    for seed in cfg.seeds:
        tasks += _rounded(cfg, ctx, seed, {})
        tasks += [(seed, "images", {"fixed_depth": k}) for k in sorted(cfg.fixed_depths, reverse=True)]
        if cfg.ode:
            tasks += [(seed, "ode", {"learn_t1": True}), (seed, "ode", {"learn_t1": False})]
    tasks += [(seed, "images", {"recipe": r}) for r in cfg.recipes for seed in cfg.seeds if r != "paper"]
    if cfg.search:
        workers = 1 if ctx.dist.enabled else cfg.jobs
        tasks += [(seed, "search", {"worker": k}) for seed in cfg.seeds for k in range(workers)]
    return tasks


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
        return _rounded(cfg, ctx, seed, done)

    if cfg.search:  # created (and a killed worker's trial queued again) here, before any worker starts
        for seed in cfg.seeds:
            if _finished(ctx, _search_name(seed)) is None and ctx.is_main:
                _open_search(cfg, ctx, seed, resume=ctx.resume)
    tasks = _schedule(cfg, ctx, tasks_of(cfg, ctx))
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


def main(args: argparse.Namespace) -> int:
    """Run the study of the parsed ``args``; print its table (``--status``: where it stands)."""
    if args.status:
        from infdepth.experiments.depth import study_status

        print(study_status.table(study_status.status(Path(args.out))))
        return 0
    summary, ctx = run_from_args(Config, run, args)
    ctx.say(table(summary["rows"]))
    ctx.say(json.dumps(summary["verdict"], indent=1))
    ctx.say(f"results: {ctx.out / 'summary.json'}; figure: {ctx.out / 'study.png'}")
    return 0
