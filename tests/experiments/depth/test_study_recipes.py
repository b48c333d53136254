"""`infdepth study` with learned-depth recipes, the proxy flags, the dL/dw figure and the search."""

from __future__ import annotations

import json

import pytest

from infdepth.cli import main
from infdepth.experiments.depth.recipes import RECIPES
from infdepth.experiments.depth.study_report import verdict


def test_recipes_search_and_proxy_flags_through_the_cli(tmp_path, capsys) -> None:
    pytest.importorskip("optuna", reason="the search's optional extra is not installed: "
                        "pip install 'infdepth[search]'")
    out = tmp_path / "study"
    argv = ["study", "--dataset", "digits", "--epochs", "2", "--seeds", "0,1", "--fixed-depths", "1,2",
            "--recipes", "zero-init,learn-then-fix", "--channels", "4", "--dense-units", "16",
            "--batch-size", "128", "--dw-probe", "64", "--search", "--speed-rounds", "1", "--jobs", "1",
            "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    members = {r["member"]: r for r in summary["rows"]}
    expected = {"zero-init-s1", "learn-then-fix-s0", "search-sha-s0", "search-sha-s1", "fixed2-s0"}
    assert expected <= set(members)
    # each recipe member ran with its settings and the proxy's network, and its command says so
    zero = json.loads((out / "zero-init-s0" / "config.json").read_text())
    assert zero["zero_init"] is True and zero["channels"] == 4 and zero["batch_size"] == 128
    assert "--zero-init" in members["zero-init-s0"]["command"]
    assert json.loads((out / "learn-then-fix-s0" / "config.json").read_text())["fix_depth_at"] == 0.5
    assert json.loads((out / "fixed2-s0" / "config.json").read_text())["dw_probe"] == 0  # no w to probe
    # the search trained every depth at least one epoch and is charged for what it trained
    search = members["search-sha-s0"]
    assert set(search["search_epochs"]) == {"1", "2"} and search["compute_seconds"] > 0
    # learn-then-fix pays the gated network's rate up to its fix (epoch 1 of 2), the frozen stack's after
    rates, n_train = summary["speed"]["images_per_second"], 1437
    fixed_at = tuple(members["learn-then-fix-s0"]["active_blocks"].values())
    frozen = "frozen:" + "-".join(map(str, fixed_at))
    learned = [k for k in rates if k.startswith("learned:")]
    charged = members["learn-then-fix-s0"]["compute_seconds"]
    assert frozen in rates and any(
        charged == pytest.approx(n_train / rates[k] + n_train / rates[frozen]) for k in learned)
    # the verdict of issue 24 has every recipe, paired over both seeds, and the search
    v = summary["verdict"]["recipes"]
    assert set(v["recipes"]) == {"learned", "zero-init", "learn-then-fix"}
    assert v["recipes"]["zero-init"]["seeds"] == [0, 1] and v["search"]["seeds"] == [0, 1]
    assert isinstance(v["goal_met"], bool) and v["best_recipe"] in v["recipes"]
    assert v == verdict(summary["rows"])["recipes"]
    assert (out / "dw.png").stat().st_size > 1000
    # the JSON is strict: no NaN where a value does not exist
    json.loads((out / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))


def test_an_unknown_recipe_is_refused(tmp_path, capsys) -> None:
    assert main(["study", "--recipes", "deeper", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "--recipes" in err and "zero-init" in err and not (tmp_path / "s").exists()


def test_every_recipe_is_a_valid_images_configuration() -> None:
    from infdepth.experiments.depth.images import Config

    for settings in RECIPES.values():
        Config(dataset="digits", **settings)  # raises on a misspelt or out-of-range setting


def test_the_committed_proxy_study_verdict_follows_from_its_rows() -> None:
    """docs/depth-recipes.md quotes docs/results/proxy-study/summary.json: its verdict is what
    :func:`verdict` makes of its rows today, and the doc's headline numbers are those."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    summary = json.loads((root / "docs/results/proxy-study/summary.json").read_text())
    assert json.loads(json.dumps(verdict(summary["rows"]))) == summary["verdict"]
    v = summary["verdict"]["recipes"]
    doc = " ".join((root / "docs/depth-recipes.md").read_text().split())
    for name, entry in v["recipes"].items():
        assert f"| {name} | {100 * entry['test_acc']:.2f} +- {100 * entry['test_acc_sd']:.2f} |" in doc, name
    assert f"best fixed depth on the proxy is **{v['best_fixed']}**" in doc
    assert ("**not met**" if not v["goal_met"] else "**met**") in doc
