"""The scikit-learn kernel shows its real arguments, and the docs state its defaults and cost."""

from __future__ import annotations

import inspect
import pydoc
import re
from pathlib import Path

from infdepth.limits import InfiniteDepthKernel

DOCS = Path(__file__).resolve().parents[2] / "docs" / "limits.md"
ARGS = ["activation", "t1", "kind", "sigma_b", "sigma_w", "steps"]


def test_signature_and_help_show_the_constructor_arguments() -> None:
    assert list(inspect.signature(InfiniteDepthKernel).parameters) == ARGS
    kernel = InfiniteDepthKernel(kind="nngp")
    assert list(inspect.signature(type(kernel)).parameters) == ARGS  # the scikit-learn subclass too
    shown = pydoc.render_doc(InfiniteDepthKernel, renderer=pydoc.plaintext).splitlines()
    header = shown[shown.index("class InfiniteDepthKernel(builtins.object)") + 1]  # help()'s call line
    assert "*args" not in header and "kind: 'str' = 'ntk'" in header and "steps: 'int' = 64" in header


def test_the_docs_table_states_the_defaults_of_the_signature_and_the_cost() -> None:
    row = next(line for line in DOCS.read_text().splitlines() if line.startswith("| `InfiniteDepthKernel("))
    documented = re.match(r"\| `InfiniteDepthKernel\((.*?)\)`", row)
    assert documented is not None
    defaults = {name: p.default for name, p in inspect.signature(InfiniteDepthKernel).parameters.items()}
    expected = ", ".join(f"{name}={value!r}".replace("'", '"') for name, value in defaults.items())
    assert documented.group(1) == expected
    assert f"default `steps={defaults['steps']}`" in row and "Cost per activation" in row
