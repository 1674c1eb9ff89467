"""From mesh samples to model tensors: normalised node features, targets and graphs (full or sampled)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dsmpnn.data.dataset import Dataset, Manifest
from dsmpnn.data.sample import MeshSample
from dsmpnn.errors import DatasetError, GraphError
from dsmpnn.graph import Graph, build_graph, estimate_edges, sampled_cap
from dsmpnn.graph.radius import DEFAULT_MAX_EDGES
from dsmpnn.train.config import Config, GraphConfig

__all__ = ["FeatureMap", "GraphBatch", "GraphStats", "check_graph_size", "check_split_graphs", "make_batch"]


@dataclass(frozen=True)
class FeatureMap:
    """Normalisation of a dataset: node input ``[pos_n, x_n]`` (``pos_n`` only with ``use_pos``), target ``y_n``;
    and the width of the edge attributes (``edge_features``, the config key ``graph.edge_features``).

    Every quantity is normalised per channel with the training split's mean and std: z = (v - mean) / std.
    """

    manifest: Manifest
    use_pos: bool = True
    edge_features: str = "geometry"

    @classmethod
    def from_config(cls, manifest: Manifest, cfg: Config) -> "FeatureMap":
        """The feature map of a run: ``model.use_pos`` and ``graph.edge_features`` of ``cfg``."""
        return cls(manifest, cfg.model.use_pos, cfg.graph.edge_features)

    @property
    def in_channels(self) -> int:
        return len(self.manifest.input_fields) + (self.manifest.dim if self.use_pos else 0)

    @property
    def out_channels(self) -> int:
        return len(self.manifest.target_fields)

    @property
    def edge_dim(self) -> int:
        """Edge attribute width: d + 1 (``geometry``) or d + 1 + 2F (``inputs``, F input fields), see
        :func:`dsmpnn.graph.edge_attributes`."""
        fields = 2 * len(self.manifest.input_fields) if self.edge_features == "inputs" else 0
        return self.manifest.dim + 1 + fields

    def edge_fields(self, x: torch.Tensor) -> torch.Tensor | None:
        """The node fields the edge attributes carry: with ``inputs`` the normalised input fields ``x_n``, the last
        F columns of the model inputs; None with ``geometry``.

        Shapes: x [N, in_channels] -> [N, F] (a view) or None.
        """
        if self.edge_features != "inputs":
            return None
        return x[:, x.shape[1] - len(self.manifest.input_fields):]

    def inputs(self, sample: MeshSample, dtype: torch.dtype) -> torch.Tensor:
        """[N, in_channels] normalised node inputs."""
        fields = (["pos"] if self.use_pos else []) + ["x"]
        parts = [self._normalized(sample, f, dtype) for f in fields]
        return torch.cat(parts, dim=1)

    def targets(self, sample: MeshSample, dtype: torch.dtype) -> torch.Tensor:
        """[N, out_channels] normalised targets."""
        return self._normalized(sample, "y", dtype)

    def check(self, sample: MeshSample, dtype: torch.dtype) -> MeshSample:
        """``sample``, once its inputs (and targets) are known to normalise to finite ``dtype`` values."""
        self.inputs(sample, dtype)
        if sample.y is not None:
            self.targets(sample, dtype)
        return sample

    def _normalized(self, sample: MeshSample, field: str, dtype: torch.dtype) -> torch.Tensor:
        """(v - mean) / std of one field in ``dtype``; a DatasetError when a value leaves its range (a value far
        outside the statistics the run was trained with, or statistics whose std is tiny)."""
        stats = self.manifest.stats[field]
        z = torch.from_numpy(stats.normalize(getattr(sample, field))).to(dtype)  # [N, C]
        bad = ~torch.isfinite(z)
        if bool(bad.any()):
            node, col = (int(i) for i in bad.nonzero()[0])
            value = getattr(sample, field)[node, col]
            raise DatasetError(
                f"sample '{sample.name}': field '{field}' column {col} at node {node} is {value:.6g}, which normalises "
                f"(mean {stats.mean[col]:.6g}, std {stats.std[col]:.6g}) beyond the {dtype} range; expected values "
                "of the scale of the manifest's statistics")
        return z

    def to_physical(self, y_norm: torch.Tensor) -> np.ndarray:
        """Denormalise model outputs: [N, T] -> physical units (float64 numpy)."""
        return self.manifest.stats["y"].denormalize(y_norm.detach().double().cpu().numpy())


@dataclass
class GraphBatch:
    """Several graphs as one disjoint graph. x: [N, F], y: [N, T] or None, edge_index: [2, E], edge_attr: [E, D]."""

    x: torch.Tensor
    y: torch.Tensor | None
    edge_index: torch.Tensor
    edge_attr: torch.Tensor

    def to(self, device: torch.device) -> "GraphBatch":
        return GraphBatch(self.x.to(device), None if self.y is None else self.y.to(device),
                          self.edge_index.to(device), self.edge_attr.to(device))


def make_batch(items: list[tuple[MeshSample, np.ndarray | None]], fmap: FeatureMap, radius: float,
               max_neighbors: int | None, dtype: torch.dtype, with_targets: bool = True,
               max_edges: int = DEFAULT_MAX_EDGES, stats: GraphStats | None = None,
               cap_mode: str = "scaled") -> GraphBatch:
    """Build the radius graph of each (sample, node subset) pair (subset None = every node) and join them; the
    edge attributes carry the node fields ``fmap.edge_fields`` of the subset's inputs (``graph.edge_features``).

    ``stats`` counts the nodes without a neighbour (see :class:`GraphStats`); ``max_edges``: the refusal limit of
    :func:`dsmpnn.graph.radius_graph`; a subset's neighbour cap is :func:`dsmpnn.graph.sampled_cap` of
    ``max_neighbors`` (``cap_mode``: ``graph.sampled_cap``)."""
    xs, ys, eis, eas, offset = [], [], [], [], 0
    for sample, idx in items:
        pos = sample.pos if idx is None else sample.pos[idx]
        cap = sampled_cap(max_neighbors, len(pos), sample.num_nodes, cap_mode)
        x = fmap.inputs(sample, dtype)
        x = x if idx is None else x[idx]  # [n, in_channels]
        g: Graph = build_graph(pos, radius, cap, dtype=dtype, fields=fmap.edge_fields(x), warn_isolated=False,
                               max_edges=max_edges)
        if stats is not None:
            stats.add(g.edge_index, g.num_nodes)
        xs.append(x)
        if with_targets:
            y = fmap.targets(sample, dtype)
            ys.append(y if idx is None else y[idx])
        eis.append(g.edge_index + offset if offset else g.edge_index)
        eas.append(g.edge_attr)
        offset += g.num_nodes
    return GraphBatch(_join(xs), _join(ys) if with_targets else None, _join(eis, 1), _join(eas))


def _join(parts: list[torch.Tensor], dim: int = 0) -> torch.Tensor:
    """``torch.cat(parts, dim)``, without the copy when there is one part (a whole mesh: its [2, E] and [E, D]
    edge tensors are not duplicated)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim)


