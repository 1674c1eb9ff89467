r"""Import the AirfRANS dataset (Bonnet et al. 2022, NeurIPS Datasets & Benchmarks) as a dsmpnn dataset.

Input layout (the pre-processed ``Dataset.zip``)::

    DIR/manifest.json                       {"full_train": [case, ...], "full_test": [...], "scarce_train": [...],
                                             "reynolds_train": [...], "reynolds_test": [...], "aoa_train": [...],
                                             "aoa_test": [...]}
    DIR/<case>/<case>_internal.vtu          fluid mesh; point data U [N, 3], p [N], nut [N], implicit_distance [N]
    DIR/<case>/<case>_aerofoil.vtp          airfoil surface (PolyData); point data U, p, nut, Normals [M, 3]

with ``case = airFoil2D_SST_<U_inf>_<AoA in degrees>_<NACA parameters...>``. A task picks the splits
``<task>_train`` and ``<task>_test`` (``scarce`` has no test list of its own: it uses ``full_test``, as the
airfrans library does); ``val_fraction`` moves a seeded share of the train cases to a ``val`` split.

Node features, as in the AirfRANS loader (positions are ``pos``, the model's ``use_pos`` input):

    x = [U_inf cos(alpha), U_inf sin(alpha), sdf, n_x, n_y]     [N, 5]
    y = [u, v, p, nu_t]                                         [N, 4]

``sdf = -implicit_distance`` (distance to the airfoil), ``(n_x, n_y)`` the ``.vtp`` ``Normals`` at the
internal-mesh node nearest to each airfoil point (zero elsewhere; AirfRANS' normals point out of the fluid),
``p`` the kinematic pressure (pressure / density). The ``.vtu`` is read with meshio, the ``.vtp`` with
:func:`dsmpnn.data.vtp.read_vtp` (ASCII, base64 binary, appended raw/base64; uncompressed or zlib).

Usage::

    dsmpnn import airfrans Dataset/ --out data/airfrans_full --task full
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree
from tqdm import tqdm

from dsmpnn.data.dataset import Field, Manifest, median_spacing, write_dataset
from dsmpnn.data.meshfile import read_mesh
from dsmpnn.data.sample import MeshSample
from dsmpnn.data.textfile import read_json
from dsmpnn.data.untrusted import PATH_WIDTH, regular_file
from dsmpnn.data.vtp import read_vtp
from dsmpnn.errors import ConfigError, DatasetError
from dsmpnn.messages import brief

__all__ = ["TASKS", "INPUT_FIELDS", "TARGET_FIELDS", "airfoil_inputs", "parse_case_name", "read_case",
           "import_airfrans"]

TASKS = ("full", "scarce", "reynolds", "aoa")
INPUT_FIELDS = (Field("inlet_u", "m/s"), Field("inlet_v", "m/s"), Field("sdf", "m"), Field("normal_x", "1"),
                Field("normal_y", "1"))
TARGET_FIELDS = (Field("u", "m/s"), Field("v", "m/s"), Field("p", "m^2/s^2"), Field("nu_t", "m^2/s"))


def airfoil_inputs(speed: float, aoa_deg: float, sdf: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """``x [N, 5] = [U cos(alpha), U sin(alpha), sdf, n_x, n_y]`` from the inlet speed and angle (degrees)."""
    alpha = math.radians(aoa_deg)
    inlet = np.broadcast_to([speed * math.cos(alpha), speed * math.sin(alpha)], (len(sdf), 2))
    return np.concatenate([inlet, np.asarray(sdf)[:, None], np.asarray(normals)[:, :2]], axis=1)


def parse_case_name(name: str) -> tuple[float, float]:
    """``airFoil2D_SST_<U>_<AoA>_...`` -> (inlet speed in m/s, angle of attack in degrees)."""
    parts = name.split("_")
    try:
        speed, aoa = float(parts[2]), float(parts[3])
    except (IndexError, ValueError):
        raise DatasetError(f"case '{name}': name does not match airFoil2D_SST_<U_inf>_<AoA>_<NACA...>, so the "
                           "inlet speed and angle of attack are unknown") from None
    if not (math.isfinite(speed) and math.isfinite(aoa)):
        raise DatasetError(f"case '{name}': inlet speed {speed} / angle {aoa} are not finite")
    return speed, aoa


def _point_field(path: Path, data: dict, name: str, n: int, comps: int) -> np.ndarray:
    """Point data ``name`` as ``[n]`` (comps = 1) or its first ``comps`` columns ``[n, comps]``."""
    if name not in data:
        raise DatasetError(f"{path}: no point data '{name}', the file has {sorted(data)}")
    a = np.asarray(data[name], dtype=np.float64)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    ok = a.shape == (n,) if comps == 1 else (a.ndim == 2 and a.shape[0] == n and a.shape[1] >= comps)
    if not ok:
        want = f"[{n}]" if comps == 1 else f"[{n}, >= {comps}]"
        raise DatasetError(f"{path}: point data '{name}' has shape {a.shape}, expected {want}")
    if not np.all(np.isfinite(a)):
        raise DatasetError(f"{path}: point data '{name}' has NaN/Inf values")
    return a if comps == 1 else a[:, :comps]


def _cells_2d(path: Path, mesh: object) -> tuple[np.ndarray | None, str | None]:
    """The 2D cells: one type as is, or quads split into triangles when types are mixed."""
    blocks = [(c.type, np.asarray(c.data)) for c in mesh.cells if c.type in ("triangle", "quad")]
    if not blocks:
        return None, None
    if len({t for t, _ in blocks}) == 1:
        return np.concatenate([d for _, d in blocks]).astype(np.int64), blocks[0][0]
    tris = [d if t == "triangle" else np.concatenate([d[:, [0, 1, 2]], d[:, [0, 2, 3]]]) for t, d in blocks]
    return np.concatenate(tris).astype(np.int64), "triangle"


def read_case(case_dir: str | os.PathLike) -> MeshSample:
    """One AirfRANS case folder -> :class:`MeshSample` with ``x [N, 5]``, ``y [N, 4]`` (see module docstring)."""
    case_dir = Path(case_dir)
    name = case_dir.name
    vtu, vtp = case_dir / f"{name}_internal.vtu", case_dir / f"{name}_aerofoil.vtp"
    speed, aoa = parse_case_name(name)
    for f in (vtu, vtp):
        if not f.exists():
            raise DatasetError(f"{f}: file does not exist (an AirfRANS case folder holds <case>_internal.vtu "
                               "and <case>_aerofoil.vtp)")
        regular_file(f, "case file")
    mesh = read_mesh(vtu, "VTU file")
    pos = np.asarray(mesh.points, dtype=np.float64)[:, :2]  # [N, 2]
    n = len(pos)
    vel = _point_field(vtu, mesh.point_data, "U", n, 2)
    p = _point_field(vtu, mesh.point_data, "p", n, 1)
    nut = _point_field(vtu, mesh.point_data, "nut", n, 1)
    sdf = -_point_field(vtu, mesh.point_data, "implicit_distance", n, 1)

    surf_pts, surf_data = read_vtp(vtp)
    surf_normals = _point_field(vtp, surf_data, "Normals", len(surf_pts), 2)
    normals = surface_normals_on_nodes(pos, surf_pts[:, :2], surf_normals, vtp)
    cells, cell_type = _cells_2d(vtu, mesh)
    return MeshSample(pos, airfoil_inputs(speed, aoa, sdf, normals), np.column_stack([vel, p, nut]),
                      cells, cell_type, name=name)


def surface_normals_on_nodes(pos: np.ndarray, surf: np.ndarray, surf_normals: np.ndarray,
                             where: str | Path = "airfoil") -> np.ndarray:
    """Put surface normals ``[M, 2]`` at the nearest of the nodes ``pos [N, 2]``; zero elsewhere -> ``[N, 2]``.

    Every surface point must coincide with a node (distance below 1 % of the surface point spacing); points that
    share a node have their normals averaged.
    """
    dist, idx = cKDTree(pos).query(surf)
    tol = 1e-2 * max(median_spacing(surf), 1e-12)
    if dist.max() > tol:
        k = int(dist.argmax())
        raise DatasetError(f"{where}: surface point {k} at {surf[k].tolist()} is {dist[k]:.3g} from the nearest "
                           f"internal-mesh node, expected to coincide with one (tolerance {tol:.3g})")
    out = np.zeros_like(pos)
    np.add.at(out, idx, surf_normals)
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return np.divide(out, norm, out=np.zeros_like(out), where=norm > 0)


def load_task_lists(root: Path, task: str) -> tuple[list[str], list[str]]:
    """(train cases, test cases) of a task from ``root/manifest.json``."""
    if task not in TASKS:
        raise ConfigError(f"--task is {task!r}, expected one of {', '.join(TASKS)}")
    path = root / "manifest.json"
    if not path.exists():
        raise DatasetError(f"{path}: no AirfRANS manifest.json (the split lists); point to the dataset folder")
    lists = read_json(path, "AirfRANS manifest")
    keys = (f"{task}_train", f"{'full' if task == 'scarce' else task}_test")
    out = []
    for key in keys:
        value = lists.get(key) if isinstance(lists, dict) else None
        if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
            have = brief(sorted(lists)) if isinstance(lists, dict) else type(lists).__name__
            raise DatasetError(f"{path}: key '{key}' must be a list of case names; the file has {have}")
        out.append(value)
    _check_case_lists(path, dict(zip(keys, out)))
    return out[0], out[1]


def _check_case_lists(path: Path, lists: dict[str, list[str]]) -> None:
    """Each case a plain folder name, listed once in all ``lists`` together (a case in two splits would leak the
    test set into training)."""
    seen: dict[str, str] = {}
    for key, cases in lists.items():
        for case in cases:
            name = brief(case, PATH_WIDTH)
            if case in ("", ".", "..") or "/" in case or "\\" in case or "\0" in case:
                raise DatasetError(f"{path}: case {name} in '{key}' is not a folder name; expected the name of a "
                                   "case folder next to manifest.json (no path separators, not . or ..)")
            if case in seen:
                where = f"twice in '{key}'" if seen[case] == key else f"in both '{seen[case]}' and '{key}'"
                raise DatasetError(f"{path}: case {name} is listed {where}; expected each case in one split only")
            seen[case] = key


def import_airfrans(root: str | os.PathLike, out: str | os.PathLike, task: str = "full", val_fraction: float = 0.0,
                    seed: int = 0, limit: int | None = None, progress: bool = False) -> Manifest:
    """Convert the cases of an AirfRANS task into a dataset directory ``out`` (splits train/[val/]test).

    ``limit`` keeps the first cases of each list (for a quick look).
    """
    root = Path(root)
    train, test = load_task_lists(root, task)
    if limit is not None:
        train, test = train[:limit], test[:limit]
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"--val-fraction is {val_fraction}, expected 0 <= f < 1")
    n_val = int(round(val_fraction * len(train)))
    val_idx = set(np.random.default_rng(seed).permutation(len(train))[:n_val].tolist()) if n_val else set()
    jobs = [("val" if i in val_idx else "train", c) for i, c in enumerate(train)] + [("test", c) for c in test]
    if not train:
        raise DatasetError(f"{root / 'manifest.json'}: task '{task}' has no training case")

    def samples() -> Iterator[tuple[str, MeshSample]]:
        for split, case in tqdm(jobs, desc=f"importing AirfRANS {task}", unit="case", disable=not progress):
            yield split, read_case(confined_dir(root, case))

    description = (f"AirfRANS (Bonnet et al. 2022) task '{task}' imported from {root}; x = [U cos a, U sin a, "
                   "sdf, n_x, n_y], y = [u, v, p/rho, nu_t]")
    return write_dataset(out, samples(), list(INPUT_FIELDS), list(TARGET_FIELDS), f"airfrans_{task}", description)


def confined_dir(root: Path, case: str) -> Path:
    """``root / case``, whose folder must stay inside ``root`` once symlinks are resolved."""
    inside = root.resolve()
    real = (inside / case).resolve()
    if not real.is_relative_to(inside):
        raise DatasetError(f"{root / 'manifest.json'}: case {brief(case, PATH_WIDTH)} resolves to {real}, outside "
                           f"{inside}; expected a case folder inside the AirfRANS folder")
    return root / case
