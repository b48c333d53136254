"""The successive-halving search over fixed depths (Optuna): shared storage, pruning, resume, study row."""

from __future__ import annotations

import json

import pytest

optuna = pytest.importorskip("optuna", reason="the search's optional extra is not installed: "
                             "pip install 'infdepth[search]'")

from infdepth.data.images import ImageData, load_images  # noqa: E402
from infdepth.experiments._common import parallel_imap  # noqa: E402
from infdepth.experiments.depth import search  # noqa: E402
from infdepth.experiments.depth.images import Config  # noqa: E402
from infdepth.experiments.depth.images_report import ImagesResult  # noqa: E402

MEMBER = Config(dataset="digits", epochs=2, batch_size=64, channels=4, dense_units=16, precise_bn=128,
                fixed_depth=0)
DEPTHS = (1, 2, 3)


def small_digits() -> ImageData:
    d = load_images("digits")
    return ImageData("digits", d.x_train[:192], d.y_train[:192], d.x_test[:96], d.y_test[:96], 10, "test")


def test_two_workers_share_one_sqlite_search_without_losing_or_duplicating_a_trial(tmp_path) -> None:
    storage = search.default_storage(tmp_path)
    search.open_search(storage, DEPTHS, resume=False)  # created once, before the workers
    job = (storage, DEPTHS, MEMBER, str(tmp_path), small_digits())
    ran = list(parallel_imap(search.worker_job, [job, job], 2))  # two spawned processes
    study = search.open_search(storage, DEPTHS, resume=False)
    trials = study.get_trials()
    numbers = sorted(n for r in ran for n in r)
    assert numbers == [t.number for t in trials] == [0, 1, 2]  # every trial ran once, by one worker
    assert sorted(int(t.params["depth"]) for t in trials) == list(DEPTHS)
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    row = search.summary_row(study, tmp_path)
    assert row["search_depth"] in DEPTHS and set(row["search_epochs"]) == {"1", "2", "3"}
    best = json.loads((tmp_path / f"depth{row['search_depth']}" / "summary.json").read_text())
    assert row["final_test_acc_precise_bn"] == best["result"]["final_test_acc_precise_bn"]


def _fake_runs(monkeypatch, accuracy: dict[int, list[float]], calls: list[tuple[int, int]]) -> None:
    """images.run_images replaced by a table of accuracies per (depth, epoch)."""
    from infdepth.experiments.depth import images

    def run_images(cfg, ctx, data=None):
        calls.append((cfg.fixed_depth, cfg.epochs))
        ctx.out.mkdir(parents=True, exist_ok=True)
        (ctx.out / "checkpoint.pt").write_bytes(b"")
        acc = accuracy[cfg.fixed_depth][cfg.epochs - 1]
        return ImagesResult(label="fixed", epochs=cfg.epochs, final_test_acc=acc, best_test_acc=acc,
                            best_epoch=1, final_test_loss=0.0, final_w={}, active_blocks={}, built_blocks={},
                            used_parameters=1, seconds=1.0, images_per_second=1.0,
                            final_test_acc_precise_bn=acc)

    monkeypatch.setattr(images, "run_images", run_images)


def test_a_depth_behind_at_the_first_rung_is_pruned_and_charged_its_epochs(tmp_path, monkeypatch) -> None:
    calls: list[tuple[int, int]] = []
    table = {1: [0.9] * 9, 2: [0.5] * 9, 3: [0.95] * 9}
    _fake_runs(monkeypatch, table, calls)
    member = Config(dataset="digits", epochs=9, fixed_depth=0)
    study = search.open_search(search.default_storage(tmp_path), DEPTHS, resume=False)
    search.work(study, member, tmp_path, small_digits())
    states = {int(t.params["depth"]): t.state.name for t in study.get_trials()}
    assert states == {1: "COMPLETE", 2: "PRUNED", 3: "COMPLETE"}
    row = search.summary_row(study, tmp_path)
    assert row["search_epochs"] == {"1": 9, "2": 1, "3": 9} and row["search_depth"] == 3
    assert [e for d, e in calls if d == 2] == [1]  # not trained past its pruning


