r"""Radius graphs and their edge attributes.

Edges follow the PyG convention: ``edge_index[0]`` is the source j, ``edge_index[1]`` the target i, and the
message of edge (j -> i) updates node i. An edge exists when :math:`0 < |p_j - p_i| \le r`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from scipy.spatial import cKDTree

from dsmpnn.errors import GraphError
from dsmpnn.resources import available_memory

__all__ = ["Graph", "index_dtype", "radius_graph", "edge_attributes", "node_pair_fields", "build_graph",
           "estimate_edges", "graph_bytes", "available_memory", "DEFAULT_MAX_EDGES"]

DEFAULT_MAX_EDGES = 400_000_000
"""Refuse to build graphs with more edges than this (about 3 GiB of int32 indices alone)."""


@dataclass(frozen=True)
class Graph:
    """A graph ready for the model.

    Shapes:
        edge_index: [2, E] node ids (int32 below 2^31 nodes, else int64: :func:`index_dtype`), sorted by target
                    then source
        edge_attr:  [E, d + 1] float, ``[(p_j - p_i) / r, |p_j - p_i| / r]``, or [E, d + 1 + 2F] with node
                    fields ``f [N, F]``: ``[(p_j - p_i) / r, |p_j - p_i| / r, f_i, f_j]`` (:func:`edge_attributes`)
    """

    edge_index: torch.Tensor
    edge_attr: torch.Tensor
    num_nodes: int

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])


def index_dtype(num_nodes: int) -> type:
    """The integer type of a graph's node ids: int32 (half the 16 bytes per edge of int64 ``edge_index``) when
    every id fits, int64 from 2^31 nodes on. Consumers that need int64 (``scatter``, PyG) convert."""
    return np.int32 if num_nodes < 2**31 else np.int64


def estimate_edges(pos: np.ndarray, radius: float, sample: int = 2048, seed: int = 0,
                   tree: cKDTree | None = None) -> int:
    """Estimate the number of directed edges of the radius graph by counting neighbours of a random subset
    (``tree``: a ``cKDTree`` of ``pos`` already built, to reuse)."""
    n = len(pos)
    tree = cKDTree(pos) if tree is None else tree
    idx = np.random.default_rng(seed).choice(n, size=min(n, sample), replace=False)
    counts = tree.query_ball_point(pos[idx], radius, return_length=True) - 1
    return int(round(counts.mean() * n))


def graph_bytes(num_edges: int, dim: int, num_nodes: int = 0) -> int:
    """Bytes to build a radius graph of ``num_edges`` edges in ``dim`` dimensions and hold it for the model.

    Held: ``edge_index`` (2 x 4 bytes per edge, 2 x 8 from 2^31 nodes: :func:`index_dtype`) and float32
    ``edge_attr`` ((d + 1) x 4). Working memory (transient, at the peak of :func:`radius_graph`): the pairs from
    the k-d tree and their sorted copy, about 40 bytes per edge, plus the tree (about 3 d x 8 bytes per node).
    """
    held = num_edges * (2 * np.dtype(index_dtype(num_nodes)).itemsize + (dim + 1) * 4)
    return held + num_edges * 40 + num_nodes * 24 * dim


def _check_size(pos: np.ndarray, radius: float, tree: cKDTree, max_edges: int, max_bytes: int | None) -> None:
    """Refuse (GraphError) a graph estimated to exceed ``max_edges`` edges or ``max_bytes`` bytes."""
    n, dim = pos.shape
    limit = available_memory() if max_bytes is None else max_bytes
    worst = n * (n - 1)  # cheap exact bound first, estimate only where it matters
    if worst <= max_edges and (limit is None or graph_bytes(worst, dim, n) <= limit):
        return
    est = estimate_edges(pos, radius, tree=tree)
    if est > max_edges:
        raise GraphError(
            f"graph.radius {radius:g} on {n:,} nodes gives about {est:,} edges ({est / max(n, 1):.0f} per node), "
            f"over the limit of {max_edges:,}; use a smaller radius, max_neighbors, or raise the limit"
        )
    need = graph_bytes(est, dim, n)
    if limit is not None and need > limit:
        where = "available memory (MemAvailable)" if max_bytes is None else "the memory limit"
        raise GraphError(
            f"graph.radius {radius:g} on {n:,} nodes gives about {est:,} edges ({est / max(n, 1):.0f} per node), "
            f"estimated to need {need / 2**30:.2f} GiB to build and hold (edge_index + float32 edge_attr + working "
            f"memory), over {where} of {limit / 2**30:.2f} GiB; use a smaller radius, graph.max_neighbors, "
            "fewer nodes (graph.sample_nodes), or more ranks"
        )


def radius_graph(
    pos: np.ndarray,
    radius: float,
    max_neighbors: int | None = None,
    chunk: int = 65_536,
    max_edges: int = DEFAULT_MAX_EDGES,
    warn_isolated: bool = True,
    max_bytes: int | None = None,
) -> np.ndarray:
    """All pairs with ``0 < |p_j - p_i| <= radius`` as ``edge_index [2, E]`` (row 0 source j, row 1 target i),
    sorted by target, then source.

    Without ``max_neighbors`` the pairs come from one ``cKDTree.query_pairs`` (arrays, no Python lists) and are
    sorted by a sparse-matrix conversion (a counting sort): memory stays proportional to the output, about
    40 bytes per edge at the peak besides the result (:func:`graph_bytes`). With ``max_neighbors = k`` each
    target keeps its k nearest sources within the radius; targets are then processed in chunks of ``chunk``.

    Refuses (GraphError) before building a graph estimated to exceed ``max_edges`` edges, or to need more than
    ``max_bytes`` bytes (None: the available memory, /proc/meminfo ``MemAvailable``, where known), and warns
    with counts when nodes have no neighbour.
    """
    pos = np.ascontiguousarray(pos, dtype=np.float64)
    if not (radius > 0 and np.isfinite(radius)):
        raise GraphError(f"radius must be a positive number, got {radius}")
    n = len(pos)
    tree = cKDTree(pos)
    _check_size(pos, radius, tree, max_edges, max_bytes)
    if max_neighbors is None:
        edge_index = _all_pairs(tree, n, radius)
    else:
        parts = []
        for start in range(0, n, chunk):
            tgt = np.arange(start, min(n, start + chunk))
            d, j = tree.query(pos[tgt], k=max_neighbors + 1, distance_upper_bound=radius)
            dst = np.repeat(tgt, max_neighbors + 1).reshape(len(tgt), -1)
            keep = np.isfinite(d)
            src, dst = j[keep], dst[keep]
            order = np.lexsort((src, dst))
            src, dst = src[order], dst[order]
            keep = src != dst
            parts.append(np.stack([src[keep], dst[keep]]))
        edge_index = (np.concatenate(parts, axis=1) if parts else np.zeros((2, 0))).astype(index_dtype(n))
    if warn_isolated and n > 1:
        isolated = n - int(np.count_nonzero(np.bincount(edge_index[1], minlength=n)))
        if isolated:
            warnings.warn(
                f"radius {radius:g}: {isolated} of {n} nodes have no neighbour and receive no message; "
                "consider a larger radius",
                stacklevel=2,
            )
    return edge_index


def _all_pairs(tree: cKDTree, n: int, radius: float) -> np.ndarray:
    """Every directed pair within ``radius``, sorted by (target, source): [2, E] of :func:`index_dtype`."""
    pairs = tree.query_pairs(radius, output_type="ndarray")  # [E / 2, 2] int64, i < j
    it = index_dtype(n)
    if n < 2 or len(pairs) == 0:
        return np.zeros((2, 0), dtype=it)
    a, b = pairs[:, 0].astype(it), pairs[:, 1].astype(it)
    del pairs
    dst, src = np.concatenate([b, a]), np.concatenate([a, b])  # both directions
    del a, b
    # CSR conversion = counting sort by target; sort_indices orders the sources within each target
    m = sp.csr_matrix((np.ones(len(dst), dtype=np.int8), (dst, src)), shape=(n, n))
    del dst, src
    m.sort_indices()
    edge_index = np.empty((2, m.nnz), dtype=it)
    edge_index[0] = m.indices
    edge_index[1] = np.repeat(np.arange(n, dtype=it), np.diff(m.indptr))
    return edge_index


def edge_attributes(pos: np.ndarray | torch.Tensor, edge_index: np.ndarray | torch.Tensor, radius: float,
                    dtype: torch.dtype | None = None, chunk: int = 1 << 20,
                    fields: torch.Tensor | None = None) -> torch.Tensor:
    r"""Edge features :math:`e_{ij} = [(p_j - p_i) / r, |p_j - p_i| / r]` of every edge (j -> i), and with node
    fields ``f`` (the GKN edge features of Li et al. 2020, which condition the kernel on the input coefficient at
    both ends) :math:`e_{ij} = [(p_j - p_i) / r, |p_j - p_i| / r, f_i, f_j]`.

    The geometry is computed in the precision of ``pos`` (float64 for numpy input), ``chunk`` edges at a time, and
    everything is written into one tensor of ``dtype`` (default: that of ``pos`` when a tensor, else float64): no
    per-edge temporary larger than one chunk. The field columns are copies of rows of ``fields``
    (:func:`node_pair_fields`).

    Shapes: pos [N, d], edge_index [2, E], fields [N, F] or None -> [E, d + 1 + 2F] (F = 0 without fields).
    """
    pos = torch.as_tensor(pos)
    ei = torch.as_tensor(edge_index)
    dtype = pos.dtype if dtype is None else dtype
    num_edges, dim = ei.shape[1], pos.shape[1]
    width = 0 if fields is None else 2 * _check_fields(fields, len(pos)).shape[1]
    out = torch.empty(num_edges, dim + 1 + width, dtype=dtype, device=pos.device)  # [E, d + 1 + 2F]
    for s in range(0, num_edges, chunk):
        e = slice(s, min(num_edges, s + chunk))
        rel = (pos[ei[0, e]] - pos[ei[1, e]]) / radius  # [e, d] in pos's precision
        out[e, :dim] = rel
        out[e, dim] = rel.norm(dim=1)
        if fields is not None:
            out[e, dim + 1:] = node_pair_fields(fields, ei[:, e])  # [e, 2F]
    return out


def node_pair_fields(fields: torch.Tensor, edge_index: np.ndarray | torch.Tensor) -> torch.Tensor:
    r"""The node fields at both ends of every edge (j -> i): :math:`[f_i, f_j]`, target first, as in the GKN edge
    features :math:`[p_j - p_i, |p_j - p_i|, a_i, a_j]`.

    Shapes: fields [N, F], edge_index [2, E] (row 0 source j, row 1 target i) -> [E, 2F], dtype of ``fields``.
    """
    ei = torch.as_tensor(edge_index, device=fields.device)
    return torch.cat([fields[ei[1]], fields[ei[0]]], dim=1)


def _check_fields(fields: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """``fields`` once known to be [num_nodes, F]; a GraphError saying what was found otherwise."""
    if fields.ndim != 2 or fields.shape[0] != num_nodes:
        raise GraphError(f"edge attribute node fields have shape {tuple(fields.shape)}, expected [{num_nodes}, F] "
                         "(one row per node of the graph)")
    return fields


def build_graph(pos: np.ndarray, radius: float, max_neighbors: int | None = None,
                dtype: torch.dtype = torch.float32, fields: torch.Tensor | None = None, **kwargs) -> Graph:
    """Radius graph plus edge attributes (:func:`edge_attributes`, with the node ``fields [N, F]`` when given) for
    node positions ``pos [N, d]``."""
    ei = radius_graph(pos, radius, max_neighbors, **kwargs)
    attr = edge_attributes(torch.as_tensor(pos, dtype=torch.float64), ei, radius, dtype=dtype, fields=fields)
    return Graph(torch.from_numpy(ei), attr, len(pos))
