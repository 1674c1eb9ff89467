"""The in-memory mesh sample every part of dsmpnn works on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dsmpnn.errors import DatasetError

__all__ = ["MeshSample"]


@dataclass
class MeshSample:
    """One mesh with its input and target node fields.

    Shapes:
        pos:   [N, d]  node positions, d = 2 or 3 (float64)
        x:     [N, F]  input node fields (coefficients, geometry, boundary flags...)
        y:     [N, T]  target node fields, or ``None`` for a sample to predict on
        cells: [M, k]  optional cell connectivity (node indices) of type ``cell_type``, for plots and VTU output
    """

    pos: np.ndarray
    x: np.ndarray
    y: np.ndarray | None = None
    cells: np.ndarray | None = None
    cell_type: str | None = None
    name: str = "sample"

    def __post_init__(self) -> None:
        where = f"sample '{self.name}'"
        self.pos = _float_array(self.pos, "pos", where)
        self.x = _float_array(self.x, "x", where)
        if self.pos.ndim != 2 or self.pos.shape[1] not in (2, 3):
            raise DatasetError(f"{where}: field 'pos' has shape {self.pos.shape}, expected [N, d] with d = 2 or 3")
        n = self.pos.shape[0]
        if n == 0:
            raise DatasetError(f"{where}: the mesh is empty (field 'pos' has 0 nodes)")
        if self.x.ndim != 2 or self.x.shape[0] != n:
            raise DatasetError(f"{where}: field 'x' has shape {self.x.shape}, expected [N, F] with N={n}")
        if self.y is not None:
            self.y = _float_array(self.y, "y", where)
            if self.y.ndim != 2 or self.y.shape[0] != n:
                raise DatasetError(f"{where}: field 'y' has shape {self.y.shape}, expected [N, T] with N={n}")
        if self.cells is not None:
            self.cells = np.asarray(self.cells)
            if self.cells.ndim != 2 or not np.issubdtype(self.cells.dtype, np.integer):
                raise DatasetError(
                    f"{where}: field 'cells' has shape {self.cells.shape} and dtype {self.cells.dtype}, "
                    "expected an integer array [M, k]"
                )
            if self.cells.size and (self.cells.min() < 0 or self.cells.max() >= n):
                raise DatasetError(f"{where}: field 'cells' refers to nodes outside [0, {n})")
            if self.cell_type is None:
                raise DatasetError(f"{where}: field 'cells' is given without 'cell_type' (e.g. 'triangle', 'quad')")

    @property
    def num_nodes(self) -> int:
        return int(self.pos.shape[0])

    @property
    def dim(self) -> int:
        return int(self.pos.shape[1])


def _float_array(a: object, field: str, where: str) -> np.ndarray:
    arr = np.asarray(a)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise DatasetError(f"{where}: field '{field}' has dtype {arr.dtype}, expected a real number array")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise DatasetError(f"{where}: field '{field}' has {bad} NaN/Inf values, expected finite numbers")
    return arr
