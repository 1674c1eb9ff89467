"""From mesh samples to model tensors: normalised node features, targets and graphs (full or sampled)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dsmpnn.data.dataset import Manifest
from dsmpnn.data.sample import MeshSample
from dsmpnn.graph import Graph, build_graph

__all__ = ["FeatureMap", "GraphBatch", "make_batch"]


@dataclass(frozen=True)
class FeatureMap:
    """Normalisation of a dataset: node input ``[pos_n, x_n]`` (``pos_n`` only with ``use_pos``), target ``y_n``.

    Every quantity is normalised per channel with the training split's mean and std: z = (v - mean) / std.
    """

    manifest: Manifest
    use_pos: bool = True

    @property
    def in_channels(self) -> int:
        return len(self.manifest.input_fields) + (self.manifest.dim if self.use_pos else 0)

    @property
    def out_channels(self) -> int:
        return len(self.manifest.target_fields)

    @property
    def edge_dim(self) -> int:
        return self.manifest.dim + 1

    def inputs(self, sample: MeshSample, dtype: torch.dtype) -> torch.Tensor:
        """[N, in_channels] normalised node inputs."""
        st = self.manifest.stats
        parts = [st["pos"].normalize(sample.pos)] if self.use_pos else []
        parts.append(st["x"].normalize(sample.x))
        return torch.from_numpy(np.concatenate(parts, axis=1)).to(dtype)

    def targets(self, sample: MeshSample, dtype: torch.dtype) -> torch.Tensor:
        """[N, out_channels] normalised targets."""
        return torch.from_numpy(self.manifest.stats["y"].normalize(sample.y)).to(dtype)

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
               max_neighbors: int | None, dtype: torch.dtype, with_targets: bool = True) -> GraphBatch:
    """Build the radius graph of each (sample, node subset) pair (subset None = every node) and join them."""
    xs, ys, eis, eas, offset = [], [], [], [], 0
    for sample, idx in items:
        pos = sample.pos if idx is None else sample.pos[idx]
        g: Graph = build_graph(pos, radius, max_neighbors, dtype=dtype, warn_isolated=False)
        x = fmap.inputs(sample, dtype)
        xs.append(x if idx is None else x[idx])
        if with_targets:
            y = fmap.targets(sample, dtype)
            ys.append(y if idx is None else y[idx])
        eis.append(g.edge_index + offset)
        eas.append(g.edge_attr)
        offset += g.num_nodes
    return GraphBatch(torch.cat(xs), torch.cat(ys) if with_targets else None, torch.cat(eis, 1), torch.cat(eas))