@dataclass
class GraphStats:
    """Nodes without a neighbour within the radius (they receive no message) over the graphs a command builds, so
    that a radius too small for the mesh is reported once with counts, not once per graph or step."""

    graphs: int = 0
    nodes: int = 0
    isolated: int = 0

    def add(self, edge_index: torch.Tensor, num_nodes: int) -> None:
        """Count one graph: ``edge_index [2, E]`` (row 1 the targets) on ``num_nodes`` nodes."""
        hit = torch.zeros(num_nodes, dtype=torch.bool)
        hit[torch.as_tensor(edge_index)[1].cpu()] = True
        self.count(num_nodes, num_nodes - int(hit.sum()))

    def merge(self, other: "GraphStats") -> None:
        """Add the counts of ``other``."""
        self.graphs += other.graphs
        self.nodes += other.nodes
        self.isolated += other.isolated

    def count(self, nodes: int, isolated: int) -> None:
        """Count one graph (or one rank's part of it) of ``nodes`` nodes, ``isolated`` of them without a
        neighbour."""
        self.graphs += 1
        self.nodes += nodes
        self.isolated += isolated

    def warning(self, radius: float, graphs: str, advice: str = "a larger graph.radius") -> str | None:
        """The message for ``graphs`` (e.g. "the 12 sampled graphs of epoch 1"), or None when every node has a
        neighbour."""
        if not self.isolated:
            return None
        return (f"graph.radius {radius:g}: {self.isolated:,} of {self.nodes:,} nodes "
                f"({100 * self.isolated / max(self.nodes, 1):.1f} %) of {graphs} have no neighbour within the radius "
                f"and receive no message; consider {advice}")


def check_graph_size(sample: MeshSample, radius: float, max_neighbors: int | None, max_edges: int,
                     purpose: str, nodes: int | None = None) -> None:
    """Refuse, before anything is built, a radius graph on ``sample``'s nodes (or on a random subset of ``nodes``
    of them, the size of a Nyström sample) estimated to have more than ``max_edges`` edges (config keys
    ``graph.radius``, ``graph.max_neighbors``, ``graph.max_edges``). ``purpose`` says what the graph is for."""
    n = sample.num_nodes if nodes is None else min(nodes, sample.num_nodes)
    bound = n * (n - 1) if max_neighbors is None else n * min(max_neighbors, n - 1)
    if bound <= max_edges:
        return
    pos = sample.pos
    if n < sample.num_nodes:
        pos = pos[np.sort(np.random.default_rng(0).choice(sample.num_nodes, n, replace=False))]
    est = min(estimate_edges(pos, radius), bound)
    if est > max_edges:
        where = f"{n:,} sampled nodes of mesh '{sample.name}'" if n < sample.num_nodes else \
            f"the {n:,} nodes of mesh '{sample.name}'"
        raise GraphError(f"graph.radius {radius:g} gives about {est:,} edges ({est / n:.0f} per node) on {where} "
                         f"({purpose}), more than graph.max_edges = {max_edges:,}; refused before building it. Use a "
                         "smaller graph.radius or set graph.max_neighbors, or raise graph.max_edges if the memory "
                         "is there")


def check_split_graphs(data: Dataset, files: Sequence[str], gc: GraphConfig, purpose: str,
                       nodes: int | None = None) -> None:
    """:func:`check_graph_size` on the largest mesh among ``files`` of ``data`` (node counts read from the file
    headers; that one mesh is loaded); nothing when ``files`` is empty."""
    if files:
        sample = data.load(max(files, key=data.num_nodes))
        check_graph_size(sample, gc.radius, gc.max_neighbors, gc.max_edges, purpose, nodes)
