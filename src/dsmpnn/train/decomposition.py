"""Look at a domain decomposition before a long run: ``dsmpnn partition`` (report + picture). ``dsmpnn check``
(the training step on P ranks against one process) is :mod:`dsmpnn.train.check`."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from dsmpnn.data.dataset import Dataset  # noqa: E402
from dsmpnn.data.sample import MeshSample  # noqa: E402
from dsmpnn.errors import DatasetError, GraphError  # noqa: E402
from dsmpnn.graph import (HaloPlan, PartitionReport, build_halo_plans, partition, partition_report,  # noqa: E402
                          radius_graph)
from dsmpnn.train.checkpoint import atomic_write_bytes  # noqa: E402
from dsmpnn.train.config import Config  # noqa: E402
from dsmpnn.train.evaluate import vtu_bytes  # noqa: E402
from dsmpnn.train.sharding import check_nproc  # noqa: E402

__all__ = ["PartitionView", "inspect_partition", "write_partition_figure"]


@dataclass(frozen=True, eq=False)
class PartitionView:
    """One mesh split over ``nparts`` ranks: owner [N], every rank's halo plan on the full radius graph, the report."""

    sample: MeshSample
    owner: np.ndarray
    plans: list[HaloPlan]
    report: PartitionReport
    radius: float
    num_edges: int

    def halo_count(self) -> np.ndarray:
        """[N] number of ranks that hold each node as a halo node."""
        counts = np.zeros(self.sample.num_nodes, dtype=np.int64)
        for plan in self.plans:
            counts[plan.halo] += 1
        return counts

    def describe(self) -> str:
        s = self.sample
        return (f"mesh '{s.name}': {s.num_nodes} nodes, {self.num_edges} edges (radius {self.radius:g}), "
                f"{self.report.nparts} ranks\n{self.report.format()}")


def _mesh(data_dir: str | Path, split: str, index: int) -> MeshSample:
    data = Dataset(data_dir)
    files = data.split(split)
    if not 0 <= index < len(files):
        raise DatasetError(f"{data.root}: split '{split}' has {len(files)} meshes, no mesh number {index}")
    return data.load(files[index])


def inspect_partition(data_dir: str | Path, nproc: int, method: str, cfg: Config, halo_hops: int = 1,
                      radius: float | None = None, split: str = "train", index: int = 0) -> PartitionView:
    """Partition mesh ``index`` of ``split`` into ``nproc`` subdomains on its radius graph (``radius``, default the
    config's ``graph.radius``; ``graph.max_neighbors``) and build every rank's halo plan."""
    sample = _mesh(data_dir, split, index)
    check_nproc(nproc, [(sample.name, sample.num_nodes)])
    r = cfg.graph.radius if radius is None else radius
    if not r > 0:
        raise GraphError(f"--radius must be > 0, got {r}")
    ei = radius_graph(sample.pos, r, cfg.graph.max_neighbors, warn_isolated=False, max_edges=cfg.graph.max_edges)
    owner = partition(sample.pos, nproc, method, ei)
    plans = build_halo_plans(owner, ei, halo_hops, nproc)
    report = partition_report(owner, ei, nproc, halo_hops, method)
    return PartitionView(sample, owner, plans, report, r, int(ei.shape[1]))


def _colors(n: int) -> np.ndarray:
    if n <= 10:
        return plt.get_cmap("tab10")(np.arange(n))
    if n <= 20:
        return plt.get_cmap("tab20")(np.arange(n))
    return plt.get_cmap("turbo")(np.linspace(0, 1, n))


def write_partition_figure(view: PartitionView, path: str | Path) -> Path:
    """Draw the subdomains and halos to ``path``, atomically.

    ``.png`` (2D meshes): every node a dot in its owner's colour; the halo nodes of rank p ringed in p's colour
    (a node in several halos gets several rings of different sizes). ``.vtu`` (2D or 3D): the mesh with the point
    fields ``owner`` (int) and ``halo_count`` (number of ranks holding the node as halo), for ParaView.
    """
    path = Path(path)
    s = view.sample
    if path.suffix == ".vtu":
        atomic_write_bytes(path, vtu_bytes(s, {"owner": view.owner.astype(np.int32),
                                               "halo_count": view.halo_count().astype(np.int32)}, path))
        return path
    if path.suffix != ".png":
        raise DatasetError(f"{path}: the figure must end in .png (2D meshes) or .vtu (any mesh)")
    if s.dim != 2:
        raise DatasetError(f"{path}: mesh '{s.name}' is {s.dim}D; write a .vtu (owner and halo_count point fields) "
                           "and open it in ParaView")
    P = view.report.nparts
    colors = _colors(P)
    size = float(np.clip(20000 / s.num_nodes, 2, 40))  # marker area in points^2
    fig, ax = plt.subplots(figsize=(8, 7))
    ax.scatter(s.pos[:, 0], s.pos[:, 1], c=colors[view.owner], s=size, linewidths=0)
    for p, plan in enumerate(view.plans):
        h = plan.halo
        ax.scatter(s.pos[h, 0], s.pos[h, 1], s=size * (3 + 3 * p / max(P - 1, 1)), facecolors="none",
                   edgecolors=[colors[p]], linewidths=0.9,
                   label=f"rank {p}: {plan.num_owned} owned, {plan.num_halo} halo")
    ax.set_aspect("equal")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", title="dot: owner, ring: halo of")
    rep = view.report
    ax.set_title(f"{s.name}: {rep.method}, P={P}, halo_hops={rep.halo_hops}, imbalance {rep.imbalance:.3f}, "
                 f"edge cut {rep.edge_cut}", fontsize="medium")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path
