"""``infdepth ode params`` and ``ode spiral`` under real torchrun: 2 gloo processes on CPU.

The ``ode params`` comparison runs through ``ode_worker.py`` (the real command line, in
float64, dumping each rank's trained model); the others run ``python -m infdepth``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from infdepth.train import load_checkpoint

HERE = Path(__file__).parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
            "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0"]  # port 0: a free one
#: 128 digits, global batch 32 (16 per rank), 3 epochs of 4 steps; fixed Dopri5 steps, so that
#: the solve does not depend on how the batch is split; t1 learned, so it is averaged too
PARAMS = ["ode", "params", "--models", "odenet", "--epochs", "3", "--train-subset", "128", "--batch", "32",
          "--channels", "8", "--step-size", "0.5", "--learn-t1", "--t1-l2", "1e-3", "--no-progress"]


def env() -> dict[str, str]:
    e = dict(os.environ)
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(key, None)
    e["OMP_NUM_THREADS"] = "1"
    return e


def launch(args: list[str], *, ranks: int = 2, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """``args`` under torchrun with ``ranks`` processes, or as one plain process (``ranks=1``)."""
    cmd = [*TORCHRUN, *args] if ranks == 2 else [sys.executable, *args]
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout)


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def params_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same ``ode params`` training in 2 ranks (``two``) and in 1 process (``one``)."""
    root = tmp_path_factory.mktemp("ode-params-ddp")
    for name, ranks in (("two", 2), ("one", 1)):
        done = launch([str(HERE / "ode_worker.py"), str(root / f"{name}-dump"), *PARAMS,
                       "--out", str(root / name)], ranks=ranks)
        assert done.returncode == 0, done.stderr[-3000:]
        (root / f"{name}.stdout").write_text(done.stdout)
    return root


def test_params_one_writer_and_the_process_count_recorded(params_runs: Path) -> None:
    two = params_runs / "two"
    assert sorted(p.name for p in two.iterdir()) == [
        "config.json", "odenet", "params_vs_accuracy.png", "summary.json"]
    assert sorted(p.name for p in (two / "odenet").iterdir()) == ["checkpoint.pt", "metrics.jsonl"]
    for name, world in (("two", 2), ("one", 1)):
        assert json.loads((params_runs / name / "config.json").read_text())["world_size"] == world
        assert json.loads((params_runs / name / "summary.json").read_text())["world_size"] == world
    steps = [r["step"] for r in _records(two / "odenet" / "metrics.jsonl")]
    assert steps == [4, 8, 12]  # one line per epoch: a second writer would repeat them
    assert (params_runs / "two.stdout").read_text().count("test acc") == 1  # one table printed


def test_params_ranks_train_on_different_halves_of_each_global_batch(params_runs: Path) -> None:
    r0, r1, one = (torch.load(params_runs / f)["seen"]
                   for f in ("two-dump/rank0.pt", "two-dump/rank1.pt", "one-dump/rank0.pt"))
    assert len(r0) == len(r1) == len(one) == 12
    for (n0, s0), (n1, s1), (n, s) in zip(r0, r1, one):
        assert n0 == n1 == 16 and n == 32
        assert s0 != s1
        assert s0 + s1 == pytest.approx(s, rel=1e-9)


def test_params_parameters_identical_on_both_ranks_and_as_in_one_process(params_runs: Path) -> None:
    r0 = torch.load(params_runs / "two-dump" / "rank0.pt")["models"]["odenet"]
    r1 = torch.load(params_runs / "two-dump" / "rank1.pt")["models"]["odenet"]
    one = torch.load(params_runs / "one-dump" / "rank0.pt")["models"]["odenet"]
    written = load_checkpoint(params_runs / "two" / "odenet" / "checkpoint.pt")["model"]
    t1_key = next(k for k in r0 if k.endswith("t1"))
    assert float(r0[t1_key]) != 1.0, "t1 must have been learned"
    for key in r0:
        assert torch.equal(r0[key], r1[key]), key
        assert torch.equal(r0[key], written[key]), key
        # float64 sums in another order: close, not bitwise
        torch.testing.assert_close(r0[key], one[key], rtol=1e-7, atol=1e-9)


