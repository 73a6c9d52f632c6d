"""Package front doors that load their modules on first use (PEP 562).

A package's `__init__` names what callers may use; importing every module
behind those names up front would make the lightest command pay for trio,
httpx and SQLite. `exports` gives a package a module-level `__getattr__`
that imports a name's module only when the name is first looked up.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def exports(package: str, homes: dict[str, str]) -> Callable[[str], Any]:
    """`__getattr__` for `package`: each name in `homes` comes from the module named there."""

    def __getattr__(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(f".{homes[name]}", package), name)

    return __getattr__
