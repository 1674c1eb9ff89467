"""Import regular-grid arrays ``[samples, H, W]`` or ``[samples, H, W, C]`` as a dataset of quad meshes.

Sources (by extension):

- ``.mat``  MATLAB v4-v7 via ``scipy.io.loadmat``; v7.3 files are HDF5 and are read with h5py when it is
  installed (MATLAB stores them column-major, so each array is transposed back), else rejected with a hint.
- ``.npz``  NumPy archive, one array per key.
- ``.npy``  one array per file: ``FILE`` holds the inputs and ``y_path`` the targets.
- ``.pt`` / ``.pth``  a dict of tensors saved with ``torch.save`` (loaded with ``weights_only=True``).

Keys are found among common names (case-insensitive) unless given: inputs ``x, a, coeff, input, inputs``,
targets ``y, u, sol, output, outputs, solution``. A file with a single array needs no key. Field names are
the key names (``key_0, key_1, ...`` for C > 1 channels; the file stem for ``.npy``). Axis 1 of the arrays is
along y and axis 2 along x (see :mod:`dsmpnn.data.grid`).

Values: float arrays are stored as float64; bool arrays (masks) become 0/1 and integer arrays (labels, int16
fields) float64, and the manifest description says so (``x: bool cast to 0/1``). Targets may be bool or integer
too (a 0/1 mask is regressed like any field). Complex, string, object and structured arrays are refused.

Where the nodes sit (``coords``, ``bbox``, ``stride_of``; the formulas are in :mod:`dsmpnn.data.grid`): with
``bbox = (xmin, xmax, ymin, ymax)``, node ``(i, j)`` of an ``H x W`` array is at

- ``endpoint`` (default): ``x_j = xmin + j (xmax - xmin) / (W - 1)``, ``y_i = ymin + i (ymax - ymin) / (H - 1)``,
  both walls are nodes;
- ``stride``: ``x_j = xmin + j (xmax - xmin) / W``, ``y_i = ymin + i (ymax - ymin) / H``, the far walls are not
  nodes (a vertex grid subsampled by striding: a 32 x 32 file and its ``[::2, ::2]`` 16 x 16 version agree on
  their shared nodes);
- ``stride_of = (NH, NW)``: the arrays are an ``NH x NW`` grid of that convention taken ``[::k]``, ``k`` the one
  integer with ``ceil(N / k) = W``: ``x_j = xmin + j k (xmax - xmin) / (N - 1)`` (endpoint) or ``/ N`` (stride).

The manifest records the layout (its ``grid`` entry and the description). ``boundary=True`` adds an input field
``boundary``: 1 on the nodes on the box's edges (from the positions, so with ``stride`` the last row and column
are not boundary nodes), 0 elsewhere. Splits may give the train split nothing (``0,0,1``): a test-only dataset for
``dsmpnn evaluate RUN --data DIR``, whose statistics (``computed_on: test``) are for reference only; a run
normalises with its own training statistics.

Usage::

    dsmpnn import grid piececonst_r421_N1024_smooth1.mat --out data/darcy421
    dsmpnn import grid inputs.npy --y targets.npy --out data/mygrid --split 0.9,0.1,0
    dsmpnn import grid darcy_16.pt --coords stride --boundary --out data/d16
    dsmpnn import grid darcy_32.pt --coords stride --boundary --split 0,0,1 --out data/d32_test
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dsmpnn.data.dataset import Field, Manifest
from dsmpnn.data.grid import UNIT_SQUARE, GridLayout, parse_splits, write_grid_samples
from dsmpnn.data.untrusted import check_npz, regular_file
from dsmpnn.errors import ConfigError, DatasetError

__all__ = ["INPUT_KEYS", "TARGET_KEYS", "EXTENSIONS", "load_arrays", "import_grid"]

INPUT_KEYS = ("x", "a", "coeff", "input", "inputs")
TARGET_KEYS = ("y", "u", "sol", "output", "outputs", "solution")
EXTENSIONS = (".mat", ".npz", ".npy", ".pt", ".pth")


def load_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All arrays of a ``.mat``/``.npz``/``.npy``/``.pt`` file by key (a ``.npy`` file's key is its stem)."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in EXTENSIONS:
        raise DatasetError(f"{path}: unknown extension '{path.suffix}', expected one of {', '.join(EXTENSIONS)}")
    regular_file(path)
    try:
        if ext == ".mat":
            arrays = _load_mat(path)
        elif ext == ".npz":
            check_npz(path)
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        elif ext == ".npy":
            arrays = {path.stem: np.load(path, mmap_mode="r", allow_pickle=False)}
        else:
            arrays = _load_torch(path)
    except DatasetError:
        raise
    except Exception as e:  # each reader has its own exceptions for a corrupt file; all mean the same here
        raise DatasetError(f"{path}: cannot read the {ext} file, it may be corrupt or truncated "
                           f"({type(e).__name__}: {e})") from None
    if not arrays:
        raise DatasetError(f"{path}: the file holds no arrays")
    return arrays


def import_grid(
    path: str | os.PathLike,
    out: str | os.PathLike,
    x_key: str | None = None,
    y_key: str | None = None,
    y_path: str | os.PathLike | None = None,
    splits: Sequence[float] | str = (0.8, 0.1, 0.1),
    seed: int = 0,
    progress: bool = False,
    coords: str = "endpoint",
    bbox: Sequence[float] = UNIT_SQUARE,
    stride_of: int | Sequence[int] | None = None,
    boundary: bool = False,
) -> Manifest:
    """Convert regular-grid arrays into a dataset directory ``out`` and return its manifest.

    ``path`` holds the inputs (and the targets unless ``y_path`` is given). ``x_key``/``y_key`` pick the
    arrays; by default they are found among :data:`INPUT_KEYS` / :data:`TARGET_KEYS`. Samples are split by a
    permutation seeded with ``seed`` (the train fraction may be 0: a test-only dataset). ``coords``/``bbox``/
    ``stride_of`` place the nodes (see the module docstring); ``boundary`` adds the input field ``boundary``.
    Every problem raises :class:`DatasetError` (or :class:`ConfigError`) before anything is written.
    """
    path = Path(path)
    splits = parse_splits(splits, need_train=False)
    if isinstance(stride_of, int):
        stride_of = (stride_of, stride_of)
    layout = GridLayout(coords, tuple(bbox), None if stride_of is None else tuple(stride_of))
    if path.suffix.lower() == ".npy" and y_path is None:
        raise DatasetError(f"{path}: a .npy file holds one array (the inputs); give the targets with --y FILE")
    x_arrays = load_arrays(path)
    y_file = Path(y_path) if y_path is not None else path
    y_arrays = load_arrays(y_file) if y_path is not None else x_arrays
    separate = y_path is not None
    x_name = _pick(x_arrays, x_key, INPUT_KEYS, path, "input", "--x-key", single_ok=separate)
    y_name = _pick(y_arrays, y_key, TARGET_KEYS, y_file, "target", "--y-key" if separate else "--y-key or --y FILE",
                   single_ok=separate)
    if not separate and x_name == y_name:
        raise DatasetError(f"{path}: key '{x_name}' was chosen for both inputs and targets; "
                           "give different --x-key and --y-key")
    x = _grid_array(x_arrays[x_name], path, x_name)
    y = _grid_array(y_arrays[y_name], y_file, y_name)
    if x.shape[:3] != y.shape[:3]:
        raise DatasetError(
            f"{path}: input '{x_name}' has shape {x.shape} but target '{y_name}' (in {y_file}) has shape "
            f"{y.shape}; expected the same [samples, H, W]"
        )
    _check_finite(x, path, x_name)
    _check_finite(y, y_file, y_name)
    s, h, w = x.shape[:3]
    try:
        layout.steps(h, w)  # a --stride-of that does not fit these arrays fails here
    except ConfigError as e:
        raise ConfigError(f"{path}: key '{x_name}' {list(x.shape)}: {e}") from None
    x_names, y_names = _field_names(x_name, x), _field_names(y_name, y)
    if boundary and "boundary" in x_names + y_names:
        raise DatasetError(f"{path}: a field is already named 'boundary'; the boundary flag (--boundary) would "
                           "clash with it, choose the arrays with --x-key/--y-key or leave out --boundary")
    notes = [n for n in (_cast_note(x_name, x), _cast_note(y_name, y)) if n]
    description = "; ".join([
        f"imported from {path.name} (inputs '{x_name}' {list(x.shape)}) and {y_file.name} (targets '{y_name}' "
        f"{list(y.shape)})", layout.describe(h, w), "row-major nodes", *notes,
        *(["input 'boundary' = 1 on the nodes on the box's edges"] if boundary else []),
        *(["no train split: the stats are those of its own samples, for reference only; a run evaluated on it "
           "normalises with its own training statistics"] if splits[0] == 0 else []),
    ])
    bnd = layout.boundary(h, w)[..., None] if boundary else None  # [H, W, 1]

    def grids():
        for k in range(s):
            xk = x[k]
            yield (xk if bnd is None else np.concatenate([xk.astype(np.float64), bnd], axis=-1)), y[k]

    fields = [Field(f) for f in x_names] + ([Field("boundary", "1")] if boundary else [])
    return write_grid_samples(out, grids(), s, fields, [Field(f) for f in y_names], path.stem, splits, seed,
                              description, progress, layout, (h, w))


def _cast_note(key: str, a: np.ndarray) -> str:
    """``"x: bool cast to 0/1"`` for a bool or integer array, ``""`` for floats."""
    if a.dtype == np.bool_:
        return f"{key}: bool cast to 0/1"
    if np.issubdtype(a.dtype, np.integer):
        return f"{key}: {a.dtype} cast to float64"
    return ""


def _pick(arrays: dict[str, np.ndarray], key: str | None, candidates: Sequence[str], path: Path, role: str,
          option: str, single_ok: bool) -> str:
    if key is not None:
        if key in arrays:
            return key
        folded = [k for k in arrays if k.lower() == key.lower()]
        if len(folded) == 1:
            return folded[0]
        raise DatasetError(f"{path}: no {role} key '{key}' ({option}); the file has keys {sorted(arrays)}")
    if single_ok and len(arrays) == 1:
        return next(iter(arrays))
    found = [k for k in arrays if k.lower() in candidates]
    if len(found) == 1:
        return found[0]
    if not found:
        raise DatasetError(
            f"{path}: found no {role} array among the usual keys {list(candidates)}; the file has keys "
            f"{sorted(arrays)}; choose one with {option}"
        )
    raise DatasetError(f"{path}: several possible {role} arrays {sorted(found)}; choose one with {option}")


def _grid_array(arr: object, path: Path, key: str) -> np.ndarray:
    """Validate ``[S, H, W]`` or ``[S, H, W, C]`` real numbers; return ``[S, H, W, C]``."""
    a = np.asarray(arr)
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
        kind = {"c": "complex numbers", "U": "strings", "S": "byte strings", "O": "Python objects",
                "V": "structured records", "M": "dates", "m": "time spans"}.get(a.dtype.kind, "not numbers")
        hint = (" (take the real part or split real and imaginary parts into channels)" if a.dtype.kind == "c"
                else "")
        raise DatasetError(f"{path}: key '{key}' has dtype {a.dtype} ({kind}), expected real numbers: float, "
                           f"integer or bool{hint}")
    if a.ndim not in (3, 4):
        raise DatasetError(f"{path}: key '{key}' has shape {a.shape} ({a.ndim} dimensions), expected "
                           "[samples, H, W] or [samples, H, W, C]")
    if a.ndim == 3:
        a = a[..., None]
    s, h, w, c = a.shape
    if s < 1 or h < 2 or w < 2 or c < 1:
        raise DatasetError(f"{path}: key '{key}' has shape {a.shape}, expected at least 1 sample, "
                           "a grid of at least 2 x 2 nodes and 1 channel")
    return a


def _check_finite(a: np.ndarray, path: Path, key: str) -> None:
    if np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_:
        return
    for k in range(a.shape[0]):  # per sample: no full-size temporary for large (memory-mapped) arrays
        ok = np.isfinite(a[k])
        if not ok.all():
            bad = int(ok.size - np.count_nonzero(ok))
            raise DatasetError(f"{path}: key '{key}' has {bad} NaN/Inf values in sample {k} "
                               f"(the first bad one), expected finite numbers")


def _field_names(key: str, a: np.ndarray) -> list[str]:
    c = a.shape[3]
    return [key] if c == 1 else [f"{key}_{i}" for i in range(c)]


def _load_mat(path: Path) -> dict[str, np.ndarray]:
    from scipy.io import loadmat, whosmat
    from scipy.io.matlab import matfile_version

    with open(path, "rb") as fh:
        major, _ = matfile_version(fh)
    if major == 2:  # MATLAB v7.3: an HDF5 file
        try:
            import h5py
        except ImportError:
            raise DatasetError(
                f"{path}: this is a MATLAB v7.3 (HDF5) .mat file, which scipy cannot read; install h5py "
                "(pip install h5py), or re-save it in MATLAB with save(FILE, '-v7'), or export the arrays "
                "to .npz"
            ) from None
        with h5py.File(path, "r") as f:
            # MATLAB writes column-major: an array [S, H, W] in MATLAB is stored as [W, H, S]; a logical array is
            # stored as uint8 with MATLAB_class 'logical'
            return {k: _matlab_logical(v, np.asarray(v[()]).T) for k, v in f.items() if isinstance(v, h5py.Dataset)}
    raw = loadmat(path)
    logical = {name for name, _, cls in whosmat(path) if cls == "logical"}  # loadmat gives MATLAB logicals as uint8
    return {k: (v.astype(bool) if k in logical and np.issubdtype(v.dtype, np.integer) else v)
            for k, v in raw.items() if not k.startswith("__") and isinstance(v, np.ndarray)}


def _matlab_logical(dataset, a: np.ndarray) -> np.ndarray:
    cls = dataset.attrs.get("MATLAB_class")
    cls = cls.decode() if isinstance(cls, bytes) else cls
    return a.astype(bool) if cls == "logical" and np.issubdtype(a.dtype, np.integer) else a


def _load_torch(path: Path) -> dict[str, np.ndarray]:
    import torch

    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, torch.Tensor):
        obj = {path.stem: obj}
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: holds a {type(obj).__name__}, expected a dict of tensors (or one tensor)")
    out = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            v = v.detach()
            out[str(k)] = (v.float() if v.dtype in (torch.bfloat16, torch.float16) else v).numpy()
        elif isinstance(v, np.ndarray):
            out[str(k)] = v
    return out