def test_resume_requeues_a_killed_workers_trial_and_reuses_its_epochs(tmp_path, monkeypatch) -> None:
    calls: list[tuple[int, int]] = []
    _fake_runs(monkeypatch, {d: [1.0 - 0.05 * d] * 3 for d in DEPTHS}, calls)  # depth 1 is the best
    member = Config(dataset="digits", epochs=3, fixed_depth=0)
    storage = search.default_storage(tmp_path)
    study = search.open_search(storage, DEPTHS, resume=False)
    trial = search._next_trial(study)  # a worker takes depth 1, trains 2 epochs, and is killed
    assert trial is not None
    (tmp_path / "depth1").mkdir()
    (tmp_path / "depth1" / "search_values.json").write_text(json.dumps([0.95, 0.95]))
    with pytest.raises(Exception, match="still has trials"):
        search.summary_row(study, tmp_path)
    study = search.open_search(storage, DEPTHS, resume=True)
    search.work(study, member, tmp_path, small_digits())
    by_depth = {}
    for t in study.get_trials():
        by_depth.setdefault(search._depth(t), []).append(t.state.name)
    assert by_depth[1] == ["FAIL", "COMPLETE"] and set(by_depth) == set(DEPTHS)
    assert all(states[-1] in ("COMPLETE", "PRUNED") for states in by_depth.values())
    assert [e for d, e in calls if d == 1] == [3]  # only the epoch the killed worker had not done
    with pytest.raises(Exception, match="over depths"):
        search.open_search(storage, (1, 2), resume=False)


def test_a_retried_trial_is_not_judged_again_at_the_rungs_it_had_passed(tmp_path, monkeypatch) -> None:
    """The full-scale run of 2026-12-07: depth 2 passed its rungs alone, its worker was killed;
    on resume depth 1 had reached the first rung with a better value, and the retried depth 2,
    judged again there on its reused first epoch, was pruned: no depth completed."""
    calls: list[tuple[int, int]] = []
    _fake_runs(monkeypatch, {1: [0.9, 0.9, 0.9], 2: [0.8, 0.95, 0.99], 3: [0.5, 0.5, 0.5]}, calls)
    member = Config(dataset="digits", epochs=3, fixed_depth=0)
    storage = search.default_storage(tmp_path)
    study = search.open_search(storage, DEPTHS, resume=False)
    search._next_trial(study)  # depth 1: taken by a worker killed before its first epoch
    depth2 = search._next_trial(study)
    assert depth2 is not None
    assert search.train_trial(depth2, member, tmp_path, small_digits()) == 0.99  # passes alone
    (tmp_path / "depth2" / "search_values.json").write_text(json.dumps([0.8, 0.95]))  # killed in epoch 3
    study = search.open_search(storage, DEPTHS, resume=True)
    calls.clear()
    search.work(study, member, tmp_path, small_digits())
    final = {search._depth(t): t.state.name for t in study.get_trials()}  # each depth's last trial
    assert final == {1: "COMPLETE", 2: "COMPLETE", 3: "PRUNED"}
    assert [e for d, e in calls if d == 2] == [3]  # the retried depth 2 trained its last epoch only
    assert search.summary_row(study, tmp_path)["search_depth"] == 2


def test_resume_retries_a_depth_whose_last_trial_failed_after_a_pruned_one(tmp_path, monkeypatch) -> None:
    """The full-scale run of 2026-12-07 (night): depth 2, wrongly pruned by the bug above, was queued
    again by hand and killed at 29 of 30 epochs; the resume counted its old PRUNED trial as
    settled and queued nothing, so both workers finished at once with no trial."""
    calls: list[tuple[int, int]] = []
    _fake_runs(monkeypatch, {1: [0.9, 0.9, 0.9], 2: [0.8, 0.95, 0.99], 3: [0.5, 0.5, 0.5]}, calls)
    member = Config(dataset="digits", epochs=3, fixed_depth=0)
    storage = search.default_storage(tmp_path)
    study = search.open_search(storage, DEPTHS, resume=False)
    search.work(study, member, tmp_path, small_digits())  # 1 complete, 2 and 3 pruned at epoch 1
    assert {search._depth(t): t.state.name for t in study.get_trials()}[2] == "PRUNED"
    study.enqueue_trial({"depth": 2})  # the repair: depth 2 queued again, then its worker is killed
    retry = search._next_trial(study)
    assert retry is not None
    (tmp_path / "depth2" / "search_values.json").write_text(json.dumps([0.8, 0.95]))
    study = search.open_search(storage, DEPTHS, resume=True)
    calls.clear()
    assert search.work(study, member, tmp_path, small_digits()) != []  # the retry runs
    assert calls == [(2, 3)]
    assert search.summary_row(study, tmp_path)["search_depth"] == 2


def test_a_search_without_a_complete_trial_says_so(tmp_path) -> None:
    study = search.open_search(search.default_storage(tmp_path), (1,), resume=False)
    trial = search._next_trial(study)
    assert trial is not None
    trial.suggest_categorical("depth", [1])
    trial.report(0.5, 1)
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    with pytest.raises(search.InputError, match="no complete trial"):
        search.summary_row(study, tmp_path)
