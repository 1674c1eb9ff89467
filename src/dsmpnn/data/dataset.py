"""On-disk dataset format: a directory with ``manifest.json`` and one NPZ file per sample.

Layout::

    DIR/manifest.json
    DIR/samples/<name>.npz      keys: pos [N, d], x [N, F], y [N, T], optional cells [M, k] + cell_type;
                                a mesh with several cell blocks (mixed triangles/quads, tets/hexes/wedges) adds
                                cells_1 [M1, k1] + cell_type_1, cells_2 + cell_type_2, ... (block 0 is cells)

Manifest (JSON)::

    {"format": "dsmpnn-dataset", "version": 1, "name": "darcy", "dim": 2,
     "input_fields":  [{"name": "a", "unit": "1"}, ...],          # columns of x
     "target_fields": [{"name": "u", "unit": "1"}, ...],          # columns of y
     "splits": {"train": ["samples/s00000.npz", ...], "val": [...], "test": [...]},
     "stats": {"computed_on": "train", "pos": {"mean": [...], "std": [...]},
               "x": {"mean": [...], "std": [...]}, "y": {"mean": [...], "std": [...]}},
     "spacing": 0.0159,                                            # median nearest-neighbour distance
     "description": "...",
     "grid": {"coords": "endpoint", "bbox": [0, 1, 0, 1], "shape": [H, W], ...}}   # optional: regular grids

``stats.computed_on`` is ``"train"`` except for a dataset written without a train split (a test-only import): its
statistics are then those of the samples it has, for reference only; a trained run normalises every dataset it
evaluates with its own training statistics (``RUN/dataset.json``). ``grid`` is written by the regular-grid writers
(:mod:`dsmpnn.data.grid`): where the nodes of the ``[H, W]`` arrays sit; it is informational and kept as it is.

Writers are atomic: the directory is built under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from dsmpnn.data.normalize import RunningStats, Stats
from dsmpnn.data.paths import check_output_path, directory_mode
from dsmpnn.data.sample import MeshSample
from dsmpnn.data.textfile import read_json
from dsmpnn.data.untrusted import check_npz, confined_file, regular_file
from dsmpnn.errors import DatasetError
from dsmpnn.messages import brief

__all__ = ["FORMAT", "VERSION", "Field", "Manifest", "Dataset", "write_dataset", "statistics_split",
           "read_sample_file", "sample_num_nodes", "write_sample_file"]

FORMAT = "dsmpnn-dataset"
VERSION = 1
MANIFEST = "manifest.json"
SAMPLE_KEYS = ("pos", "x", "y", "cells", "cell_type")
BLOCK_KEY = re.compile(r"(cells|cell_type)_([1-9][0-9]{0,5})")
"""``cells_<b>`` / ``cell_type_<b>``: cell block b >= 1 of a mesh with several blocks (block 0 is ``cells``)."""


@dataclass(frozen=True)
class Field:
    name: str
    unit: str = ""


@dataclass(frozen=True)
class Manifest:
    """The parsed and validated ``manifest.json`` of a dataset."""

    name: str
    dim: int
    input_fields: tuple[Field, ...]
    target_fields: tuple[Field, ...]
    splits: dict[str, tuple[str, ...]]
    stats: dict[str, Stats]
    spacing: float
    description: str = ""
    stats_on: str = "train"  # the split(s) the statistics were computed on ("train" unless there is no train split)
    grid: dict | None = None  # regular grids: where the nodes sit (see dsmpnn.data.grid.GridLayout.to_json)

    def to_json(self) -> dict:
        obj = {
            "format": FORMAT,
            "version": VERSION,
            "name": self.name,
            "dim": self.dim,
            "input_fields": [{"name": f.name, "unit": f.unit} for f in self.input_fields],
            "target_fields": [{"name": f.name, "unit": f.unit} for f in self.target_fields],
            "splits": {k: list(v) for k, v in self.splits.items()},
            "stats": {"computed_on": self.stats_on, **{k: s.to_json() for k, s in self.stats.items()}},
            "spacing": self.spacing,
            "description": self.description,
        }
        if self.grid is not None:
            obj["grid"] = self.grid
        return obj

    @staticmethod
    def from_json(obj: object, path: Path) -> "Manifest":
        def need(d: dict, key: str, kind: type | tuple, where: str) -> object:
            if key not in d:
                raise DatasetError(f"{path}: manifest has no key '{where}{key}'")
            if not isinstance(d[key], kind):
                names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
                raise DatasetError(
                    f"{path}: manifest key '{where}{key}' is {type(d[key]).__name__} {brief(d[key])}, expected {names}"
                )
            return d[key]

        if not isinstance(obj, dict):
            raise DatasetError(f"{path}: manifest is a JSON {type(obj).__name__}, expected an object")
        if obj.get("format") != FORMAT:
            raise DatasetError(f"{path}: manifest 'format' is {obj.get('format')!r}, expected {FORMAT!r}")
        if obj.get("version") != VERSION:
            raise DatasetError(f"{path}: manifest 'version' is {obj.get('version')!r}, this dsmpnn reads {VERSION}")
        dim = need(obj, "dim", int, "")
        if dim not in (2, 3):
            raise DatasetError(f"{path}: manifest 'dim' is {dim}, expected 2 or 3")

        def fields(key: str) -> tuple[Field, ...]:
            raw = need(obj, key, list, "")
            out = []
            for i, f in enumerate(raw):
                if not isinstance(f, dict) or not isinstance(f.get("name"), str):
                    raise DatasetError(f"{path}: manifest '{key}[{i}]' is {brief(f)}, "
                                       "expected {\"name\": str, \"unit\": str}")
                out.append(Field(f["name"], str(f.get("unit", ""))))
            if not out:
                raise DatasetError(f"{path}: manifest '{key}' is empty, expected at least one field")
            return tuple(out)

        inputs, targets = fields("input_fields"), fields("target_fields")
        names = [f.name for f in inputs + targets]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise DatasetError(f"{path}: manifest field name(s) {brief(twice)} appear more than once among "
                               "'input_fields' and 'target_fields'; expected each field to have its own name")
        raw_splits = need(obj, "splits", dict, "")
        splits = {}
        for k, v in raw_splits.items():
            if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
                raise DatasetError(f"{path}: manifest 'splits.{k}' must be a list of sample file names")
            splits[k] = tuple(v)
        raw_stats = need(obj, "stats", dict, "")
        sizes = {"pos": dim, "x": len(inputs), "y": len(targets)}
        stats = {k: Stats.from_json(need(raw_stats, k, dict, "stats."), size, f"{path}: manifest 'stats.{k}'")
                 for k, size in sizes.items()}
        spacing = float(need(obj, "spacing", (int, float), ""))
        stats_on = raw_stats.get("computed_on", "train")
        if not isinstance(stats_on, str):
            raise DatasetError(f"{path}: manifest 'stats.computed_on' is {brief(stats_on)}, expected a split name "
                               "such as \"train\"")
        grid = obj.get("grid")
        if grid is not None and not isinstance(grid, dict):
            raise DatasetError(f"{path}: manifest 'grid' is {type(grid).__name__} {brief(grid)}, expected an object "
                               "(where the grid nodes sit) or no key")
        return Manifest(str(obj.get("name", path.parent.name)), dim, inputs, targets, splits, stats, spacing,
                        str(obj.get("description", "")), stats_on, grid)


class Dataset:
    """A dataset directory. ``Dataset(root).load_split("train")`` returns validated :class:`MeshSample` s."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        path = self.root / MANIFEST
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: dataset directory does not exist")
        if not path.exists():
            raise DatasetError(f"{path}: no manifest; a dataset directory needs manifest.json (see README, 'Dataset format')")
        self.manifest = Manifest.from_json(read_json(path, "manifest"), path)

    def split(self, name: str) -> tuple[str, ...]:
        if name == "train" and name not in self.manifest.splits and self.manifest.stats_on != "train":
            raise DatasetError(
                f"{self.root / MANIFEST}: no split 'train', this dataset has only {sorted(self.manifest.splits)} "
                "(imported without a train split); train on a dataset with one, and evaluate this one with "
                f"`dsmpnn evaluate RUN --data {self.root} --split {sorted(self.manifest.splits)[0]}`"
            )
        if name not in self.manifest.splits:
            raise DatasetError(
                f"{self.root / MANIFEST}: no split '{name}', the manifest has {sorted(self.manifest.splits)}"
            )
        return self.manifest.splits[name]

    def file(self, rel: str) -> Path:
        """The sample file of a split entry: a relative path that stays inside the dataset directory once symlinks
        are resolved, and a regular file (not a FIFO or device); a :class:`DatasetError` otherwise."""
        return confined_file(self.root, rel, self.root / MANIFEST, "split entry", "sample file")

    def load(self, rel: str) -> MeshSample:
        return read_sample_file(self.file(rel), self.manifest)

    def num_nodes(self, rel: str) -> int:
        """Node count of a sample file, read from the header of its ``pos`` array (the arrays are not loaded)."""
        return sample_num_nodes(self.file(rel))

    def load_split(self, name: str) -> list[MeshSample]:
        files = self.split(name)
        if not files:
            raise DatasetError(f"{self.root / MANIFEST}: split '{name}' is empty")
        return [self.load(f) for f in files]


