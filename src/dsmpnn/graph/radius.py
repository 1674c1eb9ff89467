r"""Radius graphs and their edge attributes.

Edges follow the PyG convention: ``edge_index[0]`` is the source j, ``edge_index[1]`` the target i, and the
message of edge (j -> i) updates node i. An edge exists when :math:`0 < |p_j - p_i| \le r`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree

from dsmpnn.errors import GraphError

__all__ = ["Graph", "radius_graph", "edge_attributes", "build_graph", "estimate_edges", "DEFAULT_MAX_EDGES"]

DEFAULT_MAX_EDGES = 400_000_000
"""Refuse to build graphs with more edges than this (about 3 GiB of int64 indices alone)."""


@dataclass(frozen=True)
class Graph:
    """A graph ready for the model.

    Shapes:
        edge_index: [2, E] int64, sorted by target then source
        edge_attr:  [E, d + 1] float, ``[(p_j - p_i) / r, |p_j - p_i| / r]``
    """

    edge_index: torch.Tensor
    edge_attr: torch.Tensor
    num_nodes: int

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])


def estimate_edges(pos: np.ndarray, radius: float, sample: int = 2048, seed: int = 0) -> int:
    """Estimate the number of directed edges of the radius graph by counting neighbours of a random subset."""
    n = len(pos)
    tree = cKDTree(pos)
    idx = np.random.default_rng(seed).choice(n, size=min(n, sample), replace=False)
    counts = tree.query_ball_point(pos[idx], radius, return_length=True) - 1
    return int(round(counts.mean() * n))


def radius_graph(
    pos: np.ndarray,
    radius: float,
    max_neighbors: int | None = None,
    chunk: int = 65_536,
    max_edges: int = DEFAULT_MAX_EDGES,
    warn_isolated: bool = True,
) -> np.ndarray:
    """All pairs with ``0 < |p_j - p_i| <= radius`` as ``edge_index [2, E]`` (row 0 source j, row 1 target i).

    With ``max_neighbors = k`` each target keeps its k nearest sources within the radius. Targets are processed
    in chunks of ``chunk`` nodes so memory stays proportional to the output. Refuses (GraphError) before building
    a graph estimated to exceed ``max_edges`` edges, and warns with counts when nodes have no neighbour.
    """
    pos = np.ascontiguousarray(pos, dtype=np.float64)
    if not (radius > 0 and np.isfinite(radius)):
        raise GraphError(f"radius must be a positive number, got {radius}")
    n = len(pos)
    if n * (n - 1) > max_edges:  # cheap exact bound first, estimate only where it matters
        est = estimate_edges(pos, radius)
        if est > max_edges:
            raise GraphError(
                f"radius {radius:g} on {n} nodes gives about {est:,} edges ({est / max(n, 1):.0f} per node), over "
                f"the limit of {max_edges:,}; use a smaller radius, max_neighbors, or raise the limit"
            )
    tree = cKDTree(pos)
    parts = []
    for start in range(0, n, chunk):
        tgt = np.arange(start, min(n, start + chunk))
        if max_neighbors is None:
            lists = tree.query_ball_point(pos[tgt], radius, return_sorted=True)
            lens = np.fromiter((len(nb) for nb in lists), dtype=np.int64, count=len(lists))
            src = np.fromiter((j for nb in lists for j in nb), dtype=np.int64, count=int(lens.sum()))
            dst = np.repeat(tgt, lens)
        else:
            d, j = tree.query(pos[tgt], k=max_neighbors + 1, distance_upper_bound=radius)
            dst = np.repeat(tgt, max_neighbors + 1).reshape(len(tgt), -1)
            keep = np.isfinite(d)
            src, dst = j[keep], dst[keep]
            order = np.lexsort((src, dst))
            src, dst = src[order], dst[order]
        keep = src != dst
        parts.append(np.stack([src[keep], dst[keep]]))
    edge_index = np.concatenate(parts, axis=1) if parts else np.zeros((2, 0), dtype=np.int64)
    if warn_isolated and n > 1:
        isolated = n - len(np.unique(edge_index[1]))
        if isolated:
            warnings.warn(
                f"radius {radius:g}: {isolated} of {n} nodes have no neighbour and receive no message; "
                "consider a larger radius",
                stacklevel=2,
            )
    return edge_index


def edge_attributes(pos: np.ndarray | torch.Tensor, edge_index: np.ndarray | torch.Tensor, radius: float) -> torch.Tensor:
    r"""Edge features :math:`e_{ij} = [(p_j - p_i) / r, |p_j - p_i| / r]`.

    Shapes: pos [N, d], edge_index [2, E] -> [E, d + 1] (dtype of ``pos`` when a tensor, else float64).
    """
    pos = torch.as_tensor(pos)
    ei = torch.as_tensor(edge_index)
    rel = (pos[ei[0]] - pos[ei[1]]) / radius  # [E, d]
    return torch.cat([rel, rel.norm(dim=1, keepdim=True)], dim=1)


def build_graph(pos: np.ndarray, radius: float, max_neighbors: int | None = None,
                dtype: torch.dtype = torch.float32, **kwargs) -> Graph:
    """Radius graph plus edge attributes for node positions ``pos [N, d]``."""
    ei = radius_graph(pos, radius, max_neighbors, **kwargs)
    attr = edge_attributes(torch.as_tensor(pos, dtype=torch.float64), ei, radius).to(dtype)
    return Graph(torch.from_numpy(ei), attr, len(pos))
