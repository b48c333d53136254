"""The flags derived from an experiment's Config: every command's --help reads cleanly."""

from __future__ import annotations

import re

import pytest

from infdepth.cli import build_parser

COMMANDS = [["xor"], ["images"], ["study"], ["ode", "params"], ["ode", "spiral"], ["ode", "memory"],
            ["limits", "convergence"], ["limits", "inference"]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_flag_states_its_default_once_and_never_as_none(command: list[str]) -> None:
    parser = build_parser()
    sub = parser
    for word in command:  # walk down to the subcommand's own parser
        action = next(a for a in sub._actions if a.__class__.__name__ == "_SubParsersAction")
        sub = action.choices[word]
    text = re.sub(r"\s+", " ", sub.format_help())
    assert "(default: None)" not in text
    for option in sub._actions:
        if option.help and option.option_strings:  # "(default: X)" appended to a worded default
            worded = option.help.replace("%(default)s", "X")
            assert len(re.findall(r"\(default|default:", worded)) <= 1, option.help


@pytest.mark.parametrize("processes", [1, 2])
def test_parallel_imap_returns_every_result_once(processes: int) -> None:
    from infdepth.experiments._common import parallel_imap

    assert sorted(parallel_imap(abs, [-3, 1, -2, 5], processes)) == [1, 2, 3, 5]
    assert list(parallel_imap(abs, [], processes)) == []



WORKER = """
import os, sys, time
from infdepth.experiments import _common
_common._die_with_parent(os.getppid())
try:
    print("ready", flush=True)
    time.sleep(60)  # SIGTERM arrives here: its SystemExit is lost, as in a __del__ or atexit
except SystemExit:
    pass
sys.stdin.buffer.read()  # then blocks in C, as on the task-queue lock a terminating pool holds
"""


def test_a_terminated_worker_ends_even_when_its_clean_exit_is_lost() -> None:
    """SIGTERM ends a pool worker within the grace period although its SystemExit was lost.

    The hang of the two-worker search test: ``Pool.terminate`` sent SIGTERM, a worker's
    SystemExit was ignored (raised in an atexit callback), the worker blocked on the task
    queue's lock that the terminating pool holds, and ``terminate`` waited for it forever.
    """
    import signal
    import subprocess
    import sys
    import time

    from infdepth.experiments._common import TERM_GRACE

    worker = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert worker.stdout is not None and worker.stdout.readline() == b"ready\n"
        sent = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(TERM_GRACE + 30) == 128 + signal.SIGTERM
        assert time.monotonic() - sent >= TERM_GRACE - 0.5  # the clean exit had its chance first
    finally:
        worker.kill()
        worker.wait()