def read_sample_file(path: Path, manifest: Manifest | None = None) -> MeshSample:
    """Read one sample NPZ and check it against the manifest's dimension and field counts.

    The file must be a regular file whose arrays fit in its bytes (:func:`~dsmpnn.data.untrusted.check_npz`,
    checked before loading); only the arrays of the format are loaded.
    """
    path = regular_file(path, "sample file")
    check_npz(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files if k in SAMPLE_KEYS or BLOCK_KEY.fullmatch(k)}
            others = sorted(set(z.files) - set(data))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise DatasetError(f"{path}: cannot read NPZ file, it may be truncated or not an NPZ ({e})") from None
    for key in ("pos", "x"):
        if key not in data:
            raise DatasetError(f"{path}: missing array '{key}', the file has {brief(sorted(data) + others)}; "
                               "expected pos, x, y")
    cell_type = _cell_type(path, data["cell_type"]) if "cell_type" in data else None
    extra = _extra_blocks(path, data)
    try:
        sample = MeshSample(data["pos"], data["x"], data.get("y"), data.get("cells"), cell_type, name=path.stem,
                            extra_cells=extra)
    except DatasetError as e:
        raise DatasetError(f"{path}: {e}") from None
    if manifest is not None:
        m = manifest
        if sample.dim != m.dim:
            raise DatasetError(f"{path}: field 'pos' has shape {sample.pos.shape}, expected [N, {m.dim}] (manifest dim)")
        if sample.x.shape[1] != len(m.input_fields):
            raise DatasetError(
                f"{path}: field 'x' has shape {sample.x.shape}, expected [N, {len(m.input_fields)}] "
                f"for input fields {[f.name for f in m.input_fields]}"
            )
        if sample.y is None:
            raise DatasetError(f"{path}: missing array 'y' (targets {[f.name for f in m.target_fields]})")
        if sample.y.shape[1] != len(m.target_fields):
            raise DatasetError(
                f"{path}: field 'y' has shape {sample.y.shape}, expected [N, {len(m.target_fields)}] "
                f"for target fields {[f.name for f in m.target_fields]}"
            )
    return sample


