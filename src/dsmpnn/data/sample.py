"""The in-memory mesh sample every part of dsmpnn works on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dsmpnn.errors import DatasetError
from dsmpnn.messages import brief

__all__ = ["CELL_NODES", "MAX_COORDINATE", "MeshSample", "check_cells", "duplicate_positions", "sample_from_blocks"]

MAX_COORDINATE = 1e15
"""The largest node coordinate (in magnitude) a sample may have: beyond it float64 no longer resolves unit
spacings, and squared distances in the neighbour search overflow long before float64's 1.8e308."""

CELL_NODES = {"vertex": 1, "line": 2, "triangle": 3, "quad": 4, "tetra": 4, "pyramid": 5, "wedge": 6,
              "hexahedron": 8, "line3": 3, "triangle6": 6, "quad8": 8, "quad9": 9, "tetra10": 10,
              "hexahedron20": 20, "hexahedron27": 27, "triangle7": 7, "pyramid13": 13, "wedge15": 15, "wedge18": 18}
"""Nodes per cell of the cell types a sample may carry (meshio's names; each one is written to VTU by meshio)."""


@dataclass
class MeshSample:
    """One mesh with its input and target node fields.

    Shapes:
        pos:   [N, d]  node positions, d = 2 or 3 (float64)
        x:     [N, F]  input node fields (coefficients, geometry, boundary flags...)
        y:     [N, T]  target node fields, or ``None`` for a sample to predict on
        cells: [M, k]  optional cell connectivity (node indices) of type ``cell_type``, for plots and VTU output
        extra_cells:   further cell blocks ``(type, [M_b, k_b])`` of a mesh with several cell types (triangles and
                       quads, tetrahedra, hexahedra and wedges...); ``cells``/``cell_type`` is then the first block.
                       :attr:`cell_blocks` lists them all. Needs ``cells``.
    """

    pos: np.ndarray
    x: np.ndarray
    y: np.ndarray | None = None
    cells: np.ndarray | None = None
    cell_type: str | None = None
    name: str = "sample"
    extra_cells: tuple[tuple[str, np.ndarray], ...] = ()

    def __post_init__(self) -> None:
        where = f"sample '{self.name}'"
        self.pos = _float_array(self.pos, "pos", where)
        self.x = _float_array(self.x, "x", where)
        if self.pos.ndim != 2 or self.pos.shape[1] not in (2, 3):
            raise DatasetError(f"{where}: field 'pos' has shape {self.pos.shape}, expected [N, d] with d = 2 or 3")
        n = self.pos.shape[0]
        if n == 0:
            raise DatasetError(f"{where}: the mesh is empty (field 'pos' has 0 nodes)")
        far = float(np.abs(self.pos).max())
        if far > MAX_COORDINATE:
            node = int(np.abs(self.pos).max(axis=1).argmax())
            raise DatasetError(f"{where}: field 'pos' has a coordinate of {far:.3g} (node {node}), expected "
                               f"coordinates within ±{MAX_COORDINATE:.0e}; a node that far is a broken mesh file")
        count, pair = duplicate_positions(self.pos)
        if count:
            i, j = pair
            raise DatasetError(f"{where}: field 'pos' has {count} duplicate node position(s) (a node at the same place "
                               f"as an earlier one), the first: nodes {i} and {j} at {self.pos[i].tolist()}; every "
                               "node needs its own position, merge or remove the duplicates")
        if self.x.ndim != 2 or self.x.shape[0] != n:
            raise DatasetError(f"{where}: field 'x' has shape {self.x.shape}, expected [N, F] with N={n}")
        if self.y is not None:
            self.y = _float_array(self.y, "y", where)
            if self.y.ndim != 2 or self.y.shape[0] != n:
                raise DatasetError(f"{where}: field 'y' has shape {self.y.shape}, expected [N, T] with N={n}")
        if self.cells is not None or self.cell_type is not None:
            if self.cells is None:
                raise DatasetError(f"{where}: 'cell_type' {brief(self.cell_type)} is given without 'cells'")
            if self.cell_type is None:
                raise DatasetError(f"{where}: field 'cells' is given without 'cell_type' (e.g. 'triangle', 'quad')")
            self.cells = check_cells(self.cells, self.cell_type, n, where)
        extra = []
        for b, block in enumerate(self.extra_cells, start=1):
            if self.cells is None:
                raise DatasetError(f"{where}: cell block {b} is given without the first block 'cells'")
            if not (isinstance(block, tuple | list) and len(block) == 2 and isinstance(block[0], str)):
                raise DatasetError(f"{where}: cell block {b} is {brief(block)}, expected a pair (cell type, cells)")
            extra.append((block[0], check_cells(block[1], block[0], n, f"{where}: cell block {b}")))
        self.extra_cells = tuple(extra)

    @property
    def num_nodes(self) -> int:
        return int(self.pos.shape[0])

    @property
    def dim(self) -> int:
        return int(self.pos.shape[1])

    @property
    def cell_blocks(self) -> list[tuple[str, np.ndarray]]:
        """Every cell block ``(type, cells [M, k])``: ``cells`` first, then ``extra_cells``; empty without cells."""
        return [] if self.cells is None else [(self.cell_type, self.cells), *self.extra_cells]


