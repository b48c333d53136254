import json

import pytest

from infdepth.cli import main
from infdepth.experiments.xor import XorConfig, build_xor_model, run_xor


def test_quick_xor_run_reaches_full_accuracy(tmp_path) -> None:
    result = run_xor(XorConfig(k=2, steps=800, val_size=4000, checkpoint_every=400), tmp_path, progress=False)
    assert result.final_val_acc == 1.0
    assert result.steps_to_99 is not None and result.steps_to_99 <= 800
    assert (tmp_path / "checkpoint.pt").is_file()


def test_only_the_g_infinity_layer_trains() -> None:
    model = build_xor_model(XorConfig(k=3))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("2.") for n in trainable)


def test_cli_sweep_writes_summary_table_and_figures(tmp_path) -> None:
    code = main(
        [
            "xor",
            "--k",
            "0,3",
            "--seeds",
            "0",
            "--steps",
            "200",
            "--jobs",
            "1",
            "--checkpoint-every",
            "100",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["per_k"]) == {"0", "3"}
    assert summary["per_k"]["0"]["reference_final_w"] == pytest.approx(0.12, abs=0.01)
    for name in ("xor_w.png", "xor_val_acc.png", "xor_val_loss.png", "table.md", "config.json"):
        assert (tmp_path / name).is_file()


def exit_code(argv: list[str]) -> int:
    """``main``'s return value, or the code of the SystemExit argparse raises."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["xor", "--k", "9"], "--k=[9]"),
        (["xor", "--steps", "0"], "--steps=0"),
        (["xor", "--w-l2", "-1"], "--w-l2=-1.0"),
        (["xor", "--k", "a,b"], "comma-separated integers"),
        (["xor", "--no-such-flag"], "unrecognized arguments"),
    ],
)
def test_cli_misuse_exits_2_without_traceback(argv, needle, capsys, tmp_path) -> None:
    assert exit_code([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert "usage:" in err
    assert not (tmp_path / "summary.json").exists()


def test_help_explains_every_flag(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["xor", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--quick", "--steps", "--k", "--seeds", "--w-l2", "--resume", "--jobs", "--device"):
        assert flag in out
