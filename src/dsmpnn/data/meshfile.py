"""Reading mesh files (``.vtu``, ``.vtk``, ...) through meshio, with meshio's failures turned into one-line errors.

meshio reports a file it cannot parse by printing to stdout/stderr and calling ``sys.exit(1)``; :func:`read_mesh`
silences that output, catches the exit and meshio's exceptions, and raises a :class:`~dsmpnn.errors.DatasetError`
naming the file. :func:`point_scalar` and :func:`cell_blocks` check what is read from such a file.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from dsmpnn.data.sample import check_cells
from dsmpnn.data.untrusted import regular_file
from dsmpnn.errors import DatasetError
from dsmpnn.messages import brief

__all__ = ["cell_blocks", "guard_meshio", "point_scalar", "read_mesh"]


def read_mesh(path: str | Path, what: str = "mesh file", expected: str = ""):  # -> meshio.Mesh
    """The meshio mesh in the regular file ``path``, with at least one point; a :class:`DatasetError` for a file
    meshio cannot read. ``what`` names the file's role, ``expected`` (e.g. "expected .vtu or .vtk") ends the
    message."""
    import meshio

    path = regular_file(path, what)
    mesh = guard_meshio(path, what, lambda: meshio.read(path), expected)
    if len(mesh.points) == 0:
        raise DatasetError(f"{path}: the {what} has no points")
    return mesh


def guard_meshio(path: Path, what: str, fn, expected: str = ""):  # noqa: ANN001, ANN201 - any meshio call
    """``fn()`` (a meshio call on ``path``) with meshio's printing silenced and its failures, its ``sys.exit`` among
    them, turned into one :class:`DatasetError` naming the file and meshio's reason; ``expected`` ends it."""
    said = io.StringIO()
    tail = expected and "; " + expected
    try:
        with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
            return fn()
    except SystemExit:  # meshio's "Couldn't read file": its reason went to the silenced output
        reason = " ".join(said.getvalue().replace("Error:", "").split()) or "no reason given"
        raise DatasetError(f"{path}: cannot read the {what} (meshio: {reason[:200]}){tail}") from None
    except DatasetError:
        raise
    except Exception as e:  # noqa: BLE001 - meshio, its readers and h5py raise many types for a corrupt file
        reason = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
        raise DatasetError(f"{path}: cannot read the {what} (meshio: {reason}){tail}") from None


def point_scalar(path: Path, mesh, name: str) -> np.ndarray:
    """Point data ``name`` of ``mesh`` as ``[N]``: shape ``[N]`` or ``[N, 1]``; any other shape (a vector field
    where a scalar is expected) is refused rather than cut to its first component."""
    a = np.asarray(mesh.point_data[name])
    n = len(mesh.points)
    if a.shape not in ((n,), (n, 1)):
        raise DatasetError(f"{path}: point data {brief(name)} has shape {a.shape}, expected [{n}] or [{n}, 1] "
                           "(one value per node)")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise DatasetError(f"{path}: point data {brief(name)} has dtype {a.dtype}, expected real numbers")
    return a.reshape(n).astype(np.float64)


def cell_blocks(path: Path, mesh) -> list[tuple[str, np.ndarray]]:
    """Every cell block of ``mesh`` as ``(type, cells [M, k])``, with node indices checked against the points."""
    n = len(mesh.points)
    return [(b.type, check_cells(b.data, b.type, n, f"{path}: cell block {i} ({brief(b.type)})", known=False))
            for i, b in enumerate(mesh.cells)]
