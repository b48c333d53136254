"""The study's verdict, table and figure: learned depth against the fixed depths and the search.

Rows are the members' ``study_row.json``; every number is a mean over seeds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from infdepth.experiments._common import pyplot, save_figure


def accuracy(row: dict[str, Any]) -> float:
    """The accuracy a member is judged by: precise-BN test accuracy where measured, else plain eval."""
    precise = row.get("final_test_acc_precise_bn")
    return float(row["final_test_acc"] if precise is None else precise)


def compute(row: dict[str, Any]) -> float:
    """A member's compute: seconds from the side-by-side step timing, else its wall time."""
    return float(row.get("compute_seconds", row["seconds"]))


def _mean(rows: list[dict[str, Any]], value: Callable[[dict[str, Any]], Any]) -> float:
    values = [float(v) for r in rows if (v := value(r)) is not None]
    return sum(values) / len(values) if values else math.nan


def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Learned against the best fixed depth (means over seeds): accuracy gaps and compute fraction.

    Accuracy is :func:`accuracy` (``gap_points``) and plain eval (``gap_points_plain_eval``);
    compute is :func:`compute`, summed over the fixed depths of ``--fixed-depths`` (the sweep a
    user would run instead of learning the depth).
    """
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["contender"], []).append(r)
    fixed = {c: rs for c, rs in by.items() if c.startswith("fixed") and "-" not in c}
    timed = all("compute_seconds" in r for r in rows)
    out: dict[str, Any] = {
        "accuracy": "precise-BN test accuracy where measured, else plain eval",
        "compute": "training steps timed side by side x images trained" if timed else "training wall time",
    }
    if "learned" in by and fixed:
        best = max(fixed, key=lambda c: _mean(fixed[c], accuracy))
        learned = by["learned"]
        sweep = sum(_mean(rs, compute) for rs in fixed.values())

        def plain(r: dict[str, Any]) -> Any:
            return r["final_test_acc"]

        out.update(
            learned_test_acc=_mean(learned, accuracy),
            best_fixed=best,
            best_fixed_test_acc=_mean(fixed[best], accuracy),
            gap_points=100 * (_mean(fixed[best], accuracy) - _mean(learned, accuracy)),
            gap_points_plain_eval=100 * (_mean(fixed[best], plain) - _mean(learned, plain)),
            learned_compute_seconds=_mean(learned, compute),
            best_fixed_compute_seconds=_mean(fixed[best], compute),
            sweep_compute_seconds=sweep,
            compute_fraction=_mean(learned, compute) / sweep if sweep else math.nan,
        )
        # issue 13's bar: within 0.3 points of the best fixed depth at <= 1/3 of the sweep's compute
        out["goal_met"] = bool(out["gap_points"] <= 0.3 and out["compute_fraction"] <= 1 / 3)
    rounded = [r for c, rs in by.items() if c.startswith("fixed") and "-" in c for r in rs]
    if rounded and "learned" in by:  # the learned depths, trained again without gates
        out["rounded_minus_learned_points"] = 100 * (_mean(rounded, accuracy)
                                                     - _mean(by["learned"], accuracy))
    # the ODE-Net normalises with GroupNorm (no running statistics): its plain eval is its accuracy
    if "odenet-t1" in by and "learned" in by:
        out["continuous_minus_discrete_points"] = 100 * (_mean(by["odenet-t1"], accuracy)
                                                         - _mean(by["learned"], accuracy))
    if "odenet-t1" in by and "odenet" in by:
        out["learned_t1_minus_fixed_t1_points"] = 100 * (_mean(by["odenet-t1"], accuracy)
                                                         - _mean(by["odenet"], accuracy))
    if fixed and any(r.get("recipe") or r["kind"] == "search" for r in rows):
        out["recipes"] = recipe_verdict(by, fixed)
    return out


def _sd(values: list[float]) -> float:
    if len(values) < 2:
        return math.nan
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _finite(value: Any) -> Any:
    """``value`` with every NaN (an sd of one seed, no search to compare with) as None: valid JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return None if isinstance(value, float) and math.isnan(value) else value


