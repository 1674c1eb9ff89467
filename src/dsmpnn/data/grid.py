"""Regular grids on the unit square as :class:`MeshSample` s, and writing stacks of grids as a dataset.

Orientation: an ``[H, W, ...]`` array is indexed ``[i, j]`` with axis 0 along y and axis 1 along x. Node
``(i, j)`` sits at ``pos = (x_j, y_i) = (j / (W - 1), i / (H - 1))``, so row 0 is the bottom edge ``y = 0`` and
column 0 the left edge ``x = 0``. Nodes are numbered row-major, ``node = i * W + j`` (what ``reshape(H * W, C)``
gives), and the ``(H - 1)(W - 1)`` cells are counter-clockwise quads
``(i, j) -> (i, j + 1) -> (i + 1, j + 1) -> (i + 1, j)``.

Shared by the Darcy generator (:mod:`dsmpnn.data.darcy`) and the grid importer (:mod:`dsmpnn.data.grid_import`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence

import numpy as np
from tqdm import tqdm

from dsmpnn.data.dataset import Field, Manifest, write_dataset
from dsmpnn.data.sample import MeshSample
from dsmpnn.errors import ConfigError, DatasetError

__all__ = ["SPLIT_NAMES", "grid_positions", "grid_quads", "boundary_mask", "grid_to_sample", "parse_splits",
           "assign_splits", "write_grid_samples", "write_grid_dataset"]

SPLIT_NAMES = ("train", "val", "test")


def grid_positions(h: int, w: int) -> np.ndarray:
    """Node positions ``[H * W, 2]`` of an H x W grid on the unit square, row-major (``node = i * W + j``)."""
    _check_grid_size(h, w)
    y, x = np.meshgrid(np.linspace(0.0, 1.0, h), np.linspace(0.0, 1.0, w), indexing="ij")  # [H, W] each
    return np.stack([x.ravel(), y.ravel()], axis=1)  # [H*W, 2] as (x_j, y_i)


def grid_quads(h: int, w: int) -> np.ndarray:
    """Counter-clockwise quads ``[(H - 1)(W - 1), 4]`` of an H x W grid (node indices, row-major)."""
    _check_grid_size(h, w)
    node = np.arange(h * w, dtype=np.int64).reshape(h, w)
    return np.stack([node[:-1, :-1], node[:-1, 1:], node[1:, 1:], node[1:, :-1]], axis=-1).reshape(-1, 4)


def boundary_mask(h: int, w: int) -> np.ndarray:
    """``[H, W]`` float array: 1 on the nodes of the square's boundary, 0 inside."""
    mask = np.ones((h, w))
    mask[1:-1, 1:-1] = 0.0
    return mask


def grid_to_sample(inputs: np.ndarray, targets: np.ndarray | None, name: str = "grid") -> MeshSample:
    """Turn one grid's fields into a :class:`MeshSample` on the unit square (quads, row-major nodes).

    Shapes:
        inputs:  [H, W, F]  input fields (axis 0 along y, axis 1 along x)
        targets: [H, W, T]  target fields, or ``None``
        returns: MeshSample with pos [H*W, 2], x [H*W, F], y [H*W, T], cells [(H-1)(W-1), 4] ("quad")
    """
    inputs = np.asarray(inputs)
    if inputs.ndim != 3:
        raise DatasetError(f"sample '{name}': grid inputs have shape {inputs.shape}, expected [H, W, F]")
    h, w, f = inputs.shape
    y = None
    if targets is not None:
        targets = np.asarray(targets)
        if targets.ndim != 3 or targets.shape[:2] != (h, w):
            raise DatasetError(
                f"sample '{name}': grid targets have shape {targets.shape}, expected [H, W, T] with H={h}, W={w}"
            )
        y = targets.reshape(h * w, targets.shape[2])
    return MeshSample(grid_positions(h, w), inputs.reshape(h * w, f), y, grid_quads(h, w), "quad", name=name)


def parse_splits(text: str | Sequence[float]) -> tuple[float, float, float]:
    """``"0.8,0.1,0.1"`` (or a sequence) -> validated (train, val, test) fractions that sum to 1."""
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
        raise ConfigError(f"split {text!r}: fractions must be >= 0 (0,0,1: a test-only dataset, to evaluate a "
                          "trained run on)")
    if abs(sum(values) - 1.0) > 1e-6:
        raise ConfigError(f"split {text!r}: fractions sum to {sum(values):g}, expected 1")
    return values[0], values[1], values[2]


def assign_splits(n: int, splits: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> list[str]:
    """Split name of each of ``n`` samples, from a seeded permutation.

    Counts are the fractions times ``n`` rounded by largest remainder; a split with a positive fraction gets at
    least one sample when ``n`` allows it (taken from the largest split). ``0,0,1`` makes a test-only dataset.
    """
    fracs = parse_splits(splits)
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
) -> Manifest:
    """Stream ``n`` grids ``(inputs [H, W, F], targets [H, W, T])`` into a dataset directory.

    Sample ``k`` of ``grids`` goes to the split :func:`assign_splits` gives it and is written as
    ``samples/<name>_<k>.npz``; nothing is kept in memory, so the grids may be produced lazily (e.g. solved).
    """
    labels = assign_splits(n, splits, seed)

    def pairs():
        it = tqdm(grids, total=n, desc=f"writing {name}", unit="sample", disable=not progress, leave=False)
        k = -1
        for k, (inp, tgt) in enumerate(it):
            if k >= n:
                raise DatasetError(f"{name}: got more than the {n} grids announced")
            yield labels[k], grid_to_sample(inp, tgt, name=name)
        if k + 1 != n:
            raise DatasetError(f"{name}: got {k + 1} grids, expected {n}")

    return write_dataset(out, pairs(), list(input_fields), list(target_fields), name, description)


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
) -> Manifest:
    """Write stacks of grids as a dataset on the unit square.

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
        name, splits, seed, description, progress,
    )


def _check_grid_size(h: int, w: int) -> None:
    if h < 2 or w < 2:
        raise DatasetError(f"a grid needs at least 2 x 2 nodes, got H={h}, W={w}")
