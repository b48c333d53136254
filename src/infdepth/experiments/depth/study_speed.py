"""The compute of every study member, from training steps timed side by side.

The members of a study train one after the other, hours apart, beside whatever else the
machine runs: their wall times are not comparable.  So the study times one training step
of every contender *interleaved* (round robin, median of ``rounds``; a change of load hits
all alike) on real training images, and charges each member

    compute = sum over its epochs of (training images / images per second of the
              network it trained in that epoch)

- a fixed-depth CNN trains one network all along;
- the learned CNN trains the network of its active sub-layers ``ceil(w)`` per layer, read
  epoch by epoch from its ``metrics.jsonl``, so a run that grows pays for the depth it had;
  a learn-then-fix recipe pays for its stack with frozen gates after the fix;
- an ODE-Net's cost follows its number of function evaluations, which adapts as it trains:
  its step is timed with the weights (and ``t1``) of its last checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from infdepth.data.images import ImageData
from infdepth.depth.growth import grow
from infdepth.depth.layer import depth_layers
from infdepth.experiments.depth import images
from infdepth.models.going_deeper import LAYERS
from infdepth.train import CHECKPOINT, WithPenalty, load_checkpoint, train_step

Depths = tuple[int, ...]


def time_steps(steps: Mapping[str, Callable[[], object]], rounds: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of one call of each step; the steps run interleaved, round robin."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


def training_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor
) -> Callable[[], None]:
    """One step as :func:`infdepth.train.fit` takes it: its ``train_step``, then the growth check."""
    net = WithPenalty(model)

    def step() -> None:
        train_step(net, optimizer, F.cross_entropy, x, y)
        grow(model, optimizer)

    return step


def _frozen_lr(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    # a learning rate of zero keeps w (so the depth) and t1 (so the NFE) where they are
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    return optimizer


def cnn_step(base: images.Config, data: ImageData, depths: Depths, *, learned: bool,
             frozen: bool = False) -> Callable[[], None]:
    """A training step of the study CNN with ``depths`` sub-layers per layer (gated if ``learned``;
    with the gates frozen by ``fix_depth`` as well if ``frozen``: learn-then-fix after the fix)."""
    if learned:
        cfg = replace(base, fixed_depth=None, layer_depths=None)
        model = images.build_model(cfg, data.image_shape, data.classes)
        with torch.no_grad():  # w just below the depth: ceil(w) sub-layers run
            for (_, layer), k in zip(depth_layers(model), depths):
                layer.w.fill_(k - 0.5)
        if frozen:  # threshold 0 keeps all ceil(w) = k sub-layers (the last gate is 1 - exp(-0.5))
            for _, layer in depth_layers(model):
                layer.fix_depth(threshold=0.0)
    else:
        cfg = replace(base, fixed_depth=None, layer_depths=tuple(depths))
        model = images.build_model(cfg, data.image_shape, data.classes)
    model.train()
    optimizer = _frozen_lr(images.make_optimizer(cfg, model))
    grow(model, optimizer)
    batch = cfg.batch_size or 512
    x, y = data.x_train[:batch].to(cfg.device), data.y_train[:batch].to(cfg.device)
    return training_step(model, optimizer, x, y)


def ode_step(member: Path, config: Any, data: ImageData) -> Callable[[], None]:
    """A training step of the ODE-Net of ``member`` (an ``ode params`` run) at its last checkpoint."""
    from infdepth.experiments.ode import params

    model = params.build_model("odenet", config, data.image_shape, data.classes).to(config.device)
    model.load_state_dict(load_checkpoint(member / "odenet" / CHECKPOINT)["model"])
    model.train()
    optimizer = _frozen_lr(torch.optim.Adam(model.parameters(), lr=config.lr))
    x, y = data.x_train[: config.batch], data.y_train[: config.batch]
    return training_step(model, optimizer, x.to(config.device), y.to(config.device))


def depth_per_epoch(metrics: Path) -> dict[int, Depths]:
    """The active depth (``ceil(w)`` per layer) each epoch of a gated member ended with."""
    by_epoch: dict[int, Depths] = {}
    for line in metrics.read_text().splitlines():
        record = json.loads(line)
        if "epoch" in record and record.get("active_blocks"):  # a resumed epoch: its last record
            by_epoch[round(record["epoch"])] = tuple(int(record["active_blocks"][n]) for n in LAYERS)
    return by_epoch


def epochs_at_depth(metrics: Path) -> dict[Depths, int]:
    """Epochs the learned member spent at each active depth (``ceil(w)`` per layer, at the epoch's end)."""
    counts: dict[Depths, int] = {}
    for depths in depth_per_epoch(metrics).values():
        counts[depths] = counts.get(depths, 0) + 1
    return counts


def epochs_per_network(member: Path) -> dict[str, int]:
    """Epochs a gated member trained on each network, keyed as :func:`measure` times them.

    An epoch counts at the active depth it ended with; a learn-then-fix member
    (``fix_depth_at`` in its ``config.json``) trains a stack with frozen gates after its fix,
    charged as such (``frozen:``) from the first epoch that starts after the fix (the epoch
    the fix falls in counts as gated).
    """
    saved = json.loads((member / "config.json").read_text())
    fix = saved.get("fix_depth_at")
    fixed_after = math.inf if fix is None else math.ceil(fix * int(saved["epochs"]))
    counts: dict[str, int] = {}
    for epoch, depths in depth_per_epoch(member / "metrics.jsonl").items():
        key = _key("frozen" if epoch > fixed_after else "learned", depths)
        counts[key] = counts.get(key, 0) + 1
    return counts


def fixed_depths(config: Path) -> Depths:
    """The sub-layers per layer of a fixed-depth member, from its ``config.json``."""
    saved = json.loads(config.read_text())
    if saved.get("layer_depths") is not None:
        return tuple(int(k) for k in saved["layer_depths"])
    return (int(saved["fixed_depth"]),) * len(LAYERS)


def _key(kind: str, depths: Depths) -> str:
    return f"{kind}:" + "-".join(map(str, depths))


def _parse_key(key: str) -> tuple[str, Depths]:
    kind, depths = key.split(":")
    return kind, tuple(int(k) for k in depths.split("-"))


def measure(
    rows: list[dict[str, Any]],
    out: Path,
    base: images.Config,
    ode_config: Callable[[dict[str, Any]], Any],
    data: ImageData,
    rounds: int,
) -> dict[str, Any]:
    """Time every network the members trained, side by side; add ``compute_seconds`` to each row.

    Args:
        rows: the study's rows (changed in place: ``compute_seconds`` and
            ``step_images_per_second`` are added).
        out: the study folder (the members' folders are below it).
        base: the images configuration of the CNN members (depth aside).
        ode_config: ``row -> ode params Config`` of an ODE member.
        data: the study's data set (steps take its first training images).
        rounds: timed rounds per network (the median is used).

    Returns:
        ``{"rounds", "load_start", "load_end", "images_per_second": {network: rate}}``.
    """
    steps: dict[str, Callable[[], None]] = {}
    batch: dict[str, int] = {}
    plan: dict[str, dict[str, int]] = {}  # member -> {network: epochs}
    for r in rows:
        if r["kind"] == "ODE-Net":
            key = f"ode:{r['member']}"
            cfg = ode_config(r)
            steps[key], batch[key] = ode_step(out / r["member"], cfg, data), cfg.batch
            plan[r["member"]] = {key: int(r["epochs"])}
            continue
        learned = r["contender"] == "learned" or r.get("recipe") is not None  # a gated CNN
        if r["kind"] == "search":  # every epoch it trained, pruned depths included
            counts = {_key("fixed", (int(k),) * len(LAYERS)): int(e) for k, e in r["search_epochs"].items()}
        elif learned:
            counts = epochs_per_network(out / r["member"])
        else:
            counts = {_key("fixed", fixed_depths(out / r["member"] / "config.json")): int(r["epochs"])}
        plan[r["member"]] = counts
        for key in counts:
            if key not in steps:
                kind, depths = _parse_key(key)
                steps[key] = cnn_step(base, data, depths, learned=kind != "fixed", frozen=kind == "frozen")
                batch[key] = base.batch_size or 512
    load_start = os.getloadavg()[0]
    seconds = time_steps(steps, rounds)
    rates = {key: batch[key] / s for key, s in seconds.items()}
    n_train = int(data.x_train.shape[0])
    for r in rows:
        cost = plan[r["member"]]
        r["compute_seconds"] = sum(epochs * n_train / rates[key] for key, epochs in cost.items())
        spent = sum(cost.values())
        r["step_images_per_second"] = spent * n_train / r["compute_seconds"] if spent else math.nan
    return {"rounds": rounds, "load_start": load_start, "load_end": os.getloadavg()[0],
            "images_per_second": rates}
