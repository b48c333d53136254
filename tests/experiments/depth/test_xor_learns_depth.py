"""Acceptance: the README's main job (``infdepth xor --quick``) really learns its depth.

Driven through the command line's own entry point, model builder and optimizer
(fused Adam), shortened to 1500 steps and two tasks: parity of 1 input (easy)
and of all 8 (hard).  The paper's claim is that ``w`` moves away from its initial
value and ends larger for the harder task; the easy task is solved exactly.
On commit 6b60885 (the stale cached ``w``) every run reported ``w = 1.00``
and this test failed; it also fails if ``w`` is frozen in the model builder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from infdepth.cli import main
from infdepth.experiments.depth.xor import Config, build_xor_model

W0 = 1.0


@pytest.fixture(scope="module")
def quick_sweep(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("xor-quick")
    argv = ["xor", "--quick", "--k", "1,8", "--seeds", "0", "--steps", "1500", "--eval-every", "500"]
    assert main([*argv, "--jobs", "1", "--out", str(out)]) == 0
    return out


def test_depth_moves_and_grows_with_difficulty(quick_sweep: Path) -> None:
    summary = json.loads((quick_sweep / "summary.json").read_text())
    easy, hard = summary["per_k"]["1"], summary["per_k"]["8"]
    assert easy["final_val_acc"] == 1.0
    assert abs(easy["final_w"] - W0) > 0.25, "w must move away from its initial value"
    assert abs(hard["final_w"] - W0) > 0.25
    assert hard["final_w"] > easy["final_w"] + 0.3, "the harder task must end deeper"
    assert hard["built_blocks"] == [5]


def test_reported_depth_is_the_trained_parameter(quick_sweep: Path) -> None:
    """The metrics' ``w`` is the parameter in the checkpoint, not a copy of it."""
    for k in (1, 8):
        run = quick_sweep / f"k{k}_seed0"
        last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
        saved = torch.load(run / "checkpoint.pt", weights_only=False)
        assert last["w"]["2"] == float(saved["model"]["2.w"])
        assert last["active_blocks"]["2"] == max(0, int(torch.ceil(saved["model"]["2.w"])))


def test_the_cli_trains_w_with_fused_adam(monkeypatch) -> None:
    """The main job's optimizer is torch's fused Adam, and ``w`` is one of its parameters."""
    from infdepth.experiments.depth import xor

    model = build_xor_model(Config(), seed=0)
    captured = {}
    real = torch.optim.Adam

    def spy(params, **kw):
        captured.update(kw, params=list(params))
        return real(captured["params"], **kw)

    monkeypatch.setattr(torch.optim, "Adam", spy)
    xor.run_xor(Config(steps=1, val_size=10, eval_every=1), 3, 0, None, progress=False)
    assert captured["fused"] is True
    assert any(p.shape == () for p in captured["params"]), "w must be trained"
    assert model[2].w.requires_grad


def _xor(out: Path, steps: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "infdepth", "xor", "--k", "5", "--seeds", "0", "--steps", str(steps),
        "--eval-every", "100", "--checkpoint-every", "200", "--jobs", "1", "--out", str(out), *extra,
    ]  # fmt: skip


def _tensors(obj, prefix=""):
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _tensors(value, f"{prefix}/{key}")
    elif isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            yield from _tensors(value, f"{prefix}/{i}")


def test_kill_and_resume_is_bitwise(tmp_path: Path) -> None:
    """SIGKILL mid-run, ``--resume``: metrics and every tensor equal an uninterrupted run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    steps = 1400
    straight = subprocess.run(_xor(tmp_path / "a", steps), env=env, capture_output=True, timeout=300)
    assert straight.returncode == 0, straight.stderr.decode()[-2000:]
    proc = subprocess.Popen(_xor(tmp_path / "b", steps), env=env, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "b" / "k5_seed0" / "checkpoint.pt"
    deadline = time.time() + 120
    step = 0
    while time.time() < deadline and proc.poll() is None and step < 400:
        time.sleep(0.05)
        try:
            step = torch.load(ckpt, weights_only=False)["step"] if ckpt.is_file() else 0
        except Exception:  # mid-rename on some file systems: try again
            continue
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(ckpt, weights_only=False)["step"]
    assert 400 <= killed_at < steps
    again = _xor(tmp_path / "b", steps, "--resume")
    resumed = subprocess.run(again, env=env, capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    a = torch.load(tmp_path / "a" / "k5_seed0" / "checkpoint.pt", weights_only=False)
    b = torch.load(ckpt, weights_only=False)
    assert a["history"] == b["history"]
    run_a, run_b = tmp_path / "a" / "k5_seed0", tmp_path / "b" / "k5_seed0"
    assert (run_a / "metrics.jsonl").read_text() == (run_b / "metrics.jsonl").read_text()
    ta, tb = dict(_tensors(a["model"])), dict(_tensors(b["model"]))
    ta.update(_tensors(a["optimizer"], "opt")), tb.update(_tensors(b["optimizer"], "opt"))
    assert ta.keys() == tb.keys() and len(ta) > 30
    different = [name for name in ta if not torch.equal(ta[name], tb[name])]
    assert different == []
