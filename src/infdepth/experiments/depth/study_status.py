"""``infdepth study --status``: where a study stands, read from its run folder alone.

A study at full scale trains for days over several sessions; this answers "what is done,
what is training, what is left" without training, timing or writing anything, so it is safe
beside the study that is running in the folder (it takes no lock). Per member: done (its
row's accuracy, precise-BN where measured), in flight (epochs trained of the budget, the last
epoch's plain test accuracy, the depth a learn-then-fix recipe has fixed) or not started; per
search: each trial's depth, state and epochs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from infdepth.errors import InputError
from infdepth.experiments._common import RunContext
from infdepth.experiments.depth import search, study
from infdepth.io import read_jsonl
from infdepth.train import CHECKPOINT


@dataclass(frozen=True)
class MemberStatus:
    """One member of a study as its folder shows it."""

    member: str
    state: str  # "done", "in flight" or "not started"
    epochs: int  # trained (a search: the furthest trial's)
    budget: int
    accuracy: float | None  # done: the row's (precise-BN where measured); in flight: last plain eval
    note: str = ""


def study_config(out: Path) -> study.Config:
    """The study's configuration as its ``config.json`` in ``out`` records it (the last run's flags)."""
    path = out / "config.json"
    if not path.is_file():
        raise InputError(f"--status: --out={out} holds no study (no config.json); run `infdepth study` first")
    saved = json.loads(path.read_text())
    if not isinstance(saved, dict) or not {"seeds", "fixed_depths", "recipes"} <= saved.keys():
        raise InputError(f"--status: --out={out} holds another command's run, not a study")
    return study.Config(**{f.name: saved[f.name] for f in fields(study.Config) if f.name in saved})


def _epoch_records(folder: Path) -> list[dict[str, Any]]:
    path = folder / "metrics.jsonl"
    return [r for r in read_jsonl(path) if "test_acc" in r] if path.is_file() else []


def _member(out: Path, name: str, budget: int) -> MemberStatus:
    folder = out / name
    row_path = folder / "study_row.json"
    if row_path.is_file():
        row = json.loads(row_path.read_text())
        acc = row.get("final_test_acc_precise_bn")
        note = "" if acc is not None else "plain eval"
        return MemberStatus(name, "done", budget, budget,
                            float(row["final_test_acc"] if acc is None else acc), note)
    checkpoint = next(folder.rglob(CHECKPOINT), None)  # an ODE-Net member's is one level down
    if checkpoint is None:
        return MemberStatus(name, "not started", 0, budget, None)
    records = _epoch_records(checkpoint.parent)
    last = records[-1] if records else {}
    blocks = last.get("active_blocks", {}) if last.get("depth_fixed") else {}
    fixed = "/".join(str(v) for v in blocks.values())
    note = "plain eval" + (f"; depth fixed at {fixed}" if fixed else "")
    return MemberStatus(name, "in flight", len(records), budget,
                        float(last["test_acc"]) if last else None, note)


def _search(out: Path, cfg: study.Config, seed: int) -> MemberStatus:
    name = study._search_name(seed)
    row = _member(out, name, cfg.epochs)
    folder = out / name
    if not (folder / "search.db").is_file() and cfg.storage is None:
        return row
    optuna = search._optuna()
    storage = cfg.storage or search.default_storage(folder)
    trials = optuna.load_study(study_name=f"depth-search-s{seed}", storage=storage).get_trials(deepcopy=False)
    latest = {search._depth(t): t for t in trials}  # each depth's last trial (a retry replaces a failure)
    parts = []
    for depth, t in sorted(latest.items()):
        value = f" ({t.value:.4f})" if t.state.name == "COMPLETE" else ""
        parts.append(f"depth {depth} {t.state.name.lower()} at {len(t.intermediate_values)}{value}")
    note = "; ".join(parts)
    states = {t.state.name for t in latest.values()}
    furthest = max((len(t.intermediate_values) for t in trials), default=0)
    complete = [t for t in latest.values() if t.state.name == "COMPLETE"]
    if row.state == "done":
        return MemberStatus(name, "done", furthest, cfg.epochs, row.accuracy, note)
    if states <= {"COMPLETE", "PRUNED"} and complete:  # its row is written when the study ends
        best = max(complete, key=lambda t: float(t.value))
        return MemberStatus(name, "done", furthest, cfg.epochs, float(best.value), note)
    if states == {"WAITING"}:
        return MemberStatus(name, "not started", 0, cfg.epochs, None)
    return MemberStatus(name, "in flight", furthest, cfg.epochs, None, note)


def status(out: Path) -> list[MemberStatus]:
    """Every member of the study in ``out``, in the order a resumed study would train them."""
    cfg = study_config(out)
    ctx = RunContext(out=out, resume=True, progress=False)
    rows: list[MemberStatus] = []
    for seed, kind, settings in study._schedule(cfg, ctx, study.tasks_of(cfg, ctx)):
        if kind == "search":
            if settings["worker"] == 0:
                rows.append(_search(out, cfg, seed))
            continue
        rows.append(_member(out, study._member_name(cfg, (seed, kind, settings)), cfg.epochs))
    return rows


def table(rows: list[MemberStatus]) -> str:
    """The rows as aligned text, with a last line counting each state."""
    lines = [f"{'member':<26} {'state':<12} {'epochs':>7}  {'test acc':>8}  note"]
    for r in rows:
        acc = "" if r.accuracy is None else f"{r.accuracy:.4f}"
        epochs = f"{r.epochs}/{r.budget}"
        lines.append(f"{r.member:<26} {r.state:<12} {epochs:>7}  {acc:>8}  {r.note}".rstrip())
    counts = {s: sum(r.state == s for r in rows) for s in ("done", "in flight", "not started")}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)
