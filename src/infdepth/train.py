"""The training loop shared by every experiment.

One optimizer step per batch; a g-infinity layer whose ``w`` passed its built sub-layers
grows in its next ``forward`` (new sub-layers join the *existing* optimizer before its
step), reading ``w`` once per step for that and its penalty; metrics stream to
``metrics.jsonl``; checkpoints are written atomically every ``checkpoint_every``
steps; ``resume=True`` continues from the last checkpoint and ends bitwise equal
(on CPU) to an uninterrupted run.  Data comes from ``batch(step)``, a pure
function of the step, so resuming needs no data-loader state.

Under torchrun the model is wrapped in DistributedDataParallel, each rank trains
on its slice of the global batch, growth is decided from rank 0's ``w`` in
lockstep (the wrapper is rebuilt after a growth) and only rank 0 writes.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from tqdm.auto import tqdm

from infdepth import distributed
from infdepth.checkpoint import (
    CHECKPOINT,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
    window_from,
    window_state,
)
from infdepth.depth.attach import attach
from infdepth.depth.collect import collect_penalties
from infdepth.depth.growth import grow
from infdepth.depth.layer import InfiniteDepth, depth_layers
from infdepth.errors import DivergenceError, InputError, brief
from infdepth.io import append_jsonl, atomic_write_bytes

Batch = tuple[Tensor, Tensor]
BatchFn = Callable[[int], Batch]
LossFn = Callable[[Tensor, Tensor], Tensor]
EvalFn = Callable[[nn.Module, int], dict[str, float]]
StepMetricFn = Callable[[Tensor, Tensor], dict[str, Tensor]]

METRICS = "metrics.jsonl"


@dataclass
class FitConfig:
    """How long to train and how often to evaluate, log and checkpoint.

    ``eval_every`` and ``log_every`` count optimizer steps; metrics are written
    every ``log_every`` steps (averaged over the window) and at every evaluation.
    """

    steps: int
    eval_every: int = 100
    log_every: int = 100
    checkpoint_every: int = 1000
    out_dir: Path | None = None
    resume: bool = False
    progress: bool = True
    desc: str = "train"
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("steps", "eval_every", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InputError(f"{name}={value!r} is not accepted; expected an integer >= 1")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 0:
            raise InputError(
                f"checkpoint_every={self.checkpoint_every!r} is not accepted; "
                "expected an integer >= 0 (0: only at the end)"
            )
        if self.resume and self.out_dir is None:
            raise InputError("resume=True needs out_dir (the run folder holding checkpoint.pt)")


@dataclass
class FitResult:
    """What :func:`fit` returns: the metric history (one record per log/eval point)."""

    history: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    resumed_from: int = 0
    #: wall-clock seconds of the training loop, summed over every resumed part of the run
    seconds: float = 0.0

    def series(self, key: str) -> list[Any]:
        """Values of ``key`` over the records that have it."""
        return [r[key] for r in self.history if key in r]


@runtime_checkable
class HasPenalty(Protocol):
    """A module that adds a term to the training objective: ``penalty() -> Tensor | None``.

    :class:`~infdepth.depth.InfiniteDepth` (l2 on ``w`` and its sub-layers) and
    :class:`~infdepth.ode.ODEBlock` (on its end time) are such modules; a user module
    takes part by defining ``penalty``.
    """

    def penalty(self) -> Tensor | None: ...


def penalty_modules(model: nn.Module) -> list[tuple[str, HasPenalty]]:
    """The outermost submodules of ``model`` (itself included) that have a ``penalty()``.

    A module inside another one that has a penalty is left to it (an
    :class:`~infdepth.depth.InfiniteDepth` layer sums its own sub-layers' terms), so no
    term is counted twice.
    """
    found: list[tuple[str, HasPenalty]] = []

    def visit(prefix: str, module: nn.Module) -> None:
        if callable(getattr(type(module), "penalty", None)):  # a method, not a submodule named so
            found.append((prefix, module))  # type: ignore[arg-type]  # checked on the class
            return
        for name, child in module.named_children():
            visit(f"{prefix}.{name}" if prefix else name, child)

    visit("", model)
    return found


def model_penalty(model: nn.Module, produced: dict[nn.Module, Tensor | None] | None = None) -> Tensor:
    """Sum of ``penalty()`` over :func:`penalty_modules`, for ``loss + model_penalty(model)``.

    ``produced``: the penalties collected during the forward
    (:func:`infdepth.depth.collect.collect_penalties`); a module found there is not asked
    again, which spares a g-infinity layer a second read of ``w``.  A zero tensor (on the
    device and in the dtype of the model's first floating-point parameter or buffer; else
    torch's defaults) when no module adds a term.
    """
    total = _penalty_sum(model, produced)
    if total is not None:
        return total
    tensors = itertools.chain(model.parameters(), model.buffers())
    like = next((t for t in tensors if t.is_floating_point()), None)
    return torch.zeros(()) if like is None else like.new_zeros(())


def _penalty_sum(model: nn.Module, produced: dict[nn.Module, Tensor | None] | None = None) -> Tensor | None:
    """The penalty terms summed; a module's term is taken from ``produced`` (its forward's) when there."""
    produced = {} if produced is None else produced
    terms = [
        t for _, m in penalty_modules(model)
        if (t := produced[m] if m in produced else m.penalty()) is not None  # type: ignore[index]
    ]
    if not terms:
        return None
    return terms[0] if len(terms) == 1 else torch.stack([t.reshape(()) for t in terms]).sum()


class WithPenalty(nn.Module):
    """``x -> (model(x), penalty)``: the penalty is computed inside ``forward``.

    DistributedDataParallel only sees parameters used in its ``forward``; a ``w`` whose
    layer runs no sub-layer (``w <= 0``) is used by the penalty alone, so the penalty
    must be part of the wrapped forward or DDP reports it as used twice.  The modules
    that add a penalty are looked up on every call.  A g-infinity layer produces its
    penalty in its own ``forward``, at the ``w`` it read there
    (:func:`infdepth.depth.collect.collect_penalties`): one host read of ``w`` per layer
    and step; any other module is asked for ``penalty()``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        with collect_penalties() as produced:
            out = self.model(x)
        return out, _penalty_sum(self.model, produced)


def train_step(
    net: nn.Module, optimizer: Optimizer, loss_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor
) -> tuple[Tensor, Tensor, Tensor | None]:
    """One optimizer step of ``net`` (a :class:`WithPenalty`): data loss + penalty, backward, step.

    :func:`fit`'s step (growth aside); returns ``(outputs, data loss, penalty)``.  With
    nothing trainable (every weight frozen) it only evaluates.
    """
    out, penalty = net(x)
    loss = loss_fn(out, y)
    objective = loss if penalty is None else loss + penalty
    optimizer.zero_grad(set_to_none=True)
    if objective.requires_grad:
        objective.backward()
        optimizer.step()
    return out, loss, penalty


def _sync_depths(model: nn.Module) -> None:
    layers = depth_layers(model)
    shared = distributed.all_equal_depths([layer.depth for _, layer in layers])
    with torch.no_grad():
        for (_, layer), w in zip(layers, shared):
            layer.w.fill_(w)


def fit(
    model: nn.Module,
    optimizer: Optimizer,
    batch: BatchFn,
    loss_fn: LossFn,
    config: FitConfig,
    *,
    evaluate: EvalFn | None = None,
    step_metrics: StepMetricFn | None = None,
    scheduler: Any | None = None,
) -> FitResult:
    """Train ``model`` for ``config.steps`` optimizer steps on ``batch(step)``.

    Args:
        model: any module; its g-infinity layers grow in place (through
            :func:`infdepth.depth.grow`), and every submodule with a ``penalty()``
            (:class:`HasPenalty`) adds its term to the objective.
        optimizer: built on ``model.parameters()`` (new sub-layers are added to it).
        batch: ``step -> (inputs, targets)``, the *global* batch of that step;
            must be a pure function of ``step`` for exact resumption.
        loss_fn: ``(outputs, targets) -> scalar`` data loss (the penalty is added here).
        config: steps, cadences, run folder, resume.
        evaluate: ``(model, step) -> {metric: value}``, called in eval mode (on every rank)
            every ``eval_every`` steps and after the last one; ``step`` counts the steps done.
        step_metrics: ``(outputs, targets) -> {metric: scalar tensor}``, averaged per log window.
        scheduler: optional LR scheduler, stepped once per optimizer step.

    Raises:
        DivergenceError: the loss or some ``w`` became NaN or infinite (names the step);
            checkpoints written before stay intact.
    """
    ctx = distributed.current()
    out_dir = config.out_dir
    raw = model
    result = FitResult()
    start = 0
    ckpt_path = Path(out_dir or ".") / CHECKPOINT
    if out_dir is not None and ckpt_path.exists() and not ckpt_path.is_file():  # before any write
        raise InputError(f"checkpoint {ckpt_path} is not a file; move it away (or --overwrite the run)")
    ckpt = load_checkpoint(ckpt_path) if config.resume else None
    device = torch.device(config.device)
    # the log window's running sums: a checkpoint between two log steps carries them, so
    # that a resume there logs the same means as an uninterrupted run
    window, window_steps = window_from(ckpt, device)
    # sub-layers built from now on join the optimizer before its next step or state load
    attachment = attach(raw, optimizer)
    try:
        if ckpt is not None:
            raw.load_state_dict(ckpt["model"])  # builds the sub-layers the checkpoint holds
            optimizer.load_state_dict(ckpt["optimizer"])
        grow(raw, optimizer)  # the sub-layers w needs, built before DDP wraps the model
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
        if ckpt is None:
            raise
        raise InputError(
            f"checkpoint {ckpt_path} does not fit this model or optimizer "
            f"(was it written by another command or with other settings?): {brief(exc)}"
        ) from None
    if ckpt is not None:
        assert out_dir is not None
        if scheduler is not None and ckpt.get("scheduler") is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        try:
            set_rng_state(ckpt["rng"])
        except (RuntimeError, TypeError) as exc:
            raise InputError(f"checkpoint {ckpt_path}: its RNG state cannot be restored ({brief(exc)})") \
                from None
        start = int(ckpt["step"])
        if not 0 <= start <= config.steps:
            raise InputError(f"checkpoint {ckpt_path} is at step {start}, beyond the {config.steps} steps")
        result.history = list(ckpt["history"])
        result.resumed_from = start
        # NaN when the checkpoint predates wall-time keeping: unknown, not zero
        result.seconds = float(ckpt.get("seconds", math.nan))
        try:
            lines = "".join(_json_line(r) for r in result.history)
        except (TypeError, ValueError) as exc:
            raise InputError(f"checkpoint {ckpt_path}: its history is not a list of records "
                             f"({brief(exc)})") from None
        if ctx.is_main:
            atomic_write_bytes(out_dir / METRICS, lines.encode())
    elif out_dir is not None and ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / METRICS).write_text("")
    net = WithPenalty(raw)
    wrapped = ctx.wrap(net)

    earlier_seconds = result.seconds
    started = time.perf_counter()
    bar = tqdm(
        total=config.steps,
        initial=start,
        desc=config.desc,
        disable=not (config.progress and ctx.is_main),
        dynamic_ncols=True,
        leave=False,
    )
    unread = False  # whether w's value after the last update has not been read yet (see below)
    try:
        for step in range(start, config.steps):
            x, y = batch(step)
            x = ctx.shard(x).to(device, non_blocking=True)
            y = ctx.shard(y).to(device, non_blocking=True)
            wrapped.train()
            try:
                out, loss, penalty = train_step(wrapped, optimizer, loss_fn, x, y)
            except DivergenceError as exc:
                if unread:  # the update before made w non-finite (the forward changes no w): name it
                    _raise_if_diverged(raw, step)
                raise DivergenceError(f"at step {step + 1}: {exc}") from exc
            if scheduler is not None:
                scheduler.step()
            done = step + 1
            is_eval = evaluate is not None and (done % config.eval_every == 0 or done == config.steps)
            is_log = done % config.log_every == 0 or done == config.steps or is_eval
            is_checkpoint = out_dir is not None and (
                done == config.steps or bool(config.checkpoint_every and done % config.checkpoint_every == 0)
            )
            unread = not (ctx.enabled or is_log or is_checkpoint)
            if not unread:
                if ctx.enabled:
                    _sync_depths(raw)
                layers = depth_layers(raw)
                ws = {name or "layer": layer.depth for name, layer in layers}
                bad = {k: v for k, v in ws.items() if not math.isfinite(v)}
                if bad:
                    raise DivergenceError(f"at step {done}, w became non-finite: {bad}")
                if grow(raw, optimizer) and ctx.enabled:
                    wrapped = ctx.rewrap(wrapped, net)
            # Otherwise no host read here: the next forward reads w (one read per layer and
            # step), builds the sub-layers it needs, and the attached optimizer takes them
            # before its step.  If that forward finds w non-finite, w still holds this update's
            # value (the forward's error comes before any step), read then to name this step.

            with torch.no_grad():
                window["loss"] = window.get("loss", 0) + loss.detach()
                if penalty is not None:
                    window["penalty"] = window.get("penalty", 0) + penalty.detach()
                if step_metrics is not None:
                    for k, v in step_metrics(out.detach(), y).items():
                        window[k] = window.get(k, 0) + v.detach()
            window_steps += 1
            if is_log:
                record: dict[str, Any] = {"step": done}
                record.update(distributed.mean_over_ranks({k: v / window_steps for k, v in window.items()}))
                window, window_steps = {}, 0
                record["w"] = ws
                record["active_blocks"] = {name or "layer": layer.active_blocks for name, layer in layers}
                fixed = [name or "layer" for name, layer in layers if layer.frozen_gates is not None]
                if fixed:  # layers whose depth fix_depth froze: they train as fixed stacks from here
                    record["depth_fixed"] = fixed
                if is_eval:  # on every rank: histories stay identical, so do resumes
                    assert evaluate is not None
                    raw.eval()
                    with torch.no_grad():
                        record.update(evaluate(raw, done))
                _check_finite(record, done)  # before it is written: metrics.jsonl stays valid JSON
                result.history.append(record)
                if out_dir is not None and ctx.is_main:
                    append_jsonl(out_dir / METRICS, record)
                shown = {"loss": f"{record['loss']:.3g}"}
                if ws:  # models without a g-infinity layer have no w to show
                    shown["w"] = " ".join(f"{v:.2f}" for v in ws.values())
                bar.set_postfix(shown)
            bar.update(1)
            if is_checkpoint:
                assert out_dir is not None
                bad_params = [n for n, p in raw.named_parameters() if not bool(torch.isfinite(p).all())]
                if bad_params:  # never replace the last good checkpoint by a broken one
                    raise DivergenceError(f"at step {done}, non-finite values in {bad_params[:5]}")
                result.seconds = earlier_seconds + time.perf_counter() - started
                partial = window_state(window, window_steps)  # on every rank: a collective under DDP
                if ctx.is_main:
                    save_checkpoint(out_dir / CHECKPOINT, raw, optimizer, scheduler, done, result.history,
                                    result.seconds, partial)
                ctx.barrier()
    finally:
        bar.close()
        attachment.remove()
    result.seconds = earlier_seconds + time.perf_counter() - started
    result.steps = config.steps
    return result


def _raise_if_diverged(model: nn.Module, step: int) -> None:
    """Raise "w became non-finite at step ``step``" if a layer's ``w`` (as that update left it) says so.

    The layers are those :func:`penalty_modules` finds (no walk into sub-layers); for a layer
    nested deeper the forward's own error names the next step.
    """
    bad = {name or "layer": float(m.w.detach()) for name, m in penalty_modules(model)
           if isinstance(m, InfiniteDepth) and not bool(torch.isfinite(m.w))}
    if bad:
        raise DivergenceError(f"at step {step}, w became non-finite: {bad}")


def _json_line(record: dict[str, Any]) -> str:
    import json

    if not isinstance(record, dict):
        raise TypeError(f"a history entry is a {type(record).__name__}, not a record")
    return json.dumps(record, allow_nan=False) + "\n"


def _check_finite(record: dict[str, Any], step: int) -> None:
    """Raise :class:`DivergenceError` naming the first logged value (loss, penalty, metric) not finite."""
    for key, value in record.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise DivergenceError(f"at step {step}, the {key} became {value}")
