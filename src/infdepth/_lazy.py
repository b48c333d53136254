"""Public names that load on first use (PEP 562), shared by the packages that export them.

A package lists ``name -> defining module`` and gets back the module-level ``__getattr__``
and ``__dir__`` that import a name's module the first time the name is read; the value then
becomes an ordinary attribute of the package, so later reads cost nothing (issue 29).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(package: str, exports: Mapping[str, str | None], namespace: dict[str, Any]
               ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``.

    Args:
        package: the package's dotted name (``"infdepth"``).
        exports: public name -> the module that defines it; ``None`` for a subpackage
            ``package.name`` itself.
        namespace: the package's ``globals()``, where a loaded name is stored.
    """

    def __getattr__(name: str) -> Any:
        """Load a public name on first use; it is then an ordinary attribute of the package."""
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = exports[name]
        value = importlib.import_module(f"{package}.{name}") if module is None \
            else getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__
