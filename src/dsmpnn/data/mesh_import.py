r"""Import solver output in any mesh format meshio reads as a dsmpnn dataset (``dsmpnn import mesh``), and read
one such mesh's fields by name (``dsmpnn predict``).

Files: ``.vtu``, ``.vtk``, ``.msh`` (Gmsh), ``.xdmf``/``.xmf`` (one mesh, or a time series: one sample per step),
``.med``, ``.inp`` ... whatever ``meshio.read`` reads. Each file (or time step) is one sample:

- ``pos``: the points; a mesh whose points are 3D with a constant ``z`` (a 2D solver writing VTK) is 2D
  (``dim: 2``), its positions ``(x, y)``. Every file of a dataset has the same dimension; node counts may differ.
- ``x`` / ``y``: the point-data fields named by ``--inputs`` / ``--targets``. A field with several components per
  node is split into named columns (see :func:`component_suffixes`): a vector ``U [N, 3]`` into ``U_x, U_y, U_z``
  (in a 2D mesh: ``U_x, U_y``; ``U_z`` only when named), a tensor ``S [N, 3, 3]`` or ``[N, 9]`` into
  ``S_xx, S_xy, ..., S_zz``, a symmetric tensor ``[N, 6]`` (VTK/ParaView order) into
  ``S_xx, S_yy, S_zz, S_xy, S_yz, S_xz``, other widths into ``F_0, F_1, ...``. ``--inputs U`` takes every
  component, ``--inputs U_x`` one of them. A field that is cell data (one value per cell) is refused unless
  ``cell_data="average"``: then each node gets the volume-weighted average (area in 2D, length for lines) of the
  values of the cells around it, from the cells of the mesh's highest dimension (:func:`cell_to_point`).
- cells: every cell block, blocks of one type merged (mixed triangles and quads, tetrahedra, hexahedra, wedges
  and pyramids ...), so that ``predict`` writes the prediction back on the same cells.

Splits are drawn per file (``split_by="file"``, the default: the steps of one time series stay together, so that
no test step has its neighbour in training) or per sample (``"step"``). A file that lacks a field, has it with
another number of components than the first file, or cannot be read stops the import (:class:`DatasetError`
naming the file and field) and nothing is written (:func:`~dsmpnn.data.dataset.write_dataset` is atomic).

Usage::

    dsmpnn import mesh 'results/*.vtu' --out data/mine --inputs U_inlet,sdf --targets U,p
"""

from __future__ import annotations

import contextlib
import glob
import io
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dsmpnn.data.dataset import Field, Manifest, statistics_split, write_dataset
from dsmpnn.data.grid import assign_splits
from dsmpnn.data.meshfile import cell_blocks, guard_meshio, read_mesh
from dsmpnn.data.paths import check_output_path
from dsmpnn.data.sample import CELL_NODES, MeshSample, sample_from_blocks
from dsmpnn.data.textfile import read_text
from dsmpnn.data.untrusted import PATH_WIDTH, regular_file
from dsmpnn.errors import ConfigError, DatasetError
from dsmpnn.messages import brief

__all__ = ["CELL_DATA_MODES", "Column", "MeshStep", "cell_measures", "cell_to_point", "component_suffixes",
           "expand_files", "import_mesh", "mesh_dim", "read_steps", "resolve_columns", "step_values"]

CELL_DATA_MODES = ("refuse", "average")
XDMF_SUFFIXES = (".xdmf", ".xmf")

_VECTOR = {2: ("x", "y"), 3: ("x", "y", "z")}
_TENSOR = {4: ("xx", "xy", "yx", "yy"), 6: ("xx", "yy", "zz", "xy", "yz", "xz"),
           9: ("xx", "xy", "xz", "yx", "yy", "yz", "zx", "zy", "zz")}


def component_suffixes(tail: tuple[int, ...]) -> list[str]:
    """Names of the components of a field whose per-node shape is ``tail`` (``()`` and ``(1,)``: a scalar, no
    suffix), in storage order: ``(2,)``/``(3,)`` a vector ``x, y[, z]``; ``(2, 2)``/``(4,)`` and ``(3, 3)``/``(9,)``
    a tensor ``xx, xy, ...`` (row-major); ``(6,)`` a symmetric tensor in VTK's order ``xx, yy, zz, xy, yz, xz``;
    any other width ``0, 1, ...``."""
    k = math.prod(tail)
    if k == 1:
        return []
    if tail in ((2,), (3,)):
        return list(_VECTOR[k])
    if tail in ((2, 2), (4,), (3, 3), (9,), (6,)):
        return list(_TENSOR[k])
    return [str(i) for i in range(k)]