def sample_from_blocks(pos: np.ndarray, x: np.ndarray, y: np.ndarray | None,
                       blocks: list[tuple[str, np.ndarray]], name: str = "sample") -> MeshSample:
    """A :class:`MeshSample` with the cell ``blocks`` (any number, the first one as ``cells``/``cell_type``)."""
    if not blocks:
        return MeshSample(pos, x, y, name=name)
    return MeshSample(pos, x, y, blocks[0][1], blocks[0][0], name=name, extra_cells=tuple(blocks[1:]))


def check_cells(cells: object, cell_type: str, n: int, where: str, known: bool = True) -> np.ndarray:
    """``cells`` as an int64 array ``[M, k]`` of node indices in ``[0, n)``; with ``known``, ``cell_type`` must be
    one of :data:`CELL_NODES` and ``k`` its node count. ``where`` starts the messages."""
    if known and cell_type not in CELL_NODES:
        raise DatasetError(f"{where}: 'cell_type' is {brief(cell_type)}, expected one of {', '.join(CELL_NODES)}")
    arr = np.asarray(cells)
    k = CELL_NODES.get(cell_type)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer) or (known and arr.shape[1] != k):
        want = f"[M, {k}] ({cell_type})" if known else "[M, k]"
        raise DatasetError(f"{where}: field 'cells' has shape {arr.shape} and dtype {arr.dtype}, expected an integer "
                           f"array {want}")
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        bad = int(np.count_nonzero((arr < 0) | (arr >= n)))
        raise DatasetError(f"{where}: field 'cells' has {bad} node indices outside [0, {n}) (smallest {arr.min()}, "
                           f"largest {arr.max()})")
    return arr.astype(np.int64, copy=False)


def duplicate_positions(pos: np.ndarray) -> tuple[int, tuple[int, int] | None]:
    """(number of nodes whose position equals an earlier node's, the first such pair (i, j) with i < j and j as
    small as possible, or None). Sorting, O(N log N): ``pos [N, d]``."""
    if len(pos) < 2:
        return 0, None
    order = np.lexsort(pos.T[::-1])  # stable: equal rows keep ascending node order
    srt = pos[order]
    same = np.all(srt[1:] == srt[:-1], axis=1)  # [N - 1] row k + 1 equals row k
    if not same.any():
        return 0, None
    first = np.concatenate([[True], ~same])  # [N] sorted row starts a group of equal positions
    group_head = order[np.flatnonzero(first)][np.cumsum(first) - 1]  # [N] smallest node id of each row's group
    dup = np.flatnonzero(~first)  # sorted rows that repeat an earlier node
    k = dup[np.argmin(order[dup])]
    return int(same.sum()), (int(group_head[k]), int(order[k]))


def _float_array(a: object, field: str, where: str) -> np.ndarray:
    arr = np.asarray(a)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise DatasetError(f"{where}: field '{field}' has dtype {arr.dtype}, expected a real number array")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise DatasetError(f"{where}: field '{field}' has {bad} NaN/Inf values, expected finite numbers")
    return arr
