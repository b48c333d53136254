"""The bench harness's idleness check: other processes' CPU counts, the bench's own does not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import _harness  # noqa: E402

pytestmark = pytest.mark.skipif(_harness._busy_seconds() is None,
                                reason="needs Linux's /proc/stat")


def test_a_busy_process_beside_the_bench_is_seen() -> None:
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        others = _harness.others_cpu(1.5)
    finally:
        spinner.kill()
        spinner.wait()
    # the spinner alone takes most of a core (the scheduler may share it with other work)
    assert others is not None and others >= 0.5


def test_the_bench_s_own_cpu_time_is_not_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    # all processes used 3.0 CPU seconds during the window, 2.5 of them this process's own
    busy = iter([100.0, 103.0])
    own = iter([SimpleNamespace(user=10.0, system=1.0), SimpleNamespace(user=12.0, system=1.5)])
    clock = iter([0.0, 1.0])
    monkeypatch.setattr(_harness, "_busy_seconds", lambda: next(busy))
    monkeypatch.setattr(_harness.os, "times", lambda: next(own))
    monkeypatch.setattr(_harness.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(_harness.time, "sleep", lambda s: None)
    assert _harness.others_cpu(1.0) == pytest.approx(0.5)


def test_settle_waits_while_others_are_busy_and_reports_the_last_window(
        monkeypatch: pytest.MonkeyPatch) -> None:
    readings = iter([1.8, 0.9, 0.02])
    clock = iter(range(100))
    monkeypatch.setattr(_harness, "others_cpu", lambda: next(readings))
    monkeypatch.setattr(_harness.time, "monotonic", lambda: float(next(clock)))
    waited, others = _harness.settle(timeout=90.0)
    assert others == pytest.approx(0.02)
    assert waited > 0
    # and gives up after the timeout, returning what it saw
    readings = iter([1.8] * 100)
    clock = iter(range(0, 1000, 40))
    waited, others = _harness.settle(timeout=90.0)
    assert others == pytest.approx(1.8) and waited >= 90
