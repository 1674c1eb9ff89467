"""Regular grids as :class:`MeshSample` s, and writing stacks of grids as a dataset.

Orientation: an ``[H, W, ...]`` array is indexed ``[i, j]`` with axis 0 along y and axis 1 along x, so row 0 is
the bottom of the box and column 0 its left side. Nodes are numbered row-major, ``node = i * W + j`` (what
``reshape(H * W, C)`` gives), and the ``(H - 1)(W - 1)`` cells are counter-clockwise quads
``(i, j) -> (i, j + 1) -> (i + 1, j + 1) -> (i + 1, j)``.

Where the nodes sit (:class:`GridLayout`): node ``(i, j)`` is at ``(x_j, y_i)`` in the box
``bbox = (xmin, xmax, ymin, ymax)`` (default the unit square), with ``x_j = xmin + t_j (xmax - xmin)`` and
``y_i = ymin + s_i (ymax - ymin)``; the fractions ``t_j`` (and ``s_i`` alike, with H) are

- ``endpoint`` (default): ``t_j = j / (W - 1)``. Both walls are nodes: the first and last columns sit on
  ``x = xmin`` and ``x = xmax``. The grids of ``generate darcy`` and of most finite-difference solvers.
- ``stride``: ``t_j = j / W``. A vertex grid with the far wall left out (a periodic grid, or one subsampled by
  striding): column 0 is on ``x = xmin``, the last column one spacing short of ``x = xmax``. Taking such a grid
  ``[::k]`` (k dividing W) keeps the convention, so a 32 x 32 file and its ``[::2, ::2]`` 16 x 16 version put
  their shared nodes at the same positions (node ``2i`` of the 32 grid = node ``i`` of the 16 grid = ``i / 16``).

``stride_of = (NH, NW)``: the arrays are a grid of ``NH x NW`` nodes (in the convention above) taken ``[::kh, ::kw]``
from node 0; the step ``k`` is the one integer with ``ceil(N / k) = W`` (the node count ``range(0, N, k)`` gives),
and ``t_j = j k / (N - 1)`` (endpoint) or ``t_j = j k / N`` (stride). E.g. the 421 x 421 endpoint Darcy grid taken
``[::8, ::8]`` has 53 x 53 nodes at ``8 j / 420``, its last node at 416/420, not on the wall.

Fractions are computed as one integer divided by another, so the shared nodes of a grid and of its subsampled
version get bit-identical coordinates. The boundary flag (:func:`boundary_mask`) marks the nodes within a tolerance
(1e-9 of the box size) of the box's edges: with ``stride`` the last row and column are not boundary nodes.

Shared by the Darcy generator (:mod:`dsmpnn.data.darcy`) and the grid importer (:mod:`dsmpnn.data.grid_import`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from dsmpnn.data.dataset import Field, Manifest, statistics_split, write_dataset
from dsmpnn.data.sample import MAX_COORDINATE, MeshSample
from dsmpnn.errors import ConfigError, DatasetError

__all__ = ["SPLIT_NAMES", "COORDS", "UNIT_SQUARE", "GridLayout", "grid_positions", "grid_quads", "boundary_mask",
           "grid_to_sample", "parse_splits", "assign_splits", "write_grid_samples", "write_grid_dataset"]

SPLIT_NAMES = ("train", "val", "test")
COORDS = ("endpoint", "stride")
UNIT_SQUARE = (0.0, 1.0, 0.0, 1.0)
BOUNDARY_TOLERANCE = 1e-9
"""A node is on the box's boundary when within this fraction of the box size of an edge."""