def _cell_type(path: Path, arr: np.ndarray, key: str = "cell_type") -> str:
    """The cell type name stored as a 0-d string array."""
    if arr.ndim != 0 or arr.dtype.kind != "U":
        raise DatasetError(f"{path}: array '{key}' has shape {arr.shape} and dtype {arr.dtype}, expected one "
                           "string such as 'triangle'")
    return str(arr)


def _extra_blocks(path: Path, data: dict[str, np.ndarray]) -> tuple[tuple[str, np.ndarray], ...]:
    """Cell blocks 1, 2, ... (``cells_<b>`` + ``cell_type_<b>``), numbered without gaps, each with both arrays."""
    numbers = sorted({int(m.group(2)) for k in data if (m := BLOCK_KEY.fullmatch(k))})
    if numbers != list(range(1, len(numbers) + 1)):
        missing = next(b for b in range(1, len(numbers) + 2) if b not in numbers)
        raise DatasetError(f"{path}: cell blocks {numbers} are stored, but block {missing} is missing; expected "
                           "cells_1, cells_2, ... numbered without gaps")
    out = []
    for b in numbers:
        for key in (f"cells_{b}", f"cell_type_{b}"):
            if key not in data:
                raise DatasetError(f"{path}: cell block {b} lacks the array '{key}'; a block is stored as cells_{b} "
                                   f"and cell_type_{b}")
        out.append((_cell_type(path, data[f"cell_type_{b}"], f"cell_type_{b}"), data[f"cells_{b}"]))
    if out and "cells" not in data:
        raise DatasetError(f"{path}: cell blocks 1..{len(out)} are stored without block 0 ('cells' + 'cell_type')")
    return tuple(out)


def sample_num_nodes(path: Path) -> int:
    """N of a sample NPZ, from the header of ``pos.npy`` only (cheap for huge meshes)."""
    path = regular_file(path, "sample file")
    try:
        with zipfile.ZipFile(path) as z, z.open("pos.npy") as f:
            major, _ = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape = read(f)[0]
    except FileNotFoundError:
        raise DatasetError(f"{path}: sample file does not exist") from None
    except KeyError:
        raise DatasetError(f"{path}: missing array 'pos'") from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise DatasetError(f"{path}: cannot read NPZ file, it may be truncated or not an NPZ ({e})") from None
    if len(shape) != 2:
        raise DatasetError(f"{path}: field 'pos' has shape {shape}, expected [N, d]")
    return int(shape[0])


