"""NFE per epoch of ``ode params`` runs, grouped by setting: the regulariser reproduction's figure.

    python -m infdepth.experiments.ode.nfe_figure --out docs/figures/ode_regularisers.png \\
        plain=runs/plain-s0,runs/plain-s1 regularised=runs/ke-s0,runs/ke-s1

Each group is a label and comma-separated run folders of ``infdepth ode params`` (one per
seed, the ODE-Net's ``odenet/metrics.jsonl`` in each). The figure shows, per epoch, the mean
over seeds (band: min to max) of the evaluation solve's NFE (the learned dynamics alone) and
of the training forward solve's; the table gives mean ± sd over seeds of the last epoch's
NFE, test accuracy and training seconds, and the paired differences against the first group.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from infdepth.experiments._common import pyplot, save_figure


def _runs(folders: list[Path]) -> list[list[dict[str, float]]]:
    out = []
    for folder in folders:
        path = folder / "odenet" / "metrics.jsonl"
        if not path.is_file():
            raise SystemExit(f"nfe_figure: error: {path} not found (expected an ode params run)")
        out.append([json.loads(line) for line in path.read_text().splitlines()])
    return out


def _mean_sd(xs: list[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.fmean(xs):.2f} ± {sd:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("groups", nargs="+", metavar="LABEL=DIR[,DIR...]")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    groups: dict[str, list[list[dict[str, float]]]] = {}
    seconds: dict[str, list[float]] = {}
    for spec in args.groups:
        label, sep, dirs = spec.partition("=")
        if not sep or not dirs:
            parser.error(f"group {spec!r} is not accepted; expected LABEL=DIR[,DIR...]")
        folders = [Path(d) for d in dirs.split(",")]
        groups[label] = _runs(folders)
        seconds[label] = [json.loads((f / "summary.json").read_text())["models"]["odenet"]["seconds"]
                          for f in folders]
    fig, ax = pyplot().subplots(figsize=(6.0, 3.8))
    for (label, runs), colour in zip(groups.items(), ("C0", "C1", "C2", "C3"), strict=False):
        for key, style in (("nfe_test", "-"), ("nfe_forward", ":")):
            epochs = [r["epoch"] for r in runs[0]]
            cols = list(zip(*[[r[key] for r in run] for run in runs], strict=True))
            ax.plot(epochs, [statistics.fmean(c) for c in cols], style, color=colour,
                    label=f"{label}, {'evaluation' if key == 'nfe_test' else 'training'} solve")
            ax.fill_between(epochs, [min(c) for c in cols], [max(c) for c in cols], color=colour,
                            alpha=0.12 if key == "nfe_test" else 0.05)
    ax.set_xlabel("epoch")
    ax.set_ylabel("forward NFE per batch")
    ax.set_title(f"ODE-Net NFE per epoch (mean over {len(next(iter(groups.values())))} seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, args.out)
    base = next(iter(groups))
    print("| setting | NFE evaluation, last epoch | NFE training forward | test accuracy % | "
          "seconds | NFE ratio to " + base + " (paired) | accuracy change, points (paired) |")
    print("|---|---|---|---|---|---|---|")
    for label, runs in groups.items():
        nfe = [run[-1]["nfe_test"] for run in runs]
        acc = [100 * run[-1]["test_acc"] for run in runs]
        ratio = [b[-1]["nfe_test"] / r[-1]["nfe_test"] for b, r in zip(groups[base], runs, strict=True)]
        diff = [100 * (r[-1]["test_acc"] - b[-1]["test_acc"])
                for b, r in zip(groups[base], runs, strict=True)]
        print(f"| {label} | {_mean_sd(nfe)} | {_mean_sd([run[-1]['nfe_forward'] for run in runs])} "
              f"| {_mean_sd(acc)} | {_mean_sd(seconds[label])} | {_mean_sd(ratio)} | {_mean_sd(diff)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
