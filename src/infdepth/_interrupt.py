"""Ctrl-C while the ``infdepth`` command is still starting: one line and exit 130, no traceback.

Importing torch and SciPy takes seconds; a Ctrl-C then would print a long traceback from
inside them.  ``infdepth/__init__.py`` imports this module first; it acts only when this
process *is* the command (``infdepth ...``, ``python -m infdepth ...``), never when a
program imports the library.  :func:`infdepth.cli.main` hands Ctrl-C back to Python's
``KeyboardInterrupt`` once the imports are done.
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
