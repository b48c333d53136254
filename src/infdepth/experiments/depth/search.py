"""The search a user would run instead of learning the depth: successive halving over fixed depths.

One Optuna study per seed, with every fixed depth of the study enqueued once as a trial
and Optuna's :class:`~optuna.pruners.SuccessiveHalvingPruner` (rungs at 1, 3, 9, ...
epochs) stopping the depths that fall behind.  A trial trains the fixed-depth CNN of
``infdepth images`` epoch by epoch (each epoch resumes the trial's run folder, bitwise
as an uninterrupted run) and reports its precise-BN test accuracy after every epoch, the
number the study judges every member by.

Workers share the search through Optuna's storage: by default an SQLite file inside the
member's folder; any Optuna storage URL (e.g. PostgreSQL) lets workers on several
machines take trials of one search.  A trial is popped from the storage's queue
atomically, so no depth is trained twice and none is lost; a trial left running by a
killed worker is put back in the queue by ``--resume``.

The search's row charges the epochs it trained at each depth (pruned trials included) at
the same side-by-side step timing as every other member.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infdepth.data.images import ImageData
from infdepth.errors import InputError
from infdepth.experiments._common import RunContext
from infdepth.experiments.depth import images
from infdepth.io import write_json
from infdepth.train import CHECKPOINT

if TYPE_CHECKING:  # optuna is an optional extra, imported when a search runs
    import optuna

#: the successive-halving settings: rungs at min_resource * reduction_factor ** k epochs
MIN_RESOURCE = 1
REDUCTION_FACTOR = 3
STUDY_NAME = "depth-search"


def _optuna() -> Any:
    try:
        import optuna
    except ImportError as exc:
        raise InputError("the successive-halving search needs Optuna: "
                         "pip install 'infdepth[search]'") from exc
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def default_storage(folder: Path) -> str:
    """The SQLite storage URL inside ``folder`` (the search member's run folder)."""
    return f"sqlite:///{(folder / 'search.db').resolve()}"


def open_search(
    storage: str, depths: tuple[int, ...], *, resume: bool, name: str = STUDY_NAME
) -> optuna.Study:
    """The search study in ``storage``; created with one queued trial per depth if new.

    On ``resume`` a trial left running by a killed worker is marked failed and its depth
    queued again.  A study of other depths is refused.
    """
    optuna = _optuna()
    engine = {"connect_args": {"timeout": 120}} if storage.startswith("sqlite") else None
    rdb = optuna.storages.RDBStorage(storage, engine_kwargs=engine)
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=MIN_RESOURCE,
                                                    reduction_factor=REDUCTION_FACTOR)
    study = optuna.create_study(storage=rdb, study_name=name, direction="maximize", pruner=pruner,
                                load_if_exists=True)
    saved = study.user_attrs.get("depths")
    if saved is None:
        study.set_user_attr("depths", list(depths))
        for depth in depths:
            study.enqueue_trial({"depth": depth})
    elif tuple(saved) != tuple(depths):
        raise InputError(f"the search in {storage} is over depths {saved}, not {list(depths)}")
    if resume:  # a killed worker's trial failed; its depth goes back in the queue
        state = optuna.trial.TrialState
        for trial in study.get_trials(deepcopy=False, states=(state.RUNNING,)):
            study.tell(trial.number, state=state.FAIL)
        latest: dict[int, Any] = {}  # each depth's last FrozenTrial decides
        for trial in study.get_trials(deepcopy=False):  # (numbered in order of creation)
            latest[_depth(trial)] = trial
        for depth in depths:  # a retried depth's older PRUNED trial does not settle it
            if depth not in latest or latest[depth].state == state.FAIL:
                study.enqueue_trial({"depth": depth})
    return study


def _depth(trial: optuna.trial.FrozenTrial) -> int:
    params = trial.params or trial.system_attrs.get("fixed_params", {})
    return int(params["depth"])


def _next_trial(study: optuna.Study) -> optuna.Trial | None:
    """The next queued trial, taken atomically from the storage; None when the queue is empty."""
    optuna = _optuna()
    trial_id = study._pop_waiting_trial_id()  # what Study.ask does first, without creating a trial
    return None if trial_id is None else optuna.Trial(study, trial_id)


