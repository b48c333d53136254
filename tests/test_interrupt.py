"""A SIGTERM ends the command even when its clean exit never comes (`infdepth._interrupt.TermWatch`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

# a command whose SIGTERM handler runs but whose clean exit never comes (as when the main
# thread is blocked in a collective whose peer was killed); "settled" says its line first
SCRIPT = """
import signal, sys, time
from infdepth._interrupt import TermWatch
signal.signal(signal.SIGTERM, lambda signum, frame: None)
watch = TermWatch("xor", grace=0.5)
if sys.argv[1] == "settled":
    print("infdepth xor: another process of this run stopped", file=sys.stderr, flush=True)
    watch.settled()
if sys.argv[1] == "closed":
    watch.close()
print("ready", flush=True)
time.sleep(30 if sys.argv[1] != "closed" else 3)
"""


def run(mode: str, world: int = 1) -> tuple[int, str, float]:
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, mode], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, WORLD_SIZE=str(world)))
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    return proc.returncode, err, time.monotonic() - start


def test_a_lost_clean_exit_ends_the_command_with_one_line_after_the_grace() -> None:
    code, err, seconds = run("plain")
    assert code == 143 and err == "infdepth xor: terminated; the last checkpoint is intact\n"
    assert 0.5 <= seconds < 10


def test_under_torchrun_the_line_says_why_the_survivor_was_terminated() -> None:
    code, err, _ = run("plain", world=2)
    assert code == 143 and err == ("infdepth xor: terminated by torchrun (a process of this run stopped, "
                                   "or torchrun did); the last checkpoint is intact\n")


def test_a_command_that_said_its_line_exits_silently() -> None:
    code, err, _ = run("settled")
    assert code == 143 and err == "infdepth xor: another process of this run stopped\n"


def test_a_closed_watch_does_nothing() -> None:
    code, err, seconds = run("closed")
    assert code == 0 and err == "" and seconds >= 2
