"""Real multi-process training: torchrun, gloo, 2 processes on CPU."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "0"]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.pop("WORLD_SIZE", None)
    e["OMP_NUM_THREADS"] = "1"
    e["PYTHONPATH"] = str(HERE)
    return e


def torchrun(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    # --master-port 0 lets the rendezvous pick a free port
    return subprocess.run(
        [*TORCHRUN, "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0", *args],
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module", params=["default", "fused"])
def ddp_run(tmp_path_factory, request) -> Path:
    """The same BN-free training (Adam in the given implementation) in 2 ranks and in 1 process."""
    out = tmp_path_factory.mktemp(f"ddp-{request.param}")
    done = torchrun([str(HERE / "ddp_worker.py"), str(out / "two"), "30", request.param])
    assert done.returncode == 0, done.stderr[-3000:]
    single = subprocess.run(
        [sys.executable, str(HERE / "ddp_worker.py"), str(out / "one"), "30", request.param],
        env=env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    return out


def test_ranks_grow_in_lockstep_and_stay_identical(ddp_run: Path) -> None:
    r0 = torch.load(ddp_run / "two" / "rank0.pt")
    r1 = torch.load(ddp_run / "two" / "rank1.pt")
    assert r0["built"] == r1["built"] and r0["built"] > 2, "w must have grown past the first chunk"
    assert r0["w"] == r1["w"]
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k


def test_two_half_batches_match_one_full_batch(ddp_run: Path) -> None:
    two = torch.load(ddp_run / "two" / "rank0.pt")
    one = torch.load(ddp_run / "one" / "rank0.pt")
    assert two["built"] == one["built"]
    assert abs(two["w"] - two["w0"]) > 0.5, "w must be learned under torchrun"
    assert two["w"] == pytest.approx(one["w"], rel=1e-9)
    assert two["w"] == float(two["state"]["1.w"])
    for k in one["state"]:
        torch.testing.assert_close(two["state"][k], one["state"][k], rtol=1e-9, atol=1e-11)


def test_only_rank_zero_writes_and_metrics_are_global(ddp_run: Path) -> None:
    lines = [json.loads(x) for x in (ddp_run / "two" / "run" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (ddp_run / "one" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [r["step"] for r in ref]
    for a, b in zip(lines, ref):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-9)
    assert sorted(p.name for p in (ddp_run / "two").iterdir()) == ["rank0.pt", "rank1.pt", "run"]


def test_torchrun_xor_learns_depth_as_one_process_does(tmp_path: Path) -> None:
    """The main job under 2 gloo ranks: w moves as in one process (BatchNorm sees half batches,
    so the two runs agree closely, not bitwise)."""
    args = ["-m", "infdepth", "xor", "--k", "6", "--steps", "800", "--eval-every", "400", "--jobs", "1"]
    done = torchrun([*args, "--out", str(tmp_path / "two")])
    assert done.returncode == 0, done.stderr[-3000:]
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], env=env(),
                         capture_output=True, text=True, timeout=240)
    assert one.returncode == 0, one.stderr[-3000:]
    w = {}
    for name in ("one", "two"):
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        w[name] = summary["per_k"]["6"]["final_w"]
        world = json.loads((tmp_path / name / "config.json").read_text())["world_size"]
        assert world == (2 if name == "two" else 1)
    assert abs(w["one"] - 1.0) > 0.3 and abs(w["two"] - 1.0) > 0.3, w
    assert w["two"] == pytest.approx(w["one"], abs=0.02), w


def test_killing_a_rank_fails_clearly_and_the_checkpoint_resumes(tmp_path: Path, rank_pids) -> None:
    out = tmp_path / "xor"
    args = [
        "-m",
        "infdepth",
        "xor",
        "--k",
        "3",
        "--steps",
        "4000",
        "--eval-every",
        "50",
        "--checkpoint-every",
        "50",
        "--jobs",
        "1",
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(
        [*TORCHRUN, "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0", *args],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ckpt = out / "k3_seed0" / "checkpoint.pt"
    deadline = time.time() + 180
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert ckpt.exists(), proc.stderr.read() if proc.poll() is not None else "no checkpoint in time"
    pids = rank_pids(str(out))
    assert set(pids) == {0, 1}
    os.kill(pids[1], signal.SIGKILL)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode != 0
    assert "FAILED" in err or "failed" in err.lower()
    saved = torch.load(ckpt, weights_only=False)  # intact and readable
    step = saved["step"]
    assert step >= 50 and step % 50 == 0
    # resume from it, in one process, for a few more steps
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "infdepth",
            "xor",
            "--k",
            "3",
            "--steps",
            str(step + 100),
            "--eval-every",
            "50",
            "--checkpoint-every",
            "50",
            "--jobs",
            "1",
            "--out",
            str(out),
            "--resume",
        ],
        env=env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert torch.load(ckpt, weights_only=False)["step"] == step + 100


def test_torchrun_images_trains_one_model_on_two_shards(tmp_path: Path) -> None:
    """``infdepth images`` under 2 gloo ranks: one run folder written once, one result printed,
    test accuracy as in one process (BatchNorm sees half batches, so close, not equal)."""
    args = ["-m", "infdepth", "images", "--dataset", "digits", "--epochs", "2", "--optimizer", "adam",
            "--lr", "3e-3", "--precise-bn", "1000", "--no-progress"]
    two = torchrun([*args, "--out", str(tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], env=env(),
                         capture_output=True, text=True, timeout=240)
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.stdout.count("digits learned:") == 1, two.stdout  # only rank 0 prints
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1.0, 2.0]  # one writer
    assert json.loads((tmp_path / "two" / "config.json").read_text())["world_size"] == 2
    acc = {}
    for n in ("one", "two"):
        # BatchNorm statistics recomputed at the end: the running averages (momentum 0.01)
        # lag far behind after 46 steps and would make both numbers noise
        result = json.loads((tmp_path / n / "summary.json").read_text())["result"]
        acc[n] = result["final_test_acc_precise_bn"]
    assert acc["one"] > 0.9 and acc["two"] > 0.9 and abs(acc["two"] - acc["one"]) < 0.04, acc


def test_commands_that_are_not_data_parallel_refuse_torchrun(tmp_path: Path) -> None:
    done = torchrun(["-m", "infdepth", "limits", "convergence", "--out", str(tmp_path / "s")], timeout=120)
    assert done.returncode != 0
    assert "infdepth limits convergence: error: this command has nothing to train" in done.stderr
    assert "Data-parallel commands: xor, images, study, ode params, ode spiral" in done.stderr
    assert re.search(r"exitcode\s*:\s*2", done.stderr), done.stderr[-2000:]  # exit 2 on each rank
    assert not (tmp_path / "s").exists()


def test_torchrun_study_trains_each_member_once(tmp_path: Path) -> None:
    """``infdepth study`` under 2 gloo ranks: every member data-parallel, one writer, one table."""
    out = tmp_path / "study"
    done = torchrun(["-m", "infdepth", "study", "--dataset", "digits", "--epochs", "1",
                     "--fixed-depths", "0,1", "--no-progress", "--out", str(out)])
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("| learned | 0 |") == 1, done.stdout  # only rank 0 prints
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["world_size"] == 2
    assert [r["member"] for r in summary["rows"]] == ["learned-s0", "fixed0-s0", "fixed1-s0"]
    for member in ("learned-s0", "fixed0-s0", "fixed1-s0"):
        assert json.loads((out / member / "config.json").read_text())["world_size"] == 2
        assert len((out / member / "metrics.jsonl").read_text().splitlines()) == 1  # one epoch, one writer