def _group_suffixes(tail: tuple[int, ...], dim: int) -> list[int]:
    """Indices of the components a field's bare name stands for: all of them, less those along z in a 2D mesh."""
    names = component_suffixes(tail)
    letters = all(s.isalpha() for s in names)
    return [i for i, s in enumerate(names) if not (dim == 2 and letters and "z" in s)]


@dataclass(frozen=True)
class Column:
    """One column of ``x`` or ``y``: component ``component`` (None: the whole scalar) of the field ``field``."""

    name: str
    field: str
    component: int | None


@dataclass
class MeshStep:
    """One mesh read from a file (one file, or one step of an XDMF time series)."""

    path: Path
    label: str  # how messages name it: the path, with the step for a time series
    name: str  # the sample name
    points: np.ndarray  # [N, 2 or 3]
    blocks: list[tuple[str, np.ndarray]]  # meshio's cell blocks, node indices checked
    point_data: dict[str, np.ndarray]
    cell_data: dict[str, list[np.ndarray]]  # one array per block

    @property
    def num_nodes(self) -> int:
        return len(self.points)


# --- reading ----------------------------------------------------------------------------------------------------


def _sample_name(path: Path, step: int | None) -> str:
    """A file-name-safe sample name from the file's stem (and the step of a time series)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem).strip("._")[:80] or "mesh"
    return stem if step is None else f"{stem}_t{step:05d}"


def _xdmf_series(path: Path):  # -> meshio.xdmf.TimeSeriesReader | None
    """The time-series reader of an XDMF file with a temporal collection; None for a file with one mesh."""
    import meshio

    try:
        said = io.StringIO()
        with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
            return meshio.xdmf.TimeSeriesReader(path)
    except (meshio.ReadError, KeyError, IndexError, ValueError):
        return None  # not a temporal collection (or not XDMF 3): meshio.read says what it is
    except Exception:  # noqa: BLE001 - unparsable XML: meshio.read reports it in its words
        return None


def count_steps(path: Path) -> int:
    """Samples in a mesh file: the steps of an XDMF time series, else 1."""
    if path.suffix.lower() in XDMF_SUFFIXES:
        series = _xdmf_series(path)
        if series is not None:
            return series.num_steps
    return 1


def read_steps(path: str | os.PathLike, what: str = "mesh file", steps: Sequence[int] | None = None
               ) -> Iterator[MeshStep]:
    """The meshes in ``path``: one, or each step of an XDMF time series (only ``steps`` when given), read one at a
    time."""
    path = regular_file(path, what)
    series = _xdmf_series(path) if path.suffix.lower() in XDMF_SUFFIXES else None
    if series is None:
        mesh = read_mesh(path, what)
        yield MeshStep(path, str(path), _sample_name(path, None), np.asarray(mesh.points),
                       cell_blocks(path, mesh), dict(mesh.point_data), dict(mesh.cell_data))
        return
    with series:
        points, cells = guard_meshio(path, f"{what} (XDMF time series)", series.read_points_cells)
        points = np.asarray(points)
        if len(points) == 0:
            raise DatasetError(f"{path}: the {what} has no points")
        mesh_like = type("M", (), {"points": points, "cells": cells})
        blocks = cell_blocks(path, mesh_like)
        for k in range(series.num_steps) if steps is None else steps:
            t, pd, cd = guard_meshio(path, f"{what} (XDMF time series, step {k})", lambda k=k: series.read_data(k))
            yield MeshStep(path, f"{path} (step {k}, t = {t:g})", _sample_name(path, k), points, blocks,
                           dict(pd), dict(cd))


def mesh_dim(points: np.ndarray) -> int:
    """2 for points ``[N, 2]`` or ``[N, 3]`` with one z for all, else 3."""
    if points.ndim != 2 or points.shape[1] not in (2, 3):
        raise DatasetError(f"points have shape {points.shape}, expected [N, 2] or [N, 3]")
    return 3 if points.shape[1] == 3 and np.ptp(points[:, 2]) > 0 else 2


# --- fields -----------------------------------------------------------------------------------------------------


def _tails(step: MeshStep, cell_data: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """Per-node (or per-cell) shape and kind ("point" or "cell") of every field of ``step``: point data first,
    cell data (whose arrays agree over the blocks) where no point data has the name."""
    out = {}
    for name, arrays in step.cell_data.items():
        tails = {tuple(np.shape(a)[1:]) for a in arrays}
        if len(tails) == 1:
            out[name] = (tails.pop(), "cell")
    for name, a in step.point_data.items():
        out[name] = (tuple(np.shape(a)[1:]), "point")
    return out


def _have(step: MeshStep) -> str:
    """"point data [...] and cell data [...]": the fields of a file, for messages."""
    text = f"point data {brief(sorted(step.point_data), 300)}"
    return text + (f" and cell data {brief(sorted(step.cell_data), 200)}" if step.cell_data else "")


def resolve_columns(specs: Sequence[str], step: MeshStep, dim: int, cell_data: str = "refuse",
                    option: str = "--inputs") -> list[Column]:
    """The columns ``specs`` name in ``step``: a field name (every component, see the module docstring) or
    ``<field>_<component>``. Refuses a missing field, an unknown component and (``cell_data="refuse"``) cell
    data, naming the file and field."""
    tails = _tails(step, cell_data)
    out: list[Column] = []
    for spec in specs:
        if spec in tails:
            tail, kind = tails[spec]
            _check_kind(step, spec, kind, cell_data)
            names = component_suffixes(tail)
            out += ([Column(spec, spec, None)] if not names else
                    [Column(f"{spec}_{names[i]}", spec, i) for i in _group_suffixes(tail, dim)])
            continue
        base, _, suffix = spec.rpartition("_")
        if base in tails and component_suffixes(tails[base][0]):
            tail, kind = tails[base]
            names = component_suffixes(tail)
            if suffix not in names:
                raise DatasetError(f"{step.label}: {option} names {brief(spec)}, but field {brief(base)} has "
                                   f"components {', '.join(f'{base}_{s}' for s in names)} (shape "
                                   f"{(step.num_nodes, *tail) if kind == 'point' else ('cells', *tail)})")
            _check_kind(step, base, kind, cell_data)
            out.append(Column(spec, base, names.index(suffix)))
            continue
        raise DatasetError(f"{step.label}: no field {brief(spec)} ({option}); the file has {_have(step)}")
    return out


def _check_kind(step: MeshStep, name: str, kind: str, cell_data: str) -> None:
    if kind == "cell" and cell_data != "average":
        raise DatasetError(f"{step.label}: field {brief(name)} is cell data (one value per cell), expected point "
                           "data (one value per node); pass --cell-data average to give each node the volume-"
                           "weighted average of its cells, or write point data from the solver (ParaView: Cell "
                           "Data to Point Data)")


def _point_array(step: MeshStep, name: str) -> np.ndarray:
    """Point data ``name`` as ``[N, k]`` float64, finite."""
    a = np.asarray(step.point_data[name])
    n = step.num_nodes
    if a.ndim == 0 or a.shape[0] != n:
        raise DatasetError(f"{step.label}: point data {brief(name)} has shape {a.shape}, expected {n} values "
                           "(one per node)")
    return _real(step, name, a.reshape(n, -1), "point data")


def _real(step: MeshStep, name: str, a: np.ndarray, kind: str) -> np.ndarray:
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
        raise DatasetError(f"{step.label}: {kind} {brief(name)} has dtype {a.dtype}, expected real numbers")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        raise DatasetError(f"{step.label}: {kind} {brief(name)} has {bad} NaN/Inf values, expected finite numbers")
    return a


def step_values(step: MeshStep, columns: Sequence[Column], expected: dict[str, tuple[int, ...]],
                first: str) -> np.ndarray:
    """``[N, len(columns)]``: the columns' values in ``step``, each field with the per-node shape ``expected`` (that
    of the first file, ``first``); cell data is averaged onto the nodes."""
    n = step.num_nodes
    fields: dict[str, np.ndarray] = {}
    tails = _tails(step, "average")
    for col in columns:
        if col.field in fields:
            continue
        tail, kind = tails[col.field]
        if tail != expected[col.field]:
            comps = component_suffixes(expected[col.field])
            listed = ", ".join(f"{col.field}_{s}" for s in comps) if comps else "a scalar"
            raise DatasetError(f"{step.label}: field {brief(col.field)} has shape "
                               f"{(n if kind == 'point' else 'cells', *tail)}, expected "
                               f"{(n if kind == 'point' else 'cells', *expected[col.field])} as in {first} ({listed})")
        if kind == "point":
            fields[col.field] = _point_array(step, col.field)
        else:
            values = [_real(step, col.field, np.asarray(a).reshape(len(a), -1), "cell data")
                      for a in step.cell_data[col.field]]
            fields[col.field] = cell_to_point(step.points, step.blocks, values, f"{step.label}: cell data "
                                              f"{brief(col.field)}")
    if not columns:
        return np.zeros((n, 0))
    return np.column_stack([fields[c.field][:, 0 if c.component is None else c.component] for c in columns])


# --- cell data to the nodes -------------------------------------------------------------------------------------

_SIMPLICES = {  # the cell split into simplices (corner indices), for its measure
    "vertex": ((0,),), "line": ((0, 1),), "triangle": ((0, 1, 2),), "quad": ((0, 1, 2), (0, 2, 3)),
    "tetra": ((0, 1, 2, 3),), "pyramid": ((0, 1, 2, 4), (0, 2, 3, 4)),
    "wedge": ((0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5)),
    "hexahedron": ((0, 1, 2, 6), (0, 2, 3, 6), (0, 3, 7, 6), (0, 7, 4, 6), (0, 4, 5, 6), (0, 5, 1, 6)),
}
_LINEAR = {"line3": "line", "triangle6": "triangle", "triangle7": "triangle", "quad8": "quad", "quad9": "quad",
           "tetra10": "tetra", "pyramid13": "pyramid", "wedge15": "wedge", "wedge18": "wedge",
           "hexahedron20": "hexahedron", "hexahedron27": "hexahedron"}
"""Higher-order types and the linear type of their first (corner) nodes."""


def _linear(kind: str) -> str | None:
    kind = _LINEAR.get(kind, kind)
    return kind if kind in _SIMPLICES else None


def cell_measures(points: np.ndarray, kind: str, cells: np.ndarray) -> np.ndarray:
    """``[M]`` length, area or volume of cells of ``kind`` (1 for vertices), from their corners split into
    simplices (a hexahedron into 6 tetrahedra around its diagonal 0-6: exact for planar faces)."""
    pts = points if points.shape[1] == 3 else np.column_stack([points, np.zeros(len(points))])
    total = np.zeros(len(cells))
    for simplex in _SIMPLICES[_linear(kind)]:
        p = pts[cells[:, list(simplex)]]  # [M, s, 3]
        if len(simplex) == 1:
            total += 1.0
        elif len(simplex) == 2:
            total += np.linalg.norm(p[:, 1] - p[:, 0], axis=1)
        elif len(simplex) == 3:
            total += 0.5 * np.linalg.norm(np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), axis=1)
        else:
            total += np.abs(np.einsum("mi,mi->m", np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]),
                                      p[:, 3] - p[:, 0])) / 6.0
    return total


_CELL_DIM = {"vertex": 0, "line": 1, "triangle": 2, "quad": 2, "tetra": 3, "pyramid": 3, "wedge": 3,
             "hexahedron": 3}


def cell_to_point(points: np.ndarray, blocks: Sequence[tuple[str, np.ndarray]], values: Sequence[np.ndarray],
                  where: str = "cell data") -> np.ndarray:
    """Cell values ``values[b] [M_b, k]`` (one array per block) moved to the nodes: ``[N, k]``, each node the
    average of the values of the cells around it weighted by their measure (:func:`cell_measures`). Only the blocks
    of the highest cell dimension count (the faces or edges a solver also writes are not part of the volume); a
    node that no such cell touches is refused."""
    n = len(points)
    kinds = [_linear(kind) for kind, _ in blocks]
    unknown = sorted({kind for (kind, _), lin in zip(blocks, kinds) if lin is None})
    if unknown:
        raise DatasetError(f"{where}: cannot average cells of type {', '.join(unknown)} onto the nodes (their volume "
                           f"is not known here); averaging handles {', '.join([*_SIMPLICES, *_LINEAR])}")
    top = max(_CELL_DIM[k] for k in kinds)
    k = values[0].shape[1]
    acc, weight = np.zeros((n, k)), np.zeros(n)
    for (kind, cells), lin, vals in zip(blocks, kinds, values):
        if _CELL_DIM[lin] != top:
            continue
        if len(vals) != len(cells):
            raise DatasetError(f"{where}: has {len(vals)} values for a block of {len(cells)} {kind} cells")
        w = cell_measures(points, kind, cells)  # [M]
        nodes = cells.ravel()
        weight += np.bincount(nodes, np.repeat(w, cells.shape[1]), minlength=n)
        for c in range(k):
            acc[:, c] += np.bincount(nodes, np.repeat(w * vals[:, c], cells.shape[1]), minlength=n)
    lonely = np.flatnonzero(weight <= 0)
    if len(lonely):
        raise DatasetError(f"{where}: {len(lonely)} node(s) (the first: node {int(lonely[0])}) belong to no cell of "
                           f"dimension {top} with a nonzero measure, so no average can be given them")
    return acc / weight[:, None]


# --- files --------------------------------------------------------------------------------------------------------


def expand_files(patterns: Sequence[str], list_file: str | os.PathLike | None = None) -> list[Path]:
    """The files named by ``patterns`` (paths or glob patterns, ``**`` recursive) and, one a line, in ``list_file``
    (paths relative to the list's folder; blank lines and lines starting with ``#`` skipped), in order, each once."""
    entries: list[tuple[str, str]] = [(p, "FILE") for p in patterns]
    if list_file is not None:
        lf = Path(list_file)
        text = read_text(lf, "file list (--list)")
        for i, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if line and not line.startswith("#"):
                full = line if Path(line).is_absolute() else str(lf.parent / line)
                entries.append((full, f"{lf}:{i}"))
    out: list[Path] = []
    seen: dict[Path, str] = {}
    for entry, source in entries:
        if glob.has_magic(entry):
            found = sorted(glob.glob(entry, recursive=True))
            files = [f for f in found if os.path.isfile(f)]
            if not files:
                raise DatasetError(f"{entry}: no file matches this pattern ({source}"
                                   f"{'; it matches only folders' if found else ''})")
        else:
            files = [entry]
        for f in files:
            path = regular_file(f, "mesh file", f" ({source})" if source != "FILE" else "")
            key = path.resolve()
            if key in seen:
                raise DatasetError(f"{path}: the file is named twice ({seen[key]} and {source}); each file can be "
                                   "one sample (or one time series) only")
            seen[key] = source
            out.append(path)
    if not out:
        raise DatasetError("no mesh file given: name files or glob patterns, or --list FILE")
    return out


def _parse_names(text: str | Sequence[str], option: str) -> list[str]:
    names = [t.strip() for t in text.split(",")] if isinstance(text, str) else [str(t) for t in text]
    if not names or any(not n for n in names):
        raise ConfigError(f"{option} is {brief(text)}, expected comma-separated field names like U,p")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"{option} names {brief(twice)} twice")
    return names


