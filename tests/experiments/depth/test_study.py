"""``infdepth study``: learned, fixed and continuous depth side by side, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infdepth.cli import main as cli_main
from infdepth.experiments.depth import study as study_module
from infdepth.experiments.depth import study_report
from infdepth.experiments.depth.study import verdict
from infdepth.experiments.depth.study_speed import epochs_at_depth, epochs_per_network, fixed_depths
from infdepth.models.going_deeper import LAYERS

BASE = ["study", "--dataset", "digits", "--epochs", "1", "--fixed-depths", "0,1", "--no-progress"]


def _code(argv: list[str]) -> int:
    try:
        return cli_main(argv)
    except SystemExit as exc:  # argparse's own errors
        return int(exc.code or 0)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("study") / "run"
    assert cli_main([*BASE, "--rounded", "--out", str(out)]) == 0
    return out


def test_every_contender_trains_once_and_is_reported(study) -> None:
    summary = json.loads((study / "summary.json").read_text())
    rows = {r["contender"]: r for r in summary["rows"]}
    assert list(rows)[:3] == ["learned", "fixed0", "fixed1"]
    rounded = [c for c in rows if c.count("-") == 2]  # fixedA-B-C from the learned run's w
    learned_w = rows["learned"]["final_w"]
    expected = "fixed" + "-".join(str(max(0, round(w))) for w in learned_w.values())
    assert rounded in ([expected], []), (rounded, learned_w)  # absent only when it equals a fixed depth
    # depth 0 switches the g-inf layers off: nothing trains, no parameter is used
    assert rows["fixed0"]["used_parameters"] == 0
    assert rows["fixed1"]["used_parameters"] > 0 and rows["learned"]["used_parameters"] > 0
    for r in summary["rows"]:
        assert r["epochs"] == 1 and r["seconds"] > 0 and 0 <= r["final_test_acc"] <= 1
        assert r["command"].startswith("infdepth images --dataset digits --epochs 1 --seed 0")
        assert (study / r["member"] / "checkpoint.pt").is_file()
    assert set(summary["verdict"]) >= {"gap_points", "compute_fraction", "best_fixed"}
    assert (study / "study.png").stat().st_size > 1000
    assert "| learned | 0 |" in (study / "table.md").read_text()


def test_resume_reads_finished_members_back_without_training(study) -> None:
    rows = study / "learned-s0" / "study_row.json"
    files = [study / "learned-s0" / name for name in ("checkpoint.pt", "summary.json", "study_row.json")]
    stamps = [f.stat().st_mtime_ns for f in files]
    assert cli_main([*BASE, "--rounded", "--out", str(study), "--resume"]) == 0
    assert [f.stat().st_mtime_ns for f in files] == stamps, "a finished member is read back, not rerun"
    assert json.loads(rows.read_text())["member"] == "learned-s0"


def test_an_interrupted_member_continues_from_its_checkpoint(tmp_path) -> None:
    out = tmp_path / "run"
    assert cli_main([*BASE, "--fixed-depths", "1", "--out", str(out)]) == 0
    first = json.loads((out / "summary.json").read_text())["rows"]
    # as if the study had been killed after fixed1's checkpoint but before its row was written
    (out / "fixed1-s0" / "study_row.json").unlink()
    assert cli_main([*BASE, "--fixed-depths", "1", "--out", str(out), "--resume"]) == 0
    again = json.loads((out / "summary.json").read_text())["rows"]
    assert [r["final_test_acc"] for r in again] == [r["final_test_acc"] for r in first]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--fixed-depths", ""], "is empty"),
        (["--fixed-depths", "1,1"], "repeats an entry"),
        (["--fixed-depths=-1"], "--fixed-depths=-1 is not accepted"),
        (["--seeds", "0,0"], "repeats an entry"),
        (["--epochs", "0"], "--epochs=0 is not accepted"),
        (["--dataset", "cifar"], "--dataset='cifar' is not accepted"),
        (["--device", "tpu"], "--device='tpu' is not accepted"),
        (["--speed-rounds=-1"], "--speed-rounds=-1 is not accepted"),
    ],
)
def test_bad_input_exits_2_and_leaves_the_study_intact(study, capsys, argv, needle) -> None:
    before = _snapshot(study)
    assert _code([*BASE, "--out", str(study), "--resume", *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert _snapshot(study) == before


def test_the_ode_net_joins_with_a_learned_and_a_fixed_end_time(tmp_path) -> None:
    out = tmp_path / "run"
    assert cli_main([*BASE, "--fixed-depths", "1", "--ode", "--out", str(out)]) == 0
    rows = {r["contender"]: r for r in json.loads((out / "summary.json").read_text())["rows"]}
    assert {"odenet-t1", "odenet"} <= set(rows)
    assert rows["odenet"]["t1"] == pytest.approx(1.0)  # fixed end time
    assert rows["odenet-t1"]["t1"] != pytest.approx(1.0)  # the end time learned
    assert rows["odenet-t1"]["command"].endswith(f"--learn-t1 --out {out / 'odenet-t1-s0'}")
    verdict = json.loads((out / "summary.json").read_text())["verdict"]
    assert "continuous_minus_discrete_points" in verdict
    # an ODE member whose checkpoint sits in its model sub-folder resumes, not restarts
    (out / "odenet-t1-s0" / "study_row.json").unlink()
    stamp = (out / "odenet-t1-s0" / "odenet" / "metrics.jsonl").read_bytes()
    assert cli_main([*BASE, "--fixed-depths", "1", "--ode", "--out", str(out), "--resume"]) == 0
    assert (out / "odenet-t1-s0" / "odenet" / "metrics.jsonl").read_bytes() == stamp


def test_every_member_is_charged_its_networks_timed_side_by_side(study) -> None:
    summary = json.loads((study / "summary.json").read_text())
    rates = summary["speed"]["images_per_second"]
    assert summary["speed"]["rounds"] == 5 and all(v > 0 for v in rates.values())
    n_train = 1437  # digits: 80% of 1797 images
    rows = {r["contender"]: r for r in summary["rows"]}
    assert rows["fixed1"]["compute_seconds"] == pytest.approx(n_train / rates["fixed:1-1-1"])
    assert rows["fixed0"]["compute_seconds"] == pytest.approx(n_train / rates["fixed:0-0-0"])
    # the learned run pays for the depth it had at the end of each epoch
    (depths, epochs), = epochs_at_depth(study / "learned-s0" / "metrics.jsonl").items()
    key = "learned:" + "-".join(map(str, depths))
    assert epochs == 1 and rows["learned"]["compute_seconds"] == pytest.approx(n_train / rates[key])
    assert depths == tuple(rows["learned"]["active_blocks"].values())
    v = summary["verdict"]
    sweep = rows["fixed0"]["compute_seconds"] + rows["fixed1"]["compute_seconds"]
    assert v["compute"].startswith("training steps timed side by side")
    assert v["compute_fraction"] == pytest.approx(rows["learned"]["compute_seconds"] / sweep)
    assert "| compute s |" in (study / "table.md").read_text()


def test_without_the_timing_the_verdict_says_it_uses_wall_time(tmp_path) -> None:
    out = tmp_path / "run"
    assert cli_main([*BASE, "--fixed-depths", "1", "--speed-rounds", "0", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["speed"] is None and all("compute_seconds" not in r for r in summary["rows"])
    rows = {r["contender"]: r for r in summary["rows"]}
    assert summary["verdict"]["compute"] == "training wall time"
    wall = rows["learned"]["seconds"] / rows["fixed1"]["seconds"]
    assert summary["verdict"]["compute_fraction"] == pytest.approx(wall)


def test_epochs_are_counted_at_the_depth_each_one_ended_with(tmp_path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    lines = [
        {"step": 10, "loss": 1.0},  # a step record without an evaluation
        {"epoch": 1.0, "active_blocks": {"dcnn0": 1, "dcnn1": 1, "dfc0": 1}},
        {"epoch": 2.0, "active_blocks": {"dcnn0": 1, "dcnn1": 1, "dfc0": 1}},
        {"epoch": 3.0, "active_blocks": {"dcnn0": 1, "dcnn1": 2, "dfc0": 2}},
        {"epoch": 3.0, "active_blocks": {"dcnn0": 1, "dcnn1": 2, "dfc0": 3}},  # epoch 3 again, after a resume
    ]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert epochs_at_depth(metrics) == {(1, 1, 1): 2, (1, 2, 3): 1}
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"fixed_depth": None, "layer_depths": [1, 1, 2]}))
    assert fixed_depths(config) == (1, 1, 2)
    config.write_text(json.dumps({"fixed_depth": 3, "layer_depths": None}))
    assert fixed_depths(config) == (3, 3, 3)


def test_a_learn_then_fix_member_is_charged_the_frozen_stack_after_its_fix(tmp_path) -> None:
    member = tmp_path / "learn-then-fix-s0"
    member.mkdir()
    (member / "config.json").write_text(json.dumps({"epochs": 5, "fix_depth_at": 0.5}))
    depths = [(1, 2, 2), (1, 2, 3), (1, 2, 3), (1, 2, 2), (1, 2, 2)]  # fixed in epoch 3 at 1 / 2 / 2
    records = [{"epoch": float(e), "active_blocks": dict(zip(LAYERS, d))} for e, d in enumerate(depths, 1)]
    (member / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert epochs_per_network(member) == {"learned:1-2-2": 1, "learned:1-2-3": 2, "frozen:1-2-2": 2}
    (member / "config.json").write_text(json.dumps({"epochs": 5, "fix_depth_at": None}))
    assert epochs_per_network(member) == {"learned:1-2-2": 3, "learned:1-2-3": 2}


def test_the_verdict_judges_the_cnns_by_precise_bn_accuracy() -> None:
    def row(contender: str, plain: float, precise: float | None, compute: float,
            kind: str = "g-inf CNN") -> dict:
        return {"contender": contender, "kind": kind, "final_test_acc": plain,
                "final_test_acc_precise_bn": precise, "seconds": 1.0, "compute_seconds": compute}

    rows = [row("learned", 0.80, 0.90, 10.0), row("fixed1", 0.85, 0.88, 20.0),
            row("fixed2", 0.86, 0.87, 70.0), row("odenet-t1", 0.89, None, 30.0, "ODE-Net"),
            row("odenet", 0.88, None, 30.0, "ODE-Net"), row("fixed1-1-2", 0.84, 0.905, 25.0)]
    v = verdict(rows)
    # plain eval would crown fixed2 and put learned 6 points behind; precise BN puts it 2 points ahead
    assert v["best_fixed"] == "fixed1" and v["gap_points"] == pytest.approx(-2.0)
    assert v["gap_points_plain_eval"] == pytest.approx(5.0)  # fixed1 plain 0.85 - learned plain 0.80
    assert v["compute_fraction"] == pytest.approx(10.0 / 90.0)
    assert v["goal_met"] is True  # learned ahead of the best fixed depth, at a ninth of the sweep
    behind = {**rows[0], "final_test_acc_precise_bn": 0.876}  # 0.4 points behind fixed1's 0.88
    assert verdict([behind, *rows[1:]])["goal_met"] is False
    assert v["continuous_minus_discrete_points"] == pytest.approx(-1.0)  # 0.89 (no BN) - 0.90
    assert v["learned_t1_minus_fixed_t1_points"] == pytest.approx(1.0)
    # the rounded depths are no part of the sweep (compute 10 / 90 above) but are compared
    assert v["rounded_minus_learned_points"] == pytest.approx(0.5)


def test_the_figure_zooms_on_the_close_members_and_names_each_once(monkeypatch) -> None:
    figures = []
    monkeypatch.setattr(study_report, "save_figure", lambda fig, path: figures.append(fig))
    members = [("learned", "g-inf CNN", 0.90, 10.0), ("fixed0", "g-inf CNN", 0.14, 1.0),
               ("fixed1", "g-inf CNN", 0.91, 9.0), ("odenet", "ODE-Net", 0.92, 50.0)]
    rows = [{"contender": c, "kind": k, "final_test_acc": a, "final_test_acc_precise_bn": None, "seconds": s}
            for c, k, a, s in members]
    study_module.plot("unused.png", rows)
    full, zoom = figures[0].axes
    names = [{t.get_text() for t in ax.texts} for ax in (full, zoom)]
    # fixed0 (78 points down) only in the full view; the three close ones only in the zoom
    assert names == [{"fixed0"}, {"learned", "fixed1", "odenet"}]
    assert len(full.lines) == 4 and len(zoom.lines) == 3


def test_jobs_train_members_side_by_side_with_the_same_results(study, tmp_path, monkeypatch, capsys) -> None:
    """--jobs 2: members train in two worker processes; every row equals the one-by-one study's."""

    pools: list[tuple[int, int]] = []  # (processes, members) of each pool
    real = study_module.parallel_imap

    def spy(worker, items, processes):
        items = list(items)
        pools.append((processes, len(items)))
        return real(worker, items, processes)

    monkeypatch.setattr(study_module, "parallel_imap", spy)
    out = tmp_path / "run"
    assert cli_main([*BASE, "--rounded", "--jobs", "2", "--speed-rounds", "1", "--out", str(out)]) == 0
    # learned, fixed0 and fixed1 in a pool of two worker processes; then the rounded depths
    # alone (one member: trained here) or nothing, when they equal a fixed depth
    assert pools == [(2, 3)]
    printed = capsys.readouterr().out
    assert all(f"{m}-s0 finished: test accuracy" in printed for m in ("learned", "fixed0", "fixed1"))
    ours = json.loads((out / "summary.json").read_text())["rows"]
    theirs = json.loads((study / "summary.json").read_text())["rows"]
    assert [r["member"] for r in ours] == [r["member"] for r in theirs]  # same members, same order
    for a, b in zip(ours, theirs):
        assert a["final_test_acc"] == b["final_test_acc"], a["member"]
        assert a["final_w"] == b["final_w"] and a["used_parameters"] == b["used_parameters"], a["member"]
    assert json.loads((out / "config.json").read_text())["jobs"] == 2


