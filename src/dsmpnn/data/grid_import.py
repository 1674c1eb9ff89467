"""Import regular-grid arrays ``[samples, H, W]`` or ``[samples, H, W, C]`` as a dataset on the unit square.

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

Usage::

    dsmpnn import grid piececonst_r421_N1024_smooth1.mat --out data/darcy421
    dsmpnn import grid inputs.npy --y targets.npy --out data/mygrid --split 0.9,0.1,0
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dsmpnn.data.dataset import Manifest
from dsmpnn.data.grid import parse_splits, write_grid_dataset
from dsmpnn.data.untrusted import check_npz, regular_file
from dsmpnn.errors import DatasetError

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
) -> Manifest:
    """Convert regular-grid arrays into a dataset directory ``out`` and return its manifest.

    ``path`` holds the inputs (and the targets unless ``y_path`` is given). ``x_key``/``y_key`` pick the
    arrays; by default they are found among :data:`INPUT_KEYS` / :data:`TARGET_KEYS`. Samples are split by a
    permutation seeded with ``seed``. Every problem raises :class:`DatasetError` before anything is written.
    """
    path = Path(path)
    splits = parse_splits(splits)
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
    description = (f"imported from {path.name} (inputs '{x_name}' {list(x.shape)}) and "
                   f"{y_file.name} (targets '{y_name}' {list(y.shape)}); unit square, row-major grid")
    return write_grid_dataset(out, x, y, _field_names(x_name, x), _field_names(y_name, y), path.stem, splits,
                              seed, description, progress)


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
        raise DatasetError(f"{path}: key '{key}' has dtype {a.dtype}, expected real numbers")
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
    from scipy.io import loadmat
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
            # MATLAB writes column-major: an array [S, H, W] in MATLAB is stored as [W, H, S]
            return {k: np.asarray(v[()]).T for k, v in f.items() if isinstance(v, h5py.Dataset)}
    raw = loadmat(path)
    return {k: v for k, v in raw.items() if not k.startswith("__") and isinstance(v, np.ndarray)}


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