def write_sample_file(path: Path, sample: MeshSample) -> None:
    arrays = {"pos": sample.pos, "x": sample.x}
    if sample.y is not None:
        arrays["y"] = sample.y
    if sample.cells is not None:
        arrays["cells"] = sample.cells
        arrays["cell_type"] = np.array(sample.cell_type)
    for b, (kind, cells) in enumerate(sample.extra_cells, start=1):
        arrays[f"cells_{b}"] = cells
        arrays[f"cell_type_{b}"] = np.array(kind)
    np.savez(path, **arrays)


def write_dataset(
    out: str | os.PathLike,
    samples: Iterable[tuple[str, MeshSample]],
    input_fields: list[Field],
    target_fields: list[Field],
    name: str,
    description: str = "",
    overwrite: bool = False,
    stats_on: str = "train",
    grid: dict | None = None,
) -> Manifest:
    """Write ``(split, sample)`` pairs as a dataset directory; statistics come from the ``train`` split (from all
    samples for a dataset without one, e.g. a test-only set: a run evaluated on it normalises with its own).

    ``stats_on`` names the split the statistics come from: ``"train"`` (a train split is then required), or, for a
    dataset without one (a test-only import), another split name or ``"all"`` (every sample), recorded as
    ``stats.computed_on``. ``grid`` is stored as the manifest's ``grid`` entry. The directory appears only when
    complete (built under a temporary name, then renamed).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out}: output path exists and is not a directory; choose another --out")
    check_output_path(out, "directory", "the output directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DatasetError(f"{out}: output directory exists and is not empty; choose another --out or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tmp.chmod(directory_mode())  # what mkdir would give, not mkdtemp's 0700
        (tmp / "samples").mkdir()
        splits: dict[str, list[str]] = {}
        run = {"pos": RunningStats(), "x": RunningStats(), "y": RunningStats()}
        spacings, dim = [], None
        for i, (split, s) in enumerate(samples):
            if s.y is None:
                raise DatasetError(f"sample '{s.name}': a dataset sample needs targets 'y'")
            if s.x.shape[1] != len(input_fields) or s.y.shape[1] != len(target_fields):
                raise DatasetError(
                    f"sample '{s.name}': x has {s.x.shape[1]} and y {s.y.shape[1]} columns, expected "
                    f"{len(input_fields)} input and {len(target_fields)} target fields"
                )
            dim = dim or s.dim
            if s.dim != dim:
                raise DatasetError(f"sample '{s.name}': dimension {s.dim} differs from earlier samples ({dim})")
            rel = f"samples/{s.name}_{i:05d}.npz"
            write_sample_file(tmp / rel, s)
            splits.setdefault(split, []).append(rel)
            if split == stats_on or stats_on == "all":
                run["pos"].update(s.pos)
                run["x"].update(s.x)
                run["y"].update(s.y)
            if len(spacings) < 16:
                spacings.append(median_spacing(s.pos))
        if stats_on == "train" and "train" not in splits:
            raise DatasetError(f"{out}: no sample was assigned to the 'train' split")
        if stats_on != "all" and stats_on not in splits:
            raise DatasetError(f"{out}: no sample was assigned to the '{stats_on}' split, which the statistics "
                               "come from")
        manifest = Manifest(name, dim, tuple(input_fields), tuple(target_fields),
                            {k: tuple(v) for k, v in splits.items()},
                            {k: r.finish() for k, r in run.items()}, float(np.median(spacings)), description,
                            stats_on, grid)
        (tmp / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=1))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def statistics_split(labels: Iterable[str]) -> str:
    """The ``stats_on`` of :func:`write_dataset` for samples with these split labels: ``"train"`` when there is a
    train split, else the one split there is (a test-only import), else ``"all"``."""
    present = set(labels)
    if "train" in present or not present:
        return "train"
    return present.pop() if len(present) == 1 else "all"


def median_spacing(pos: np.ndarray) -> float:
    """Median distance from a node to its nearest other node (a natural unit for the graph radius)."""
    if len(pos) < 2:
        return 0.0
    d, _ = cKDTree(pos).query(pos, k=2)
    return float(np.median(d[:, 1]))
