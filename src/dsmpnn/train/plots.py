"""PNG figures people look at: loss curves and truth / prediction / error fields."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.tri as mtri  # noqa: E402
import numpy as np  # noqa: E402

from dsmpnn.data.sample import MeshSample  # noqa: E402
from dsmpnn.train.checkpoint import atomic_write_bytes  # noqa: E402

__all__ = ["plot_loss_curve", "plot_fields", "triangulation"]


def _save(fig: plt.Figure, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())


def plot_loss_curve(records: Sequence[dict], path: Path) -> None:
    """Training loss per epoch (log scale) and, where logged, validation relative L2."""
    fig, ax = plt.subplots(figsize=(6, 4))
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
    """Triangles of a 2D mesh: its triangle cells, quads split in two, or a Delaunay triangulation."""
    x, y = sample.pos[:, 0], sample.pos[:, 1]
    if sample.cells is not None and sample.cell_type in ("triangle", "quad"):
        c = sample.cells
        tri = c if sample.cell_type == "triangle" else np.concatenate([c[:, [0, 1, 2]], c[:, [0, 2, 3]]])
        return mtri.Triangulation(x, y, tri)
    return mtri.Triangulation(x, y)


def plot_fields(sample: MeshSample, pred: np.ndarray, names: Sequence[str], path: Path) -> None:
    """One row per target field: truth, prediction, error (prediction - truth). 3D meshes: the slab
    of nodes around the median z, projected on (x, y)."""
    s = sample
    if s.dim == 3:
        z = s.pos[:, 2]
        keep = np.abs(z - np.median(z)) <= 0.05 * (z.max() - z.min() + 1e-12)
        s = MeshSample(s.pos[keep, :2], s.x[keep], s.y[keep], name=s.name)
        pred = pred[keep]
    tri = triangulation(s)
    fig, axes = plt.subplots(len(names), 3, figsize=(12, 3.6 * len(names)), squeeze=False)
    for t, name in enumerate(names):
        true, p = s.y[:, t], pred[:, t]
        vmin, vmax = float(min(true.min(), p.min())), float(max(true.max(), p.max()))
        err = p - true
        emax = float(np.abs(err).max()) or 1.0
        for ax, v, title, kw in (
            (axes[t, 0], true, f"{name}: truth", dict(vmin=vmin, vmax=vmax, cmap="viridis")),
            (axes[t, 1], p, f"{name}: prediction", dict(vmin=vmin, vmax=vmax, cmap="viridis")),
            (axes[t, 2], err, f"{name}: error (rel L2 {np.linalg.norm(err) / max(np.linalg.norm(true), 1e-300):.3f})",
             dict(vmin=-emax, vmax=emax, cmap="RdBu_r")),
        ):
            im = ax.tripcolor(tri, v, shading="gouraud", **kw)
            ax.set_aspect("equal")
            ax.set_title(title)
            fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(s.name)
    _save(fig, path)