@dataclass(frozen=True)
class GridLayout:
    """Where the nodes of an ``[H, W]`` grid sit (see the module docstring for the formulas).

    ``coords``: ``"endpoint"`` or ``"stride"``; ``bbox``: ``(xmin, xmax, ymin, ymax)``; ``stride_of``: ``(NH, NW)``,
    the node counts of the grid the arrays were taken from with a step, or ``None`` (the arrays are that grid).
    """

    coords: str = "endpoint"
    bbox: tuple[float, float, float, float] = UNIT_SQUARE
    stride_of: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.coords not in COORDS:
            raise ConfigError(f"grid coordinates {self.coords!r}: expected one of {', '.join(COORDS)}")
        box = tuple(float(v) for v in self.bbox)
        if len(box) != 4 or not all(math.isfinite(v) and abs(v) <= MAX_COORDINATE for v in box):
            raise ConfigError(f"bbox {list(self.bbox)}: expected four finite numbers xmin,xmax,ymin,ymax within "
                              f"±{MAX_COORDINATE:.0e}")
        if not (box[0] < box[1] and box[2] < box[3]):
            raise ConfigError(f"bbox {','.join(f'{v:g}' for v in box)}: expected xmin < xmax and ymin < ymax "
                              "(xmin,xmax,ymin,ymax)")
        object.__setattr__(self, "bbox", box)
        if self.stride_of is not None:
            of = tuple(int(v) for v in self.stride_of)
            if len(of) != 2 or min(of) < 2:
                raise ConfigError(f"stride-of {list(self.stride_of)}: expected node counts N >= 2 (or NH,NW)")
            object.__setattr__(self, "stride_of", of)

    def steps(self, h: int, w: int) -> tuple[int, int]:
        """The steps ``(kh, kw)`` that take the ``stride_of`` grid to ``h x w`` nodes ((1, 1) without it)."""
        _check_grid_size(h, w)
        if self.stride_of is None:
            return 1, 1
        return (_step(self.stride_of[0], h, "H", "rows"), _step(self.stride_of[1], w, "W", "columns"))

    def fractions(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """``(s [H], t [W])``: the fractions of the box height/width of the rows and columns, in [0, 1]."""
        kh, kw = self.steps(h, w)
        counts = self.stride_of or (h, w)
        return tuple(  # integer / integer: a node shared with a finer grid gets the same float
            (np.arange(n, dtype=np.int64) * k) / float(c - 1 if self.coords == "endpoint" else c)
            for n, k, c in ((h, kh, counts[0]), (w, kw, counts[1]))
        )

    def positions(self, h: int, w: int) -> np.ndarray:
        """Node positions ``[H * W, 2]`` as ``(x_j, y_i)``, row-major (``node = i * W + j``)."""
        s, t = self.fractions(h, w)
        xmin, xmax, ymin, ymax = self.bbox
        x = (1.0 - t) * xmin + t * xmax  # [W], exactly xmin and xmax at t = 0 and 1
        y = (1.0 - s) * ymin + s * ymax  # [H]
        yy, xx = np.meshgrid(y, x, indexing="ij")  # [H, W] each
        return np.stack([xx.ravel(), yy.ravel()], axis=1)

    def boundary(self, h: int, w: int) -> np.ndarray:
        """``[H, W]`` float array: 1 on the nodes within the tolerance of the box's edges, 0 elsewhere."""
        pos = self.positions(h, w)
        xmin, xmax, ymin, ymax = self.bbox
        tol = BOUNDARY_TOLERANCE * max(xmax - xmin, ymax - ymin)
        x, y = pos[:, 0], pos[:, 1]
        on = ((np.abs(x - xmin) <= tol) | (np.abs(x - xmax) <= tol) | (np.abs(y - ymin) <= tol)
              | (np.abs(y - ymax) <= tol))
        return on.reshape(h, w).astype(np.float64)

    def describe(self, h: int, w: int) -> str:
        """One phrase for the manifest description: the convention, its formula and the box."""
        xmin, xmax, ymin, ymax = self.bbox
        box = f"[{xmin:g}, {xmax:g}] x [{ymin:g}, {ymax:g}]"
        if self.stride_of is None:
            d = "(W - 1)" if self.coords == "endpoint" else "W"
            formula = f"x_j = xmin + j (xmax - xmin) / {d}"
        else:
            kh, kw = self.steps(h, w)
            n = self.stride_of[1] - 1 if self.coords == "endpoint" else self.stride_of[1]
            formula = (f"a {self.stride_of[0]} x {self.stride_of[1]} grid taken [::{kh}, ::{kw}], "
                       f"x_j = xmin + {kw} j (xmax - xmin) / {n}")
        return f"{h}x{w} grid, {self.coords} nodes ({formula}, y alike) on {box}"

    def to_json(self, h: int, w: int) -> dict:
        """The manifest's ``grid`` entry."""
        obj = {"coords": self.coords, "bbox": list(self.bbox), "shape": [h, w]}
        if self.stride_of is not None:
            obj["stride_of"] = list(self.stride_of)
            obj["step"] = list(self.steps(h, w))
        return obj


def _step(count: int, n: int, axis: str, what: str) -> int:
    """The step k with ``len(range(0, count, k)) == n``; a ConfigError when there is none or more than one."""
    if n > count:
        raise ConfigError(f"stride-of {count}: the arrays have {n} {what} ({axis}), more than the {count} of the grid "
                          "they would be taken from")
    k = -(-count // n)  # the smallest k with ceil(count / k) <= n
    fits = [m for m in (k, k + 1) if -(-count // m) == n]
    if not fits:
        raise ConfigError(f"stride-of {count}: {n} {what} ({axis}) are not a {count}-node grid taken every k-th "
                          f"node for any k (ceil({count} / k) = {n} has no whole solution)")
    if len(fits) > 1:
        hi = max(m for m in range(k, count + 1) if -(-count // m) == n)
        raise ConfigError(f"stride-of {count}: {n} {what} ({axis}) fit several steps k = {k}..{hi} "
                          f"(ceil({count} / k) = {n}); this grid is too coarse to tell where its nodes sit")
    return fits[0]


def grid_positions(h: int, w: int, layout: GridLayout | None = None) -> np.ndarray:
    """Node positions ``[H * W, 2]`` of an H x W grid (default: endpoint nodes on the unit square), row-major
    (``node = i * W + j``)."""
    return (layout or GridLayout()).positions(h, w)


def grid_quads(h: int, w: int) -> np.ndarray:
    """Counter-clockwise quads ``[(H - 1)(W - 1), 4]`` of an H x W grid (node indices, row-major)."""
    _check_grid_size(h, w)
    node = np.arange(h * w, dtype=np.int64).reshape(h, w)
    return np.stack([node[:-1, :-1], node[:-1, 1:], node[1:, 1:], node[1:, :-1]], axis=-1).reshape(-1, 4)


def boundary_mask(h: int, w: int, layout: GridLayout | None = None) -> np.ndarray:
    """``[H, W]`` float array: 1 on the nodes on the box's boundary, 0 elsewhere (default: endpoint nodes on the
    unit square, where that is the first and last rows and columns)."""
    return (layout or GridLayout()).boundary(h, w)


def grid_to_sample(inputs: np.ndarray, targets: np.ndarray | None, name: str = "grid",
                   layout: GridLayout | None = None) -> MeshSample:
    """Turn one grid's fields into a :class:`MeshSample` (quads, row-major nodes, positions from ``layout``,
    default endpoint nodes on the unit square). Bool and integer fields are cast to float64.

    Shapes:
        inputs:  [H, W, F]  input fields (axis 0 along y, axis 1 along x)
        targets: [H, W, T]  target fields, or ``None``
        returns: MeshSample with pos [H*W, 2], x [H*W, F], y [H*W, T], cells [(H-1)(W-1), 4] ("quad")
    """
    inputs = _real(inputs)
    if inputs.ndim != 3:
        raise DatasetError(f"sample '{name}': grid inputs have shape {inputs.shape}, expected [H, W, F]")
    h, w, f = inputs.shape
    y = None
    if targets is not None:
        targets = _real(targets)
        if targets.ndim != 3 or targets.shape[:2] != (h, w):
            raise DatasetError(
                f"sample '{name}': grid targets have shape {targets.shape}, expected [H, W, T] with H={h}, W={w}"
            )
        y = targets.reshape(h * w, targets.shape[2])
    return MeshSample(grid_positions(h, w, layout), inputs.reshape(h * w, f), y, grid_quads(h, w), "quad", name=name)


def _real(a: object) -> np.ndarray:
    """``a`` as an array; bool (0/1) and integers become float64, other dtypes are left to MeshSample to judge."""
    arr = np.asarray(a)
    if arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.float64)
    return arr


def parse_splits(text: str | Sequence[float], need_train: bool = True) -> tuple[float, float, float]:
    """``"0.8,0.1,0.1"`` (or a sequence) -> validated (train, val, test) fractions that sum to 1.

    With ``need_train=False`` the train fraction may be 0 (a dataset to evaluate on, e.g. ``0,0,1``)."""
    if isinstance(text, str):
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError:
            raise ConfigError(f"split {text!r}: expected three comma-separated fractions like 0.8,0.1,0.1") from None
    else:
        values = [float(v) for v in text]
    if len(values) != 3:
        raise ConfigError(f"split {text!r}: got {len(values)} fractions, expected 3 (train,val,test)")
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise ConfigError(f"split {text!r}: fractions must be >= 0")
    if need_train and values[0] <= 0:
        raise ConfigError(f"split {text!r}: fractions must be >= 0 and the train fraction > 0")
    if abs(sum(values) - 1.0) > 1e-6:
        raise ConfigError(f"split {text!r}: fractions sum to {sum(values):g}, expected 1")
    return values[0], values[1], values[2]


def assign_splits(n: int, splits: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> list[str]:
    """Split name of each of ``n`` samples, from a seeded permutation.

    Counts are the fractions times ``n`` rounded by largest remainder; a split with a positive fraction gets at
    least one sample when ``n`` allows it (taken from the largest split), so train gets one unless its fraction is 0.
    """
    fracs = parse_splits(splits, need_train=False)
    if n < 1:
        raise ConfigError(f"cannot split {n} samples, expected at least 1")
    exact = [f * n for f in fracs]
    counts = [int(math.floor(e)) for e in exact]
    for k in sorted(range(3), key=lambda k: counts[k] - exact[k])[: n - sum(counts)]:
        counts[k] += 1
    for k in range(3):
        big = max(range(3), key=lambda m: counts[m])
        if fracs[k] > 0 and counts[k] == 0 and counts[big] > 1:
            counts[big] -= 1
            counts[k] += 1
    labels = np.repeat(np.array(SPLIT_NAMES), counts)  # [n] in split order
    perm = np.random.default_rng(seed).permutation(n)  # sample perm[r] gets the r-th label
    out = np.empty(n, dtype=object)
    out[perm] = labels
    return [str(s) for s in out]


def write_grid_samples(
    out: str | os.PathLike,
    grids: Iterable[tuple[np.ndarray, np.ndarray]],
    n: int,
    input_fields: Sequence[Field],
    target_fields: Sequence[Field],
    name: str,
    splits: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    description: str = "",
    progress: bool = False,
    layout: GridLayout | None = None,
    shape: tuple[int, int] | None = None,
) -> Manifest:
    """Stream ``n`` grids ``(inputs [H, W, F], targets [H, W, T])`` into a dataset directory.

    Sample ``k`` of ``grids`` goes to the split :func:`assign_splits` gives it and is written as
    ``samples/<name>_<k>.npz``; nothing is kept in memory, so the grids may be produced lazily (e.g. solved).
    Nodes sit where ``layout`` says (default: endpoint nodes on the unit square); with ``shape = (H, W)`` every grid
    must have it, and the manifest records the layout (its ``grid`` entry). With a train fraction of 0 the
    statistics are computed on the samples written (``stats.computed_on``: the one split they are in, or ``all``).
    """
    layout = layout or GridLayout()
    if shape is not None:
        layout.steps(*shape)  # a stride_of that does not fit fails before anything is written
    fracs = parse_splits(splits, need_train=False)
    labels = assign_splits(n, fracs, seed)
    stats_on = statistics_split(labels)

    def pairs():
        it = tqdm(grids, total=n, desc=f"writing {name}", unit="sample", disable=not progress, leave=False)
        k = -1
        for k, (inp, tgt) in enumerate(it):
            if k >= n:
                raise DatasetError(f"{name}: got more than the {n} grids announced")
            if shape is not None and tuple(np.shape(inp)[:2]) != tuple(shape):
                raise DatasetError(f"{name}: grid {k} has {np.shape(inp)[0]} x {np.shape(inp)[1]} nodes, expected "
                                   f"{shape[0]} x {shape[1]} like the others")
            yield labels[k], grid_to_sample(inp, tgt, name=name, layout=layout)
        if k + 1 != n:
            raise DatasetError(f"{name}: got {k + 1} grids, expected {n}")

    grid = layout.to_json(*shape) if shape is not None else None
    return write_dataset(out, pairs(), list(input_fields), list(target_fields), name, description,
                         stats_on=stats_on, grid=grid)


def write_grid_dataset(
    out: str | os.PathLike,
    inputs: np.ndarray,
    targets: np.ndarray,
    input_names: Sequence[str],
    target_names: Sequence[str],
    name: str,
    splits: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    description: str = "",
    progress: bool = False,
    units: dict[str, str] | None = None,
    layout: GridLayout | None = None,
) -> Manifest:
    """Write stacks of grids as a dataset (nodes where ``layout`` says, default endpoint nodes on the unit square).

    Shapes:
        inputs:  [S, H, W, F]  with ``F = len(input_names)``  (axis 1 along y, axis 2 along x)
        targets: [S, H, W, T]  with ``T = len(target_names)``
    ``units`` maps field names to units (default "").
    """
    if inputs.ndim != 4 or inputs.shape[3] != len(input_names):
        raise DatasetError(f"{name}: inputs have shape {inputs.shape}, expected [S, H, W, {len(input_names)}] "
                           f"for input fields {list(input_names)}")
    if targets.ndim != 4 or targets.shape[3] != len(target_names):
        raise DatasetError(f"{name}: targets have shape {targets.shape}, expected [S, H, W, {len(target_names)}] "
                           f"for target fields {list(target_names)}")
    if inputs.shape[:3] != targets.shape[:3]:
        raise DatasetError(f"{name}: inputs have shape {inputs.shape} and targets {targets.shape}; "
                           "expected the same [S, H, W]")
    units = units or {}
    return write_grid_samples(
        out, zip(inputs, targets), inputs.shape[0],
        [Field(f, units.get(f, "")) for f in input_names], [Field(f, units.get(f, "")) for f in target_names],
        name, splits, seed, description, progress, layout, inputs.shape[1:3],
    )


def _check_grid_size(h: int, w: int) -> None:
    if h < 2 or w < 2:
        raise DatasetError(f"a grid needs at least 2 x 2 nodes, got H={h}, W={w}")
