"""The command line as a user or an attacker meets it (issue 28): checkpoints never run code,
a refused resume changes nothing, sizes are bounded before anything is written, file-system
problems and interrupts end in one line and a documented exit code."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from infdepth import checkpoint, train
from infdepth.cli import main
from infdepth.train import FitConfig, fit

XOR = ["xor", "--k", "1", "--seeds", "0", "--eval-every", "20", "--checkpoint-every", "20", "--jobs", "1",
       "--no-progress"]


def code_of(argv: list[str]) -> int:
    """``main``'s exit code, or the one argparse exits with; fails a command that runs past 30 s."""
    def too_long(signum, frame):
        raise AssertionError(f"{argv} still runs after 30 s")

    old = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(30)
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(folder.rglob("*"))}


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture()
def xor_run(tmp_path: Path) -> Path:
    """A finished 40-step XOR run (checkpoints at 20 and 40)."""
    out = tmp_path / "run"
    assert code_of([*XOR, "--steps", "40", "--out", str(out)]) == 0
    return out


class Payload:
    """Unpickling this creates ``target``: proof that loading a checkpoint ran code."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (self.target, "pwned"))


def _another_models_checkpoint(path: Path, tmp: Path) -> None:
    model = nn.Sequential(nn.Linear(3, 2))
    fit(model, torch.optim.SGD(model.parameters(), lr=0.1), lambda s: (torch.ones(4, 3), torch.zeros(4, 2)),
        nn.MSELoss(), FitConfig(steps=5, out_dir=tmp / "other", progress=False))
    path.write_bytes((tmp / "other" / train.CHECKPOINT).read_bytes())


def _directory(path: Path, tmp: Path) -> None:
    path.unlink()
    path.mkdir()
    (path / "inside").write_text("x")


DAMAGE = {
    "truncated": lambda p, tmp: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "zero bytes": lambda p, tmp: p.write_bytes(b""),
    "random bytes": lambda p, tmp: p.write_bytes(os.urandom(5000)),
    "another command's": _another_models_checkpoint,
    "a directory": _directory,
    "a pickle payload": lambda p, tmp: torch.save({"step": 20, "history": [Payload(tmp / "pwned.txt")]}, p),
}


@pytest.mark.parametrize("damage", list(DAMAGE), ids=list(DAMAGE))
def test_a_refused_resume_changes_nothing(xor_run: Path, tmp_path: Path, damage: str, capsys) -> None:
    DAMAGE[damage](xor_run / "k1_seed0" / train.CHECKPOINT, tmp_path)
    before = snapshot(xor_run)
    capsys.readouterr()
    assert code_of([*XOR, "--steps", "60", "--out", str(xor_run), "--resume"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "checkpoint" in line and len(line) < 600, line  # a state_dict's keys are not listed
    assert snapshot(xor_run) == before, "a refused resume changed the run folder"
    assert not (tmp_path / "pwned.txt").exists(), "loading the checkpoint ran its payload"


def test_a_resume_with_fewer_steps_than_the_checkpoint_changes_nothing(xor_run: Path, capsys) -> None:
    before = snapshot(xor_run)
    assert code_of([*XOR, "--steps", "30", "--out", str(xor_run), "--resume"]) == 2
    assert "beyond the 30 steps" in one_line(capsys.readouterr().err)
    assert snapshot(xor_run) == before


def test_a_folder_where_the_metrics_belong_is_refused_before_any_write(xor_run: Path, capsys) -> None:
    metrics = xor_run / "k1_seed0" / train.METRICS
    metrics.unlink()
    metrics.mkdir()
    before = snapshot(xor_run)
    assert code_of([*XOR, "--steps", "60", "--out", str(xor_run), "--resume"]) == 2
    assert "metrics.jsonl is a folder" in one_line(capsys.readouterr().err)
    assert snapshot(xor_run) == before


def test_resume_off_the_log_grid_is_bitwise_from_the_cli(tmp_path: Path, monkeypatch) -> None:
    """--eval-every 10 --checkpoint-every 7, interrupted at step 9: metrics.jsonl as if uninterrupted."""
    from infdepth.experiments.depth import xor

    argv = ["xor", "--k", "1", "--seeds", "0", "--steps", "30", "--eval-every", "10", "--checkpoint-every",
            "7", "--jobs", "1", "--no-progress"]
    assert code_of([*argv, "--out", str(tmp_path / "full")]) == 0
    real = xor.step_generator

    def interrupted(seed: int, step: int):
        if step == 9:
            raise KeyboardInterrupt
        return real(seed, step)

    monkeypatch.setattr(xor, "step_generator", interrupted)
    assert code_of([*argv, "--out", str(tmp_path / "part")]) == 130
    monkeypatch.setattr(xor, "step_generator", real)
    assert code_of([*argv, "--out", str(tmp_path / "part"), "--resume"]) == 0
    full, part = (tmp_path / name / "k1_seed0" / train.METRICS for name in ("full", "part"))
    assert part.read_bytes() == full.read_bytes()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["xor", "--w0", "1e30"], "--w0=1e+30 is not accepted"),
        (["xor", "--grow-step", "99999999999"], "--grow-step=99999999999 is not accepted"),
        (["images", "--dataset", "digits", "--w0", "1e30"], "--w0=1e+30 is not accepted"),
        (["images", "--dataset", "digits", "--grow-step", "99999999999"], "--grow-step=99999999999"),
        (["limits", "convergence", "--depths", "99999999999"], "--depths=99999999999 is not accepted"),
        (["limits", "convergence", "--tanh-reference-steps", "99999999999"], "--tanh-reference-steps="),
        (["xor", "--seeds", "18446744073709551616"], "expected a seed in [0, 4294967295]"),
        (["xor", "--seeds", "9223372036854775807"], "expected a seed in [0, 4294967295]"),
        (["xor", "--threads", "99999999999"], "--threads=99999999999 is not accepted; this machine has"),
        (["ode", "spiral", "--n-train", "99999999999"], "--n-train"),
        (["ode", "spiral", "--t-obs", "1e-300"], "--t-obs=1e-300 is not accepted"),
        (["xor", "--out", ""], "'' is not accepted; expected a folder name"),
    ],
)
def test_sizes_are_bounded_before_anything_is_written(argv, needle, tmp_path: Path, capsys) -> None:
    out = ["--out", str(tmp_path / "run")] if "--out" not in argv else []
    cwd = os.getcwd()
    os.chdir(tmp_path)  # an empty --out must not write into the current folder
    try:
        assert code_of([*argv, *out]) == 2
    finally:
        os.chdir(cwd)
    assert needle in one_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == [], "a refused command wrote something"


def test_a_diverging_image_run_stops_with_one_line_and_valid_json(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert code_of(["images", "--dataset", "digits", "--epochs", "1", "--lr", "1e30", "--no-progress",
                    "--out", str(out)]) == 1
    assert "training diverged" in one_line(capsys.readouterr().err)
    for line in (out / train.METRICS).read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON token {c} in metrics.jsonl"))


def _long_path(tmp_path: Path) -> Path:
    path = tmp_path
    while len(str(path)) < 4200:
        path = path / ("d" * 200)
    return path


@pytest.mark.parametrize(
    ("make_out", "needle"),
    [
        (lambda t: (t / "link").symlink_to(t / "nowhere") or t / "link", "symbolic link"),
        (lambda t: (t / "link").symlink_to(t / "nowhere") or t / "link" / "run", "symbolic link"),
        (lambda t: t / ("x" * 300), "a name in it has 300 bytes"),
        (_long_path, "its path has"),
    ],
    ids=["dangling symlink", "below a dangling symlink", "300-character name", "path over 4096"],
)
def test_an_out_the_file_system_refuses_is_one_line_and_exit_2(tmp_path: Path, make_out, needle,
                                                                capsys) -> None:
    out = make_out(tmp_path)
    before = snapshot(tmp_path)
    assert code_of([*XOR, "--steps", "20", "--out", str(out)]) == 2
    assert needle in one_line(capsys.readouterr().err)
    assert snapshot(tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_run_sub_folder_is_refused_before_any_write(xor_run: Path, capsys) -> None:
    sub = xor_run / "k1_seed0"
    before = snapshot(xor_run)
    sub.chmod(0o500)
    try:
        assert code_of([*XOR, "--steps", "60", "--out", str(xor_run), "--resume"]) == 2
    finally:
        sub.chmod(0o700)
    assert "is not writable" in one_line(capsys.readouterr().err)
    assert snapshot(xor_run) == before


def test_a_write_refused_by_the_os_mid_resume_is_one_line_and_config_is_put_back(
        xor_run: Path, monkeypatch, capsys) -> None:
    """As a read-only sub-folder does to root-less users: the OS refuses a write after config.json."""
    before = snapshot(xor_run)

    def refused(path, data) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(train, "atomic_write_bytes", refused)
    assert code_of([*XOR, "--steps", "60", "--out", str(xor_run), "--resume"]) == 2
    assert "Permission denied" in one_line(capsys.readouterr().err)
    assert snapshot(xor_run) == before


def test_a_full_disk_stops_with_one_line_exit_1_and_the_checkpoint_intact(tmp_path: Path, monkeypatch,
                                                                           capsys) -> None:
    out = tmp_path / "run"
    real = checkpoint.atomic_torch_save
    calls = []

    def fills_up(obj, path) -> None:
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(obj, path)

    monkeypatch.setattr(checkpoint, "atomic_torch_save", fills_up)
    assert code_of([*XOR, "--steps", "60", "--out", str(out)]) == 1
    line = one_line(capsys.readouterr().err)
    assert "No space left on device" in line and "intact" in line and "--resume" in line
    monkeypatch.setattr(checkpoint, "atomic_torch_save", real)
    assert train.load_checkpoint(out / "k1_seed0" / train.CHECKPOINT)["step"] == 20
    assert code_of([*XOR, "--steps", "60", "--out", str(out), "--resume"]) == 0


def test_a_resume_names_the_process_count_not_a_flag_that_does_not_exist(tmp_path: Path) -> None:
    from infdepth.errors import InputError
    from infdepth.runfolder import open_run, release

    try:
        open_run(tmp_path, {"lr": 0.1, "world_size": 1}, resume=False)
        release()
        with pytest.raises(InputError) as info:
            open_run(tmp_path, {"lr": 0.2, "world_size": 1}, resume=True, resumable=("world_size",))
    finally:
        release()
    assert "--world-size" not in str(info.value) and "torchrun --nproc-per-node" in str(info.value)


# ---------------------------------------------------------------- signals, in real processes


def _start(argv: list[str], out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "infdepth", *argv, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group: Ctrl-C reaches it alone


def _wait_for(paths: list[Path], proc: subprocess.Popen, limit: float = 120) -> None:
    deadline = time.monotonic() + limit
    while not all(p.is_file() for p in paths):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "the run did not reach its first checkpoint in time"
        time.sleep(0.1)


LONG = ["--steps", "1000000", "--eval-every", "10", "--checkpoint-every", "10", "--no-progress"]


def test_ctrl_c_with_pool_workers_is_one_line_and_exit_130(tmp_path: Path) -> None:
    proc = _start(["xor", "--k", "1,2", "--seeds", "0", "--jobs", "2", *LONG], tmp_path)
    try:
        _wait_for([tmp_path / f"k{k}_seed0" / train.CHECKPOINT for k in (1, 2)], proc)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "interrupted" in one_line(proc.stderr.read())


def test_sigterm_is_one_line_exit_143_and_the_checkpoint_stays_loadable(tmp_path: Path) -> None:
    proc = _start(["xor", "--k", "1", "--seeds", "0", "--jobs", "1", *LONG], tmp_path)
    ckpt = tmp_path / "k1_seed0" / train.CHECKPOINT
    try:
        _wait_for([ckpt], proc)
        proc.terminate()
        assert proc.wait(timeout=60) == 143
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "terminated" in one_line(proc.stderr.read())
    assert train.load_checkpoint(ckpt)["step"] % 10 == 0
    assert [p.name for p in ckpt.parent.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("delay", [0.3, 1.0, 1.5, 2.5])
def test_ctrl_c_while_the_command_imports_is_one_line_and_exit_130(tmp_path: Path, delay: float) -> None:
    proc = _start(["xor", "--k", "1", "--seeds", "0", *LONG], tmp_path / "run")
    time.sleep(delay)  # torch, SciPy and the experiments are still being imported
    os.killpg(proc.pid, signal.SIGINT)
    # 130, or death by SIGINT, which a shell reports as 130 as well: CPython ends with SIGINT's
    # status when the KeyboardInterrupt, although caught, was raised inside an exec() of source
    # text (dataclasses build their methods so, while a late import runs)
    assert proc.wait(timeout=60) in (130, -signal.SIGINT)
    assert "interrupted" in one_line(proc.stderr.read())


def test_importing_the_library_leaves_ctrl_c_alone() -> None:
    code = "import signal, infdepth; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "True", done.stderr


@pytest.mark.slow
def test_a_killed_torchrun_rank_leaves_one_line_on_the_survivor(tmp_path: Path, rank_pids) -> None:
    out = tmp_path / "xor"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "0",
                "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0"]
    argv = [*torchrun, "-m", "infdepth", "xor", "--k", "3", "--seeds", "0", *LONG, "--jobs", "1",
            "--out", str(out)]
    proc = subprocess.Popen(argv, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for([out / "k3_seed0" / train.CHECKPOINT], proc, limit=180)
        os.kill(rank_pids(str(out))[1], signal.SIGKILL)
        err = proc.communicate(timeout=180)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    ours = [line for line in err.splitlines() if line.startswith("infdepth xor:")]
    # the collective fails ("another process of this run stopped"), or, where the survivor is
    # blocked in C past torchrun's SIGTERM, its TermWatch says "terminated by torchrun (a process ...)"
    assert len(ours) == 1 and "process of this run stopped" in ours[0], err[-3000:]
    assert not any(line.startswith("[rank0]:") for line in err.splitlines()), "rank 0 printed a traceback"
    assert train.load_checkpoint(out / "k3_seed0" / train.CHECKPOINT)["step"] % 10 == 0