def recipe_verdict(
    by: dict[str, list[dict[str, Any]]], fixed: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    """Every learned-depth recipe and the search against the best fixed depth, paired by seed.

    A recipe's gap is the mean over seeds of (best fixed depth's accuracy - the recipe's) on
    the same seed and test set, with its standard deviation.  Issue 24's goal: a recipe
    within 0.3 points of the best fixed depth (>= 2 seeds) at no more compute than the
    successive-halving search and at most a third of the fixed sweep's.
    """
    best = max(fixed, key=lambda c: _mean(fixed[c], accuracy))
    best_by_seed = {r["seed"]: accuracy(r) for r in fixed[best]}
    sweep = sum(_mean(rs, compute) for rs in fixed.values())
    search = by.get("search-sha", [])
    search_compute = _mean(search, compute) if search else math.nan

    def summary(rs: list[dict[str, Any]]) -> dict[str, Any]:
        gaps = [100 * (best_by_seed[r["seed"]] - accuracy(r)) for r in rs if r["seed"] in best_by_seed]
        accs = [accuracy(r) for r in rs]
        cost = _mean(rs, compute)
        entry: dict[str, Any] = {
            "seeds": sorted(r["seed"] for r in rs), "test_acc": _mean(rs, accuracy), "test_acc_sd": _sd(accs),
            "gap_points": sum(gaps) / len(gaps) if gaps else math.nan, "gap_points_sd": _sd(gaps),
            "compute_seconds": cost, "compute_fraction_of_sweep": cost / sweep if sweep else math.nan,
            "compute_vs_search": cost / search_compute if search else math.nan,
        }
        if rs[0].get("final_w"):
            entry["final_w"] = {k: sum(r["final_w"][k] for r in rs) / len(rs) for k in rs[0]["final_w"]}
        return entry

    recipes = {c: summary(rs) for c, rs in by.items() if rs[0].get("recipe")}
    out: dict[str, Any] = {"best_fixed": best, "best_fixed_test_acc": _mean(fixed[best], accuracy),
                           "sweep_compute_seconds": sweep, "recipes": recipes}
    if search:
        out["search"] = {**summary(search), "depths": [r["search_depth"] for r in search]}
    # the parts that need no search: accuracy (paired, >= 2 seeds) and a third of the sweep
    close = {c: bool(len(e["seeds"]) >= 2 and e["gap_points"] <= 0.3
                     and e["compute_fraction_of_sweep"] <= 1 / 3) for c, e in recipes.items()}
    out["goal"] = ("a recipe within 0.3 points of the best fixed depth (paired, >= 2 seeds) at no more "
                   "compute than the successive-halving search and at most 1/3 of the sweep")
    out["accurate_and_cheaper_than_a_third_of_the_sweep"] = sorted(c for c, ok in close.items() if ok)
    if search:
        cheaper = {c for c, e in recipes.items() if e["compute_vs_search"] <= 1}
        out["goal_met_by"] = sorted(c for c, ok in close.items() if ok and c in cheaper)
        out["goal_met"] = bool(out["goal_met_by"])
    else:  # the goal names the search's compute: without a search it is not decided
        out["goal_met_by"], out["goal_met"] = [], None
    if recipes:
        out["best_recipe"] = min(recipes, key=lambda c: recipes[c]["gap_points"])
    return _finite(out)


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per member."""
    def pct(v: Any) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * float(v):.2f}"

    def num(v: Any) -> str:
        return "-" if v is None or math.isnan(float(v)) else f"{float(v):,.0f}"

    lines = ["| contender | seed | test acc % | precise-BN acc % | depth (w, blocks or t1) | parameters used "
             "| compute s | step images/s | wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("final_w"):
            depth = " / ".join(f"{w:.2f}" for w in r["final_w"].values())
        elif r["kind"] == "search":
            depth = f"search: {r['search_depth']} (epochs " + ", ".join(
                f"{k}: {e}" for k, e in r["search_epochs"].items()) + ")"
        elif r.get("t1") is not None:
            depth = f"t1 = {float(r['t1']):.3f}"
        else:  # fixedK or fixedA-B-C
            depth = r["contender"].removeprefix("fixed").replace("-", " / ")
        lines.append(f"| {r['contender']} | {r['seed']} | {pct(r['final_test_acc'])} | "
                     f"{pct(r.get('final_test_acc_precise_bn'))} | {depth} | {r['used_parameters']:,} | "
                     f"{num(r.get('compute_seconds'))} | {num(r.get('step_images_per_second'))} | "
                     f"{num(r['seconds'])} |")
    return "\n".join(lines) + "\n"


def plot(path: Any, rows: list[dict[str, Any]]) -> None:
    """Test accuracy (:func:`accuracy`) against compute (:func:`compute`), one point per member.

    When some member is far below the rest (``fixed0`` trains nothing), a second panel
    zooms on the members within 5 points of the best; the first then names only the others
    (the zoomed members crowd each other there).
    """
    plt = pyplot()
    style: dict[str, Callable[[str], tuple[str, str]]] = {
        "g-inf CNN": lambda c: ("*", "C3") if c == "learned" else ("o", "C0"),
        "ODE-Net": lambda c: ("D", "C2") if c == "odenet-t1" else ("s", "C2"),
        "search": lambda c: ("P", "C1"),
    }
    points = [(r, compute(r), 100 * accuracy(r)) for r in rows]
    zoom_floor = max(acc for _, _, acc in points) - 5
    top = [p for p in points if p[2] >= zoom_floor]
    panels = [points, top] if len(top) < len(points) else [points]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    timed = all("compute_seconds" in r for r in rows)
    xlabel = "compute (s): steps timed side by side x images trained" if timed else "training wall time (s)"
    for i, (ax, panel) in enumerate(zip(axes[0], panels)):
        for r, x, y in panel:
            recipe = r.get("recipe") not in (None, "paper")  # a learned-depth recipe: triangles
            marker, color = ("^", "C4") if recipe else style[r["kind"]](r["contender"])
            ax.plot([x], [y], marker, color=color, ms=14 if marker == "*" else 7)
            if i == len(panels) - 1 or y < zoom_floor:  # the zoom names the close ones
                ax.annotate(r["contender"], (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
        ax.set(xscale="log", ylabel="test accuracy (%; precise BN for the CNNs)", xlabel=xlabel)
        ax.grid(True, alpha=0.3, which="both")
    axes[0][0].set_title("learned (star), recipes (triangles), fixed (circles), ODE-Net (diamond: t1 "
                         "learned), search (plus)", fontsize=8)
    if len(panels) == 2:
        axes[0][1].set_title("within 5 points of the best", fontsize=10)
    save_figure(fig, path)


def plot_dw(path: Any, members: dict[str, list[dict[str, Any]]]) -> bool:
    """Where ``w``'s gradient comes from: the parts of dL/dw per layer and epoch, and ``w`` itself.

    ``members`` maps a learned member's name to its ``metrics.jsonl`` records; the epochs
    that logged ``dw`` (``--dw-probe``) are drawn: top row |data part| (dots per member), the
    l2 on ``w`` and the gated gamma penalty (lines), log scale; bottom row ``w``.  Returns
    False (and draws nothing) when no member logged ``dw``.
    """
    logged = {m: [r for r in rs if r.get("dw")] for m, rs in members.items()}
    logged = {m: rs for m, rs in logged.items() if rs}
    if not logged:
        return False
    layers = list(next(iter(logged.values()))[0]["dw"])
    plt = pyplot()
    fig, axes = plt.subplots(2, len(layers), figsize=(4.2 * len(layers), 6.5), squeeze=False, sharex=True)
    colours: dict[str, str] = {}
    for k, layer in enumerate(layers):
        top, bottom = axes[0][k], axes[1][k]
        for j, (member, rs) in enumerate(sorted(logged.items())):
            rs = [r for r in rs if layer in r["dw"]]  # a fixed depth (learn-then-fix) has no w to probe
            epochs = [r["epoch"] for r in rs]
            parts = [r["dw"][layer] for r in rs]
            names = ("|data|", "l2 on w", "gated gamma penalty") if j == 0 else (None,) * 3  # one legend
            top.plot(epochs, [abs(p["data"]) for p in parts], "o", color="C0", ms=4, label=names[0])
            top.plot(epochs, [p["w_l2"] for p in parts], "-", color="C1", label=names[1])
            top.plot(epochs, [abs(p["block_l2"]) for p in parts], "-", color="C2", label=names[2])
            recipe = member.rsplit("-s", 1)[0]  # one colour per recipe, one line per seed
            first = recipe not in colours
            colours.setdefault(recipe, f"C{len(colours) % 10}")
            bottom.plot(epochs, [r["w"][layer] for r in rs], "-o", ms=3, color=colours[recipe],
                        label=recipe if first and k == 0 else None)
        top.set(yscale="log", title=f"{layer}: parts of dL/dw")
        bottom.set(xlabel="epoch", ylabel="w")
        for ax in (top, bottom):
            ax.grid(True, alpha=0.3, which="both")
    axes[0][0].legend(fontsize=8)
    axes[1][0].legend(fontsize=7)
    save_figure(fig, path)
    return True
