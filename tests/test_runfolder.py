"""One process per run folder: a second command on a folder in use is refused before it writes."""

from __future__ import annotations

import fcntl
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infdepth import runfolder
from infdepth.cli import main
from infdepth.errors import InputError

XOR = ["xor", "--steps", "20", "--k", "0", "--seeds", "0", "--no-progress"]


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def holder(tmp_path: Path):
    """Another process holding the lock of a finished run folder, as a running training does."""
    out = tmp_path / "run"
    assert main([*XOR, "--out", str(out)]) == 0
    code = (  # fails (instead of waiting forever) if the finished command still held the folder
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY)\n"
        "for _ in range(100):\n"
        "    try: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); break\n"
        "    except BlockingIOError: time.sleep(0.05)\n"
        "else: print('busy', flush=True); sys.exit(1)\n"
        "print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    yield out
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("mode", [["--resume", "--steps", "40"], ["--overwrite"]])
def test_a_folder_in_use_is_refused_and_left_unchanged(holder: Path, mode: list[str], capsys) -> None:
    before = snapshot(holder)
    assert main([*XOR, "--out", str(holder), *mode]) == 2
    err = capsys.readouterr().err
    assert f"--out={holder} is in use" in err and "Traceback" not in err
    assert snapshot(holder) == before


def test_the_cli_releases_its_folder_when_the_command_ends(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main([*XOR, "--out", str(out)]) == 0
    fd = os.open(out, os.O_RDONLY)
    try:  # would raise BlockingIOError if the finished command still held the folder
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
    assert main([*XOR, "--out", str(out), "--resume", "--steps", "40"]) == 0


def test_one_process_may_open_its_folder_again(tmp_path: Path) -> None:
    out = tmp_path / "run"
    try:
        runfolder.lock(out)
        runfolder.lock(out)  # a study opening a member it opened before: no self-deadlock
        code = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); "
                "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)")
        other = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True)
        assert other.returncode != 0 and "BlockingIOError" in other.stderr
    finally:
        runfolder.release()


def test_two_real_trainings_on_one_folder(tmp_path: Path) -> None:
    """Two `infdepth xor --resume` started together on one run: exactly one trains, one exits 2."""
    out = tmp_path / "run"
    assert main([*XOR, "--out", str(out)]) == 0
    # long enough to outlast the second command on any machine; stopped below with Ctrl-C
    cmd = [sys.executable, "-m", "infdepth.cli", "xor", "--steps", "1000000", "--k", "0", "--seeds", "0",
           "--no-progress", "--out", str(out), "--resume"]
    first = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until the first one holds the folder
        fd = os.open(out, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            break
        finally:
            os.close(fd)
        if first.poll() is not None:
            pytest.fail(f"the first run ended before it was seen holding the folder: {first.stderr.read()}")
        time.sleep(0.02)
    try:
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert first.poll() is None, "the first run should still be training"
    finally:
        first.send_signal(signal.SIGINT)
    assert first.wait(timeout=60) == 130, first.stderr.read()  # interrupted; checkpoint intact
    assert second.returncode == 2 and "is in use" in second.stderr, second.stderr


def test_lock_error_is_an_input_error(holder: Path) -> None:
    with pytest.raises(InputError, match="another process is running there now"):
        runfolder.lock(holder)
