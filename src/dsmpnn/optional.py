"""Optional dependencies: imported only where a feature needs them, with a one-line error naming the install command.

A plain ``pip install dsmpnn`` carries everything the MPNN needs (train, evaluate, predict, generate, import,
distributed). PyTorch Geometric is needed only by the GCN baseline (``model.kind: gcn``) and by the NNConv
reference of ``dsmpnn bench conv``; it comes with the ``gcn`` extra (``pip install 'dsmpnn[gcn]'``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from dsmpnn.errors import MissingDependency

__all__ = ["PYG_INSTALL", "require"]

PYG_INSTALL = "pip install 'dsmpnn[gcn]'"
"""The command that installs PyTorch Geometric with dsmpnn (from a source tree: ``pip install '.[gcn]'``)."""


def require(module: str, what: str, install: str, alternative: str = "") -> ModuleType:
    """``import module``, or a :class:`MissingDependency` saying that ``what`` needs it and how to install it
    (``install``), plus ``alternative`` (e.g. "or pass --no-nnconv") when given."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        package = module.split(".")[0]
        name = getattr(e, "name", None) or ""
        missing = isinstance(e, ModuleNotFoundError) and (name == package or name.startswith(f"{package}."))
        reason = "is not installed" if missing else f"cannot be imported ({e})"
        raise MissingDependency(f"{what} needs {package}, which {reason}: install it with `{install}`"
                                + (f" {alternative}" if alternative else "")) from None