def _merge_blocks(step: MeshStep) -> list[tuple[str, np.ndarray]]:
    """The cell blocks of ``step`` with blocks of one type joined (first-appearance order); a type a sample cannot
    store is refused."""
    merged: dict[str, list[np.ndarray]] = {}
    for i, (kind, cells) in enumerate(step.blocks):
        if kind not in CELL_NODES:
            raise DatasetError(f"{step.label}: cell block {i} has type {brief(kind)}, which a dataset cannot store "
                               f"(it stores {', '.join(CELL_NODES)}); convert those cells first (ParaView: "
                               "Tetrahedralize, or export linear cells)")
        if len(cells):
            merged.setdefault(kind, []).append(cells)
    return [(kind, np.concatenate(parts)) for kind, parts in merged.items()]


@dataclass
class _Plan:
    """What the first mesh fixes for all the others: the dimension, the columns and each field's shape."""

    first: str
    dim: int
    inputs: list[Column]
    targets: list[Column]
    tails: dict[str, tuple[int, ...]]
    kinds: dict[str, str]


def _plan(step: MeshStep, inputs: list[str], targets: list[str], cell_data: str) -> _Plan:
    dim = mesh_dim(step.points)
    xs = resolve_columns(inputs, step, dim, cell_data, "--inputs")
    ys = resolve_columns(targets, step, dim, cell_data, "--targets")
    names = [c.name for c in xs + ys]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"--inputs and --targets both take {brief(twice)}; a column is an input or a target")
    tails = _tails(step, cell_data)
    used = {c.field for c in xs + ys}
    return _Plan(step.label, dim, xs, ys, {f: tails[f][0] for f in used}, {f: tails[f][1] for f in used})