def test_on_resume_the_rounded_depths_of_a_finished_learned_run_join_the_first_pool(
        study, tmp_path, monkeypatch) -> None:
    import shutil


    out = tmp_path / "run"
    shutil.copytree(study, out)
    learned = json.loads((out / "learned-s0" / "study_row.json").read_text())
    depths = tuple(max(0, round(w)) for w in learned["final_w"].values())
    assume_new = "fixed" + "-".join(map(str, depths))
    shutil.rmtree(out / f"{assume_new}-s0", ignore_errors=True)
    pools: list[list[str]] = []
    real = study_module.parallel_imap

    def spy(worker, items, processes):
        items = list(items)
        pools.append([json.dumps(job[-1]) for job in items])
        return real(worker, items, processes)

    monkeypatch.setattr(study_module, "parallel_imap", spy)
    # fixed depth 0 only: the rounded depths are a member of their own, trained beside fixed0
    assert cli_main([*BASE, "--fixed-depths", "0", "--rounded", "--jobs", "2", "--speed-rounds", "1",
                     "--out", str(out), "--resume"]) == 0
    assert len(pools) == 1 and any("layer_depths" in job for job in pools[0]), pools
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert [r["contender"] for r in rows] == ["learned", "fixed0", assume_new]


def test_the_committed_fashion_study_verdict_follows_from_its_rows() -> None:
    """docs/images.md quotes docs/results/fashion-study/summary.json: its verdict is what
    :func:`verdict` makes of its rows today, and the headline numbers in the docs are those."""
    root = Path(__file__).resolve().parents[3]
    summary = json.loads((root / "docs/results/fashion-study/summary.json").read_text())
    assert verdict(summary["rows"]) == pytest.approx(summary["verdict"])
    v = summary["verdict"]
    doc = " ".join((root / "docs/images.md").read_text().split())
    assert f"The gap is **{v['gap_points']:.2f} points**" in doc
    assert f"costs **{100 * v['compute_fraction']:.1f}% of the sweep's compute**" in doc
    assert f"{v['continuous_minus_discrete_points']:.2f} points above** the learned CNN" in doc
    assert f"Learning t1 gains **{v['learned_t1_minus_fixed_t1_points']:.2f} points**" in doc
    assert v["goal_met"] is False and "so it is **not met** (`goal_met: false`)" in doc


