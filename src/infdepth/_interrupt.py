"""Ctrl-C while the ``infdepth`` command is still starting: one line and exit 130, no traceback.

Importing torch and SciPy takes seconds; a Ctrl-C then would print a long traceback from
inside them.  ``infdepth/__init__.py`` imports this module first; it acts only when this
process *is* the command (``infdepth ...``, ``python -m infdepth ...``), never when a
program imports the library.  :func:`infdepth.cli.main` hands Ctrl-C back to Python's
``KeyboardInterrupt`` once the imports are done.

:class:`TermWatch` makes a SIGTERM end the command within seconds even where its clean
exit cannot run (the main thread blocked in C).
"""

from __future__ import annotations

import os
import signal
import sys
import threading


def _is_command() -> bool:
    argv = list(getattr(sys, "orig_argv", []))
    ran = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else ""
    script = os.path.basename(sys.argv[0]) if sys.argv else ""
    return script == "infdepth" or ran in ("infdepth", "infdepth.cli")


def _interrupted(signum: int, frame: object) -> None:
    os.write(2, b"infdepth: interrupted\n")
    os._exit(130)  # nothing is written yet: the run folder is opened after the imports


if _is_command() and threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, _interrupted)


class TermWatch:
    """End the command hard when the clean exit of a SIGTERM does not come.

    The clean exit (``Terminated`` raised on the main thread) waits for the main thread to
    run Python again; blocked in C, in a collective or a store wait whose peer was killed,
    it may never do so, and torchrun, which sends the survivors SIGTERM when a rank dies,
    kills them with SIGKILL 30 s later, with nothing said.  Python writes every handled
    signal's number to the wakeup fd, whichever thread took it; the watch thread hears a
    SIGTERM there, waits ``grace`` seconds and, if the command is still running, says its
    one line (unless the command said it already: :meth:`settled`) and exits with 143.
    Checkpoints are atomic, so a hard exit loses at most the one being written.
    """

    def __init__(self, name: str, grace: float = 10.0) -> None:
        self._heard, tell = os.pipe()
        os.set_blocking(tell, False)
        self._tell, self._name, self._grace = tell, name, grace
        self._old = signal.set_wakeup_fd(tell, warn_on_full_buffer=False)
        self._said, self._stop = threading.Event(), threading.Event()
        threading.Thread(target=self._watch, name="term-watch", daemon=True).start()

    def _watch(self) -> None:
        import select
        import time

        while not self._stop.is_set():
            if select.select([self._heard], [], [], 0.5)[0] and signal.SIGTERM in os.read(self._heard, 64):
                time.sleep(self._grace)
                if self._stop.is_set():
                    return
                if not self._said.is_set():
                    why = " by torchrun (a process of this run stopped, or torchrun did)" if (
                        int(os.environ.get("WORLD_SIZE", "1") or 1) > 1) else ""
                    line = f"infdepth {self._name}: terminated{why}; the last checkpoint is intact\n"
                    os.write(2, line.encode())
                os._exit(143)

    def settled(self) -> None:
        """The command has said its one line: a hard exit stays silent."""
        self._said.set()

    def close(self) -> None:
        """The command returned: stop watching, give the wakeup fd back."""
        self._stop.set()
        signal.set_wakeup_fd(self._old)
        os.close(self._tell)