def train_trial(trial: optuna.Trial, member: images.Config, folder: Path, data: ImageData,
                progress: bool = False) -> float:
    """Train the fixed depth of ``trial`` epoch by epoch, reporting; raises TrialPruned when pruned."""
    optuna = _optuna()
    depth = trial.suggest_categorical("depth", list(trial.study.user_attrs["depths"]))
    cfg = replace(member, fixed_depth=int(depth), layer_depths=None)
    assert cfg.epochs is not None
    out = folder / f"depth{depth}"
    # the accuracy after each epoch done: a retried trial (its worker was killed) reports those
    # again without asking the pruner, which passed them before (a pruned trial is never
    # retried); asked again, it would judge them against trials that reached the rung since,
    # and could prune a depth that had passed every rung (it did, on 2026-12-07: depth 2 at 21
    # of 30 epochs, pruned at epoch 1 on resume)
    record = out / "search_values.json"
    values: list[float] = json.loads(record.read_text()) if record.is_file() else []
    passed = len(values)
    for epoch in range(1, cfg.epochs + 1):
        if epoch > len(values):
            again = (out / CHECKPOINT).is_file()
            ctx = RunContext(out=out, resume=again, overwrite=not again, progress=progress)
            res = images.run_images(replace(cfg, epochs=epoch), ctx, data=data)
            values.append(images_accuracy(asdict(res)))
            write_json(record, values)
        trial.set_user_attr("epochs", epoch)
        trial.report(values[epoch - 1], epoch)
        if passed < epoch < cfg.epochs and trial.should_prune():
            raise optuna.TrialPruned()
    return values[cfg.epochs - 1]


def images_accuracy(result: dict[str, Any]) -> float:
    """Precise-BN test accuracy where measured, else plain eval (as the study judges members)."""
    precise = result.get("final_test_acc_precise_bn")
    return float(result["final_test_acc"] if precise is None else precise)


def work(study: optuna.Study, member: images.Config, folder: Path, data: ImageData,
         on_trial: Callable[[int, int, str], None] | None = None) -> list[int]:
    """Take queued trials until none is left; returns the numbers of the trials this worker ran."""
    optuna = _optuna()
    state = optuna.trial.TrialState
    ran: list[int] = []
    while (trial := _next_trial(study)) is not None:
        try:
            value = train_trial(trial, member, folder, data)
        except optuna.TrialPruned:
            study.tell(trial, state=state.PRUNED)
        except BaseException:
            study.tell(trial, state=state.FAIL)
            raise
        else:
            study.tell(trial, value)
        ran.append(trial.number)
        if on_trial is not None:
            final = study.get_trials(deepcopy=False)[trial.number]
            on_trial(trial.number, int(final.params["depth"]), final.state.name)
    return ran


def worker_job(job: tuple[str, tuple[int, ...], images.Config, str, ImageData]) -> list[int]:
    """One worker process of a search, for a process pool: ``(storage, depths, member, folder, data)``."""
    import torch

    storage, depths, member, folder, data = job
    torch.set_num_threads(1)
    return work(open_search(storage, depths, resume=False), member, Path(folder), data)


def summary_row(study: optuna.Study, folder: Path) -> dict[str, Any]:
    """The search's result: the best depth, its accuracy, and the epochs trained at every depth.

    Raises:
        InputError: trials are still queued or running (another worker has not finished).
    """
    optuna = _optuna()
    state = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    open_ = [t.number for t in trials if t.state in (state.WAITING, state.RUNNING)]
    if open_:
        raise InputError(f"the search in {folder} still has trials {open_} queued or running")
    done = [t for t in trials if t.state in (state.COMPLETE, state.PRUNED)]
    epochs: dict[int, int] = {}
    for t in done:
        depth = int(t.params["depth"])
        epochs[depth] = max(epochs.get(depth, 0), int(t.user_attrs.get("epochs", 0)))
    complete = [t for t in done if t.state == state.COMPLETE]
    if not complete:
        raise InputError(f"the search in {folder} has no complete trial (every depth was pruned): "
                         "its storage is damaged; queue the depth that got furthest again "
                         "(optuna's enqueue_trial) and --resume")
    best = study.best_trial
    depth = int(best.params["depth"])
    assert best.value is not None  # a complete trial
    return {"search_depth": depth, "search_epochs": {str(k): v for k, v in sorted(epochs.items())},
            "search_trials": {str(t.number): {"depth": int(t.params["depth"]), "state": t.state.name,
                                              "epochs": int(t.user_attrs.get("epochs", 0))} for t in done},
            "final_test_acc_precise_bn": float(best.value), "best_folder": str(folder / f"depth{depth}")}
