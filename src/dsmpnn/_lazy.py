"""Lazy packages: ``from dsmpnn.graph import partition`` imports only the submodule that defines it.

A package ``__init__`` lists ``_LAZY = {attribute: submodule}`` and calls ``lazy_package(__name__)``; each
attribute's submodule is imported on first access, so importing one light submodule of a package (the CLI's option
tables, the launcher of ``--nproc`` ranks) does not import torch, scipy or matplotlib through its siblings.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any

__all__ = ["LazyPackage", "lazy_package"]


class LazyPackage(ModuleType):
    """A package module whose ``_LAZY`` attributes are imported on first access."""

    def __getattr__(self, name: str) -> Any:
        lazy = self.__dict__.get("_LAZY", {})
        if name not in lazy:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{self.__name__}.{lazy[name]}"), name)
        ModuleType.__setattr__(self, name, value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        # importing submodule P.check binds it to P.check; where the package exports a function of the same name
        # (dsmpnn.graph.partition), the function keeps the name, as with an eager `from P.partition import partition`
        if (isinstance(value, ModuleType) and self.__dict__.get("_LAZY", {}).get(name) == name
                and value.__name__ == f"{self.__name__}.{name}"):
            value = getattr(value, name)
        ModuleType.__setattr__(self, name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(self.__dict__) | set(self.__dict__.get("_LAZY", {})))


def lazy_package(name: str, cls: type[LazyPackage] = LazyPackage) -> None:
    """Make the imported package ``name`` a :class:`LazyPackage` (or subclass ``cls``)."""
    sys.modules[name].__class__ = cls
