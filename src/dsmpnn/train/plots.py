"""PNG figures people look at: loss curves and truth / prediction / error fields."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from dsmpnn.data.sample import MeshSample
from dsmpnn.train.checkpoint import atomic_write_bytes

if TYPE_CHECKING:
    import matplotlib.pyplot as plt
    import matplotlib.tri as mtri

__all__ = ["plot_loss_curve", "plot_fields", "triangulation", "plane_slice", "ZOOMS"]


def _pyplot() -> ModuleType:
    """matplotlib.pyplot on the Agg backend, imported when a figure is drawn (0.4 s that predict and the ranks
    that draw nothing do not pay)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot

    return matplotlib.pyplot


def _tri() -> ModuleType:
    import matplotlib.tri

    return matplotlib.tri


def _save(fig: plt.Figure, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())


def plot_loss_curve(records: Sequence[dict], path: Path) -> None:
    """Training loss per epoch (log scale) and, where logged, validation relative L2."""
    fig, ax = _pyplot().subplots(figsize=(6, 4))
    ep = [r["epoch"] for r in records if "train_loss" in r]
    ax.semilogy(ep, [r["train_loss"] for r in records if "train_loss" in r], label="train MSE (normalised)")
    val = [(r["epoch"], r["val_rel_l2"]) for r in records if "val_rel_l2" in r]
    if val:
        ax.semilogy(*zip(*val), "o-", label="validation relative L2")
    ax.set_xlabel("epoch")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    _save(fig, path)


def triangulation(sample: MeshSample) -> mtri.Triangulation:
    """Triangles of a 2D mesh: its triangle cells and quads split in two (every block of those types), or a
    Delaunay triangulation."""
    x, y = sample.pos[:, 0], sample.pos[:, 1]
    tris = [c if kind == "triangle" else np.concatenate([c[:, [0, 1, 2]], c[:, [0, 2, 3]]])
            for kind, c in sample.cell_blocks if kind in ("triangle", "quad")]
    if tris:
        return _tri().Triangulation(x, y, np.concatenate(tris))
    return _tri().Triangulation(x, y)


ZOOMS = {"airfoil": ((-0.5, 1.5), (-0.6, 0.6)), "airfrans": ((-0.5, 1.5), (-0.6, 0.6))}
"""Second, zoomed figure (x range, y range) for datasets whose manifest name starts with a key: the airfoil."""


