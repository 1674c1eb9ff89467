"""dsmpnn: sampling-based distributed message-passing neural networks for PDE surrogates on large meshes.

The Python API (imported on first use, so ``import dsmpnn`` stays light; see :mod:`dsmpnn.train.api`)::

    import dsmpnn
    run = dsmpnn.train("configs/darcy.yaml", "data/darcy", "runs/x", overrides=["train.epochs=5"])
    run = dsmpnn.load_run("runs/x")             # or device="cuda"; a Run: config, normalisation, model
    y = run.predict(pos, x)                     # [N, d], [N, F] physical units -> [N, T] physical units (numpy)
    result = run.predict_mesh("mesh.vtu")       # a mesh file or a MeshSample -> MeshPrediction (pred, metrics)

``dsmpnn.train`` is also the package of the training code (``dsmpnn.train.trainer`` ...); calling it trains
(:func:`dsmpnn.train.api.train`). Errors caused by input are :mod:`dsmpnn.errors` classes.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "Config", "MeshPrediction", "MeshSample", "Run", "errors", "load_config", "load_run",
           "train"]

_LAZY = {"load_run": "dsmpnn.train.api", "Run": "dsmpnn.train.api", "MeshPrediction": "dsmpnn.train.api",
         "MeshSample": "dsmpnn.data.sample", "Config": "dsmpnn.train.config", "load_config": "dsmpnn.train.config"}


def __getattr__(name: str) -> Any:
    if name in ("train", "errors"):  # modules: importing one binds it here (dsmpnn.train is callable)
        return importlib.import_module(f"dsmpnn.{name}")
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dsmpnn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
