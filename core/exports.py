"""Lazy public APIs for Aegle's packages (PEP 562): a package's ``__init__`` names its exports in a table and
imports each one only when it is first used, so ``import server`` does not start FastAPI and ``import gan`` does
not import torch.

Each package's ``__init__`` holds ``_EXPORTS = {public name: defining module}`` (a literal dict:
tests/test_layers.py reads it to check that other packages import only these names) and::

    __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
    __all__ = sorted(_EXPORTS)

An entry whose module is ``<package>.<name>`` exports that submodule itself (``from core import topics``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, str], attributes: Mapping[str, str] | None = None
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: each exported name is imported from its module on first use
    and kept in the package's namespace. ``attributes`` maps a public name to the attribute it exports when the
    two differ."""
    namespace = importlib.import_module(package).__dict__
    renamed = dict(attributes or {})

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        defining = importlib.import_module(module)
        value = defining if module == f"{package}.{name}" else getattr(defining, renamed.get(name, name))
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__