def plane_slice(pos: np.ndarray, tets: np.ndarray, z0: float) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Cut a tetrahedral mesh (P1 fields) with the plane z = z0.

    Returns (xy [M, 2] distinct points, triangles [K, 3], (ia, ib, t) [M] each) where intersection point m lies
    on the mesh edge (ia[m], ib[m]) at ``pos[ia] + t (pos[ib] - pos[ia])``; a node field v is
    ``v[ia] + t (v[ib] - v[ia])`` there, the exact linear interpolant on the cut. A tetrahedron with one vertex
    on one side gives a triangle, with two a quadrilateral (two triangles). Regions outside the mesh (e.g. the step
    block) stay empty.
    """
    above = pos[tets, 2] >= z0  # [C, 4]
    n_above = above.sum(1)
    pieces_a, pieces_b, tris = [], [], []
    offset = 0
    # one vertex alone on its side: a triangle from the 3 edges that touch it
    for lone_above in (True, False):
        sel = np.flatnonzero(n_above == (1 if lone_above else 3))
        if sel.size:
            side = above[sel] if lone_above else ~above[sel]
            lone = np.argmax(side, axis=1)  # [c]
            others = np.array([[j for j in range(4) if j != i] for i in range(4)])[lone]  # [c, 3]
            a = np.repeat(tets[sel, lone][:, None], 3, axis=1)
            b = np.take_along_axis(tets[sel], others, axis=1)
            pieces_a.append(a.ravel())
            pieces_b.append(b.ravel())
            tris.append(offset + np.arange(3 * len(sel)).reshape(-1, 3))
            offset += 3 * len(sel)
    sel = np.flatnonzero(n_above == 2)
    if sel.size:
        order = np.argsort(~above[sel], axis=1, kind="stable")  # the two above first
        v = np.take_along_axis(tets[sel], order, axis=1)  # [c, 4]: a, b above; c, d below
        a = v[:, [0, 0, 1, 1]]  # quad edges a-c, a-d, b-d, b-c: a cycle around the cut
        b = v[:, [2, 3, 3, 2]]
        pieces_a.append(a.ravel())
        pieces_b.append(b.ravel())
        q = offset + np.arange(4 * len(sel)).reshape(-1, 4)
        tris.append(np.concatenate([q[:, [0, 1, 2]], q[:, [0, 2, 3]]]))
    if not tris:
        raise ValueError(f"the plane z = {z0:g} does not cut the mesh")
    ia, ib = np.concatenate(pieces_a), np.concatenate(pieces_b)
    za, zb = pos[ia, 2], pos[ib, 2]
    dz = zb - za
    t = np.where(dz != 0, (z0 - za) / np.where(dz != 0, dz, 1.0), 0.0)
    xy = pos[ia, :2] + t[:, None] * (pos[ib, :2] - pos[ia, :2])
    # merge coincident points (an edge shared by several tetrahedra, a vertex on the plane)
    _, first, inv = np.unique(np.round(xy, 10), axis=0, return_index=True, return_inverse=True)
    ia, ib, t, xy = ia[first], ib[first], t[first], xy[first]
    tris = inv.reshape(-1)[np.concatenate(tris)]
    # tetrahedra touching the plane only at a vertex or an edge give zero-area pieces: drop them (they would be
    # drawn as hairlines)
    p = xy[tris]  # [K, 3, 2]
    d1, d2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    area = 0.5 * np.abs(d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0])
    tris = tris[area > 1e-12 * np.prod(np.ptp(pos[:, :2], axis=0))]
    return xy, tris, (ia, ib, t)


def _mask_long(tri: mtri.Triangulation, factor: float = 3.0) -> None:
    """Mask triangles whose longest edge exceeds ``factor`` x the median edge (Delaunay across holes/steps)."""
    p = np.column_stack([tri.x, tri.y])[tri.triangles]  # [K, 3, 2]
    longest = np.linalg.norm(p - np.roll(p, 1, axis=1), axis=2).max(1)
    tri.set_mask(longest > factor * np.median(longest))


def _section(sample: MeshSample, pred: np.ndarray) -> tuple[MeshSample, np.ndarray, str]:
    """A 3D mesh as the 2D sample of its mid-plane z = median(z) (cut of the tetrahedra, else a slab of nodes)."""
    s = sample
    z0 = float(np.median(s.pos[:, 2]))
    if s.cells is not None and s.cell_type == "tetra":
        xy, tris, (ia, ib, t) = plane_slice(s.pos, s.cells, z0)
        lerp = lambda v: v[ia] + t[:, None] * (v[ib] - v[ia])  # noqa: E731
        return (MeshSample(xy, lerp(s.x), lerp(s.y), tris, "triangle", name=s.name), lerp(pred),
                f"plane z = {z0:.3g}")
    half = 0.05 * (np.ptp(s.pos[:, 2]) + 1e-12)
    keep = np.abs(s.pos[:, 2] - z0) <= half
    return (MeshSample(s.pos[keep, :2], s.x[keep], s.y[keep], name=s.name), pred[keep],
            f"nodes with |z - {z0:.3g}| <= {half:.2g}")


def plot_fields(sample: MeshSample, pred: np.ndarray, names: Sequence[str], path: Path,
                zoom: tuple[tuple[float, float], tuple[float, float]] | None = None) -> None:
    """One row per target field: truth, prediction, error (prediction - truth).

    2D meshes are drawn on their cells (so holes such as an airfoil stay empty); ``zoom`` ((x0, x1), (y0, y1))
    writes a second figure ``<path stem>_zoom.png`` restricted to that window, with colour limits from the nodes
    inside it. 3D meshes: the cut through the tetrahedra with the plane z = median z (x-y section)."""
    s, where = sample, ""
    if s.dim == 3:
        s, pred, where = _section(s, pred)
    tri = triangulation(s)
    if sample.dim == 3 and s.cells is None:
        _mask_long(tri)  # Delaunay of a slab of nodes: drop triangles across the step / holes
    _draw(s, pred, names, tri, Path(path), f"{s.name}" + (f" ({where})" if where else ""), None)
    if zoom is not None and s.dim == 2:
        _draw(s, pred, names, tri, Path(path).with_name(Path(path).stem + "_zoom.png"), f"{s.name} (zoom)", zoom)


def _draw(s: MeshSample, pred: np.ndarray, names: Sequence[str], tri: mtri.Triangulation, path: Path, title: str,
          zoom: tuple[tuple[float, float], tuple[float, float]] | None) -> None:
    inside = np.ones(s.num_nodes, dtype=bool)
    if zoom is not None:
        (x0, x1), (y0, y1) = zoom
        inside = (s.pos[:, 0] >= x0) & (s.pos[:, 0] <= x1) & (s.pos[:, 1] >= y0) & (s.pos[:, 1] <= y1)
        if not inside.any():
            inside[:] = True
    ext = np.ptp(s.pos[inside], axis=0) + 1e-12
    aspect = float(ext[1] / ext[0]) if zoom is None else (zoom[1][1] - zoom[1][0]) / (zoom[0][1] - zoom[0][0])
    row_h = float(np.clip(4.0 * aspect, 1.6, 4.0)) + 0.6
    fig, axes = _pyplot().subplots(len(names), 3, figsize=(13, row_h * len(names)), squeeze=False)
    for t, name in enumerate(names):
        true, p = s.y[:, t], pred[:, t]
        vmin = float(min(true[inside].min(), p[inside].min()))
        vmax = float(max(true[inside].max(), p[inside].max()))
        err = p - true
        emax = float(np.abs(err[inside]).max()) or 1.0
        rel = np.linalg.norm(err) / max(np.linalg.norm(true), 1e-300)
        for ax, v, label, kw in (
            (axes[t, 0], true, f"{name}: truth", dict(vmin=vmin, vmax=vmax, cmap="viridis")),
            (axes[t, 1], p, f"{name}: prediction", dict(vmin=vmin, vmax=vmax, cmap="viridis")),
            (axes[t, 2], err, f"{name}: error (rel L2 {rel:.3f})", dict(vmin=-emax, vmax=emax, cmap="RdBu_r")),
        ):
            im = ax.tripcolor(tri, v, shading="gouraud", **kw)
            ax.set_aspect("equal")
            if zoom is not None:
                ax.set_xlim(*zoom[0])
                ax.set_ylim(*zoom[1])
            ax.set_title(label, fontsize="medium")
            fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(title)
    _save(fig, path)
