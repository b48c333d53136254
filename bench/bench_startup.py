"""Start-up cost (issue 29): fresh interpreters importing the library and printing help.

Goals: ``from infdepth import ...`` (every public name a user of the three routes needs)
within 0.2 s of ``import torch``; ``infdepth --help`` within 0.5 s.  Each contender is a
fresh ``python`` process (the OS page cache is warm after the warm-up round), so the
figures include the interpreter's own start (``python -c pass``, printed beside them).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable

from _harness import Harness, add_arguments

NAMES = "InfiniteDepth, ODEBlock, odeint, fit, attach, limits"


def _python(code: str) -> Callable[[], object]:
    return lambda: subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.DEVNULL)


def _cli(*argv: str) -> Callable[[], object]:
    return lambda: subprocess.run([sys.executable, "-m", "infdepth", *argv], check=True,
                                  stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    h = Harness(parser.parse_args(), "start-up: imports and --help in fresh interpreters")
    t = h.time({
        "python": _python("pass"),
        "import torch": _python("import torch"),
        "import infdepth": _python("import infdepth"),
        "public names": _python(f"from infdepth import {NAMES}"),
        "infdepth --help": _cli("--help"),
        "infdepth xor --help": _cli("xor", "--help"),
    })
    h.times("startup", t)
    h.ratio("public_names_minus_import_torch_s", t["public names"] - t["import torch"], goal=("<=", 0.2))
    h.ratio("help_s", t["infdepth --help"], goal=("<=", 0.5))
    h.ratio("subcommand_help_s", t["infdepth xor --help"], goal=("<=", 0.5))
    h.finish()


if __name__ == "__main__":
    main()