def _to_sample(step: MeshStep, plan: _Plan, cell_data: str) -> MeshSample:
    dim = mesh_dim(step.points)
    if dim != plan.dim:
        raise DatasetError(f"{step.label}: the mesh is {dim}D, expected {plan.dim}D as {plan.first}")
    for specs, option in (([c.name for c in plan.inputs], "--inputs"), ([c.name for c in plan.targets], "--targets")):
        resolve_columns(specs, step, dim, cell_data, option)  # every field there (and point data unless averaging)
    x = step_values(step, plan.inputs, plan.tails, plan.first)
    y = step_values(step, plan.targets, plan.tails, plan.first)
    pos = np.asarray(step.points, dtype=np.float64)[:, :dim]
    try:
        return sample_from_blocks(pos, x, y, _merge_blocks(step), name=step.name)
    except DatasetError as e:
        raise DatasetError(f"{step.label}: {e}") from None


def check_dataset_out(out: str | os.PathLike) -> Path:
    """Refuse, before any file is read, an ``--out`` that :func:`write_dataset` would refuse."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out}: output path exists and is not a directory; choose another --out")
    check_output_path(out, "directory", "the output directory")
    if out.exists() and any(out.iterdir()):
        raise DatasetError(f"{out}: output directory exists and is not empty; choose another --out or remove it")
    return out


def import_mesh(files: Sequence[str | os.PathLike], out: str | os.PathLike, inputs: str | Sequence[str],
                targets: str | Sequence[str], list_file: str | os.PathLike | None = None,
                splits: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0, cell_data: str = "refuse",
                split_by: str = "file", name: str | None = None, progress: bool = False) -> Manifest:
    """Convert mesh files (see the module docstring) into the dataset directory ``out``; returns its manifest."""
    if cell_data not in CELL_DATA_MODES:
        raise ConfigError(f"--cell-data is {brief(cell_data)}, expected one of {', '.join(CELL_DATA_MODES)}")
    if split_by not in ("file", "step"):
        raise ConfigError(f"--split-by is {brief(split_by)}, expected file or step")
    input_names, target_names = _parse_names(inputs, "--inputs"), _parse_names(targets, "--targets")
    check_dataset_out(out)
    paths = expand_files([str(f) for f in files], list_file)
    if split_by == "file":
        labels = assign_splits(len(paths), splits, seed)
        per_file = [[label] * count_steps(p) if p.suffix.lower() in XDMF_SUFFIXES else [label]
                    for p, label in zip(paths, labels)]
    else:
        counts = [count_steps(p) for p in paths]
        flat = assign_splits(sum(counts), splits, seed)
        starts = np.concatenate([[0], np.cumsum(counts)])
        per_file = [flat[starts[i]:starts[i + 1]] for i in range(len(paths))]

    steps = (step for path in tqdm(paths, desc="importing meshes", unit="file", disable=not progress)
             for step in read_steps(path))
    first = next(steps)
    plan = _plan(first, input_names, target_names, cell_data)
    fields_of: list[str] = sorted(plan.tails)
    averaged = sorted(f for f in fields_of if plan.kinds[f] == "cell")

    def samples() -> Iterator[tuple[str, MeshSample]]:
        k = 0
        flat_labels = [label for labels_ in per_file for label in labels_]
        for step in _chain(first, steps):
            if k >= len(flat_labels):
                raise DatasetError(f"{step.label}: more time steps than the file announced")
            yield flat_labels[k], _to_sample(step, plan, cell_data)
            k += 1

    suffixes = sorted({p.suffix.lower() or "(no suffix)" for p in paths})
    description = (f"{len(paths)} mesh file(s) ({', '.join(suffixes)}) imported by dsmpnn import mesh, first "
                   f"{brief(str(paths[0]), PATH_WIDTH)}; x = [{', '.join(c.name for c in plan.inputs)}], "
                   f"y = [{', '.join(c.name for c in plan.targets)}]"
                   + (f"; cell data averaged onto the nodes (volume-weighted): {', '.join(averaged)}" if averaged
                      else ""))
    return write_dataset(out, samples(), [Field(c.name) for c in plan.inputs], [Field(c.name) for c in plan.targets],
                         name or Path(out).name, description,
                         stats_on=statistics_split(label for labels in per_file for label in labels))


def _chain(first: MeshStep, rest: Iterator[MeshStep]) -> Iterator[MeshStep]:
    yield first
    yield from rest