def test_params_result_as_in_one_process(params_runs: Path) -> None:
    rows = {n: json.loads((params_runs / n / "summary.json").read_text())["models"]["odenet"]
            for n in ("one", "two")}
    assert rows["two"]["test_acc"] == rows["one"]["test_acc"]
    assert rows["two"]["t1"] == pytest.approx(rows["one"]["t1"], rel=1e-9)
    assert rows["two"]["nfe_forward"] == rows["one"]["nfe_forward"]
    assert rows["two"]["params"] == rows["one"]["params"]
    a = _records(params_runs / "two" / "odenet" / "metrics.jsonl")
    b = _records(params_runs / "one" / "odenet" / "metrics.jsonl")
    assert a[-1]["loss"] < a[0]["loss"]  # it trained
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-9)
        assert x["test_acc"] == y["test_acc"]


def test_spiral_trains_once_and_prints_its_table_once(tmp_path: Path) -> None:
    out = tmp_path / "spiral"
    args = ["-m", "infdepth", "ode", "spiral", "--n-train", "4", "--n-test", "2", "--n-obs", "6",
            "--n-extrap", "3", "--window", "3", "--iterations", "4", "--hidden", "8", "--no-progress"]
    done = launch([*args, "--out", str(out)])
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("neural ODE") == 1 and done.stdout.count("GRU") == 1, done.stdout
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2
    for name in ("ode", "gru"):
        assert [r["step"] for r in _records(out / name / "metrics.jsonl")] == [1, 2, 3, 4]
    # the same global batches in one process: the same models, up to the ODE solver's
    # tolerance (each rank's adaptive solve of its half takes its own steps)
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], env=env(),
                         capture_output=True, text=True, timeout=240)
    assert one.returncode == 0, one.stderr[-3000:]
    a = json.loads((out / "summary.json").read_text())
    b = json.loads((tmp_path / "one" / "summary.json").read_text())
    numbers = [k for k, v in b.items() if isinstance(v, float) and "seconds" not in k]
    assert numbers, b
    for key in numbers:
        assert a[key] == pytest.approx(b[key], rel=1e-3), key


def test_killing_a_rank_ends_the_launch_and_the_checkpoint_resumes(tmp_path: Path, rank_pids) -> None:
    out = tmp_path / "killed"
    # a one-block ResNet: fast steps, 2 per epoch, a checkpoint after each epoch
    args = ["-m", "infdepth", "ode", "params", "--models", "resnet-1", "--epochs", "300",
            "--train-subset", "64", "--batch", "32", "--channels", "4", "--no-progress", "--out", str(out)]
    ckpt = out / "resnet-1" / "checkpoint.pt"
    with open(tmp_path / "stderr", "w") as err:
        proc = subprocess.Popen([*TORCHRUN, *args], env=env(), stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.time() + 180
            while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
                time.sleep(0.05)
            assert ckpt.exists() and proc.poll() is None, (tmp_path / "stderr").read_text()[-3000:]
            pids = rank_pids(str(out))
            assert set(pids) == {0, 1}
            os.kill(pids[1], signal.SIGKILL)
            killed = time.time()
            proc.wait(timeout=120)
            assert time.time() - killed < 60
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode != 0
    saved = load_checkpoint(ckpt)  # intact and readable
    assert 2 <= saved["step"] < 600 and saved["step"] % 2 == 0, saved["step"]
    assert not (out / "summary.json").exists()
    done = launch([*args, "--resume"], ranks=1, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert load_checkpoint(ckpt)["step"] == 600
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 1
    assert json.loads((out / "config.json").read_text())["resumes"] == [{"world_size": [2, 1]}]


def test_ode_memory_has_nothing_to_train_data_parallel_and_refuses_torchrun(tmp_path: Path) -> None:
    done = launch(["-m", "infdepth", "ode", "memory", "--out", str(tmp_path / "m")], timeout=120)
    assert done.returncode != 0
    assert "infdepth ode memory: error:" in done.stderr and "ode params" in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "m").exists()
