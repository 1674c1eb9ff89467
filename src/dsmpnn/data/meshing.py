"""Unstructured meshes with gmsh: a 2D far-field box around an airfoil, and a 3D backward-facing-step channel.

gmsh runs in-process through its Python API (the PyPI wheel ships the library; no display is needed, but the
library links the X11/OpenGL client libraries: on a bare Debian/Ubuntu image they come with
``apt-get install libglu1-mesa libgl1 libxcursor1 libxft2 libxinerama1 libxrender1 libfontconfig1``). Each
call opens and closes its own gmsh session (config files not read, no signal handlers, quiet, one thread), so
meshing is deterministic and leaves no global state.

Returned arrays: ``points [N, d]`` (float64) and ``cells [M, d + 1]`` (int64, zero-based, every point used).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from dsmpnn.errors import DsmpnnError

__all__ = ["gmsh_session", "airfoil_box_mesh", "step_channel_mesh"]


@contextmanager
def gmsh_session() -> Iterator[object]:
    """Yield the initialised ``gmsh`` module; always finalise it."""
    try:
        import gmsh
    except (ImportError, OSError) as e:  # OSError: a system library of libgmsh is missing
        raise DsmpnnError(f"gmsh cannot be loaded ({e}); install it with `pip install gmsh`, and on a bare "
                          "Debian/Ubuntu image its libraries with `apt-get install libglu1-mesa libgl1 "
                          "libxcursor1 libxft2 libxinerama1 libxrender1 libfontconfig1`") from None
    gmsh.initialize(readConfigFiles=False, interruptible=False)
    try:
        gmsh.option.setNumber("General.Terminal", 0)
        gmsh.option.setNumber("General.NumThreads", 1)
        gmsh.option.setNumber("Mesh.MeshSizeFromPoints", 0)
        gmsh.option.setNumber("Mesh.MeshSizeFromCurvature", 0)
        gmsh.option.setNumber("Mesh.MeshSizeExtendFromBoundary", 0)
        yield gmsh
    finally:
        gmsh.finalize()


def _extract(gmsh: object, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """All nodes and the linear simplices of dimension ``dim``, renumbered to the used nodes."""
    tags, coords, _ = gmsh.model.mesh.getNodes()
    points = coords.reshape(-1, 3)[:, :dim]  # [N, dim]
    etype = 2 if dim == 2 else 4  # 3-node triangle / 4-node tetrahedron
    _, node_tags = gmsh.model.mesh.getElementsByType(etype)
    cells_tags = node_tags.reshape(-1, dim + 1).astype(np.int64)
    lookup = np.full(int(tags.max()) + 1, -1, dtype=np.int64)
    lookup[tags.astype(np.int64)] = np.arange(len(tags))
    cells = lookup[cells_tags]
    used = np.unique(cells)
    remap = np.full(len(points), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return points[used].astype(np.float64), remap[cells]


def _size_field(gmsh: object, curves: list[int], dim: int, h_near: float, h_far: float, dist_far: float) -> None:
    """Mesh size ``h_near`` at the given curves/surfaces, growing linearly to ``h_far`` at distance ``dist_far``."""
    f = gmsh.model.mesh.field
    dist = f.add("Distance")
    f.setNumbers(dist, "CurvesList" if dim == 1 else "SurfacesList", curves)
    f.setNumber(dist, "Sampling", 200)
    thr = f.add("Threshold")
    f.setNumber(thr, "InField", dist)
    f.setNumber(thr, "SizeMin", h_near)
    f.setNumber(thr, "SizeMax", h_far)
    f.setNumber(thr, "DistMin", 0.0)
    f.setNumber(thr, "DistMax", dist_far)
    f.setAsBackgroundMesh(thr)


def airfoil_box_mesh(polygon: np.ndarray, box: tuple[float, float, float, float], h_near: float, h_far: float,
                     dist_far: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Triangulate the box ``(xmin, xmax, ymin, ymax)`` minus the polygon ``[M, 2]`` (an airfoil).

    The polygon's vertices are mesh nodes; the size is ``h_near`` at the airfoil and grows to ``h_far`` at
    distance ``dist_far``. Returns ``points [N, 2]`` and ``triangles [T, 3]``.
    """
    xmin, xmax, ymin, ymax = box
    with gmsh_session() as gmsh:
        geo = gmsh.model.geo
        gmsh.model.add("airfoil")
        corners = [geo.addPoint(x, y, 0.0) for x, y in ((xmin, ymin), (xmax, ymin), (xmax, ymax), (xmin, ymax))]
        outer = geo.addCurveLoop([geo.addLine(corners[k], corners[(k + 1) % 4]) for k in range(4)])
        pts = [geo.addPoint(float(x), float(y), 0.0) for x, y in polygon]
        foil = [geo.addLine(pts[k], pts[(k + 1) % len(pts)]) for k in range(len(pts))]
        geo.addPlaneSurface([outer, geo.addCurveLoop(foil)])
        geo.synchronize()
        _size_field(gmsh, foil, 1, h_near, h_far, dist_far)
        gmsh.option.setNumber("Mesh.Algorithm", 6)  # Frontal-Delaunay
        gmsh.model.mesh.generate(2)
        return _extract(gmsh, 2)


def step_channel_mesh(length: float, height: float, width: float, step_length: float, step_height: float,
                      h: float) -> tuple[np.ndarray, np.ndarray]:
    """Tetrahedralise the channel ``[0, L] x [0, H] x [0, W]`` minus the step ``[0, l_s] x [0, h_s] x [0, W]``.

    Uniform mesh size ``h``. Returns ``points [N, 3]`` and ``tetrahedra [T, 4]``.
    """
    with gmsh_session() as gmsh:
        occ = gmsh.model.occ
        gmsh.model.add("step")
        channel = occ.addBox(0.0, 0.0, 0.0, length, height, width)
        step = occ.addBox(0.0, 0.0, 0.0, step_length, step_height, width)
        occ.cut([(3, channel)], [(3, step)])
        occ.synchronize()
        gmsh.option.setNumber("Mesh.MeshSizeMin", h)
        gmsh.option.setNumber("Mesh.MeshSizeMax", h)
        gmsh.model.mesh.generate(3)
        return _extract(gmsh, 3)


def check_mesh(points: np.ndarray, cells: np.ndarray, what: str) -> None:
    """Raise if the mesh is empty or has degenerate cells."""
    if len(cells) == 0:
        raise DsmpnnError(f"{what}: gmsh produced no cells")
    edges = points[cells[:, 1:]] - points[cells[:, :1]]  # [M, d, d]
    vol = np.abs(np.linalg.det(edges))
    if vol.min() <= 1e-14 * vol.max():
        raise DsmpnnError(f"{what}: gmsh produced {int((vol <= 1e-14 * vol.max()).sum())} degenerate cells")