def test_a_resumed_study_finishes_its_members_in_flight_before_it_starts_new_ones(tmp_path) -> None:
    from infdepth.experiments._common import RunContext
    from infdepth.experiments.depth.study_config import Config

    cfg = Config(dataset="digits", epochs=2, seeds=(0, 1), fixed_depths=(1, 2), recipes=("zero-init",),
                 search=True)
    tasks = [(0, "images", {}), (1, "images", {}), (1, "images", {"fixed_depth": 2}),
             (0, "images", {"recipe": "zero-init"}), (1, "images", {"recipe": "zero-init"}),
             (0, "ode", {"learn_t1": True}), (0, "search", {"worker": 0}), (1, "search", {"worker": 0})]
    for folder in ("zero-init-s0", "learned-s0", "search-sha-s0/depth1", "odenet-t1-s0/odenet"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "checkpoint.pt").write_bytes(b"")
    (tmp_path / "learned-s0" / "study_row.json").write_text("{}")  # finished: not in flight
    (tmp_path / "fixed2-s1").mkdir()  # started, no checkpoint yet: starts again, in its turn
    (tmp_path / "learned-s1").mkdir()
    (tmp_path / "learned-s1" / "checkpoint.pt").write_bytes(b"")  # in flight, after seed 0's
    resumed = study_module._schedule(cfg, RunContext(out=tmp_path, resume=True), tasks)
    assert resumed == [tasks[3], tasks[5], tasks[6], tasks[1], tasks[0], tasks[2], tasks[4], tasks[7]]
    assert study_module._schedule(cfg, RunContext(out=tmp_path), tasks) == tasks  # a new study: as given
