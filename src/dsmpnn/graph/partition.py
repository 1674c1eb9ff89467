r"""Partitioners: assign every node to one of P ranks (subdomains).

``owner = partition(pos, P, method)`` gives ``owner[N] in [0, P)``. Every method balances the owned counts:

- ``slab``: sort along the longest bounding-box axis and cut at the quantiles (counts differ by at most one).
  Cheapest to compute, largest halos (each interface is a full cross-section).
- ``rcb``: recursive coordinate bisection; each step cuts a box along its longest axis into two pieces with node
  counts proportional to the number of ranks on each side, so any P works (not only powers of two) and the
  counts again differ by at most one.
- ``metis``: multilevel k-way partition of the symmetrised graph (pymetis); minimises the edge cut, counts within
  1 % (``METIS_UFACTOR``; on graphs of a few dozen nodes up to three nodes over). Needs ``edge_index``.

Subdomains may consist of disconnected pieces (holes in the domain, METIS); only empty subdomains are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dsmpnn.errors import GraphError

__all__ = ["PARTITION_METHODS", "DEFAULT_PARTITION_METHOD", "METIS_UFACTOR", "partition", "check_owner",
           "check_edge_index", "PartitionReport", "partition_report"]

PARTITION_METHODS = ("slab", "rcb", "metis")
METIS_UFACTOR = 10
"""METIS load-imbalance tolerance in tenths of a percent: the largest part has at most 1.01 N / P nodes."""
DEFAULT_PARTITION_METHOD = "metis"
"""Fewest halo rows per exchange with ``halo_hops=1`` (16 % fewer than rcb over uniform 2-D/3-D and graded meshes,
35-42 % fewer on the graded one; benchmarks/bench_scaling.py, benchmarks/RESULTS.md "DS-MPNN scaling"). With
``halo_hops=2`` on uniform clouds rcb sends 7-26 % fewer rows. Needs the graph; rcb needs only positions."""


def unique_sorted(values: np.ndarray) -> np.ndarray:
    """``np.unique`` of an integer array by sorting (numpy 2's hash-based unique is far slower on int64 keys)."""
    values = np.sort(values)
    return values[np.r_[True, values[1:] != values[:-1]]] if values.size else values


def _balanced_sizes(n: int, parts: int) -> np.ndarray:
    """Sizes of ``parts`` nearly equal chunks of n items (the first n % parts chunks get one more)."""
    return np.full(parts, n // parts, dtype=np.int64) + (np.arange(parts) < n % parts)


def _sort_along_longest_axis(pos: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``idx`` ordered by the coordinate along the longest bounding-box axis of ``pos[idx]`` (ties by node id)."""
    p = pos[idx]
    axis = int(np.argmax(p.max(axis=0) - p.min(axis=0)))
    return idx[np.lexsort((idx, p[:, axis]))]


def _slab(pos: np.ndarray, nparts: int) -> np.ndarray:
    order = _sort_along_longest_axis(pos, np.arange(len(pos)))
    owner = np.empty(len(pos), dtype=np.int64)
    owner[order] = np.repeat(np.arange(nparts), _balanced_sizes(len(pos), nparts))
    return owner


def _rcb(pos: np.ndarray, nparts: int) -> np.ndarray:
    owner = np.empty(len(pos), dtype=np.int64)
    sizes = _balanced_sizes(len(pos), nparts)  # target count of every rank
    stack = [(np.arange(len(pos)), 0, nparts)]  # (nodes, first rank, number of ranks)
    while stack:  # one iteration per box: O(P) iterations, each vectorised over its nodes
        idx, first, count = stack.pop()
        if count == 1:
            owner[idx] = first
            continue
        left = count // 2
        n_left = int(sizes[first:first + left].sum())
        idx = _sort_along_longest_axis(pos, idx)
        stack.append((idx[:n_left], first, left))
        stack.append((idx[n_left:], first + left, count - left))
    return owner


def _symmetric_csr(edge_index: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR adjacency of the undirected graph of ``edge_index`` without self loops or duplicate entries."""
    src, dst = np.asarray(edge_index, dtype=np.int64)
    a = np.concatenate([src, dst])
    b = np.concatenate([dst, src])
    keep = a != b
    key = unique_sorted(a[keep] * n + b[keep])  # sorted by (row, column), duplicates removed
    rows, cols = key // n, key % n
    starts = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=starts[1:])
    return starts, cols


def check_edge_index(edge_index, n: int) -> np.ndarray:
    """Validate ``edge_index [2, E]`` (numpy or torch) on n nodes; returns it as an int64 numpy array."""
    ei = np.asarray(edge_index.cpu() if hasattr(edge_index, "cpu") else edge_index)
    if ei.ndim != 2 or ei.shape[0] != 2 or (ei.size and not np.issubdtype(ei.dtype, np.integer)):
        raise GraphError(f"edge_index has shape {ei.shape} dtype {ei.dtype}, expected integer [2, E]")
    ei = ei.astype(np.int64, copy=False)
    if ei.size and (ei.min() < 0 or ei.max() >= n):
        raise GraphError(f"edge_index holds node ids in [{ei.min()}, {ei.max()}], outside [0, {n})")
    return ei


def _metis(n: int, nparts: int, edge_index: np.ndarray | None, seed: int) -> np.ndarray:
    import pymetis

    if edge_index is None:
        raise GraphError("partition method 'metis' partitions the graph: pass edge_index [2, E]")
    starts, cols = _symmetric_csr(check_edge_index(edge_index, n), n)
    options = pymetis.Options(seed=int(seed), ufactor=METIS_UFACTOR)
    adjacency = pymetis.CSRAdjacency(starts, cols) if hasattr(pymetis, "CSRAdjacency") else None
    if adjacency is not None:
        result = pymetis.part_graph(nparts, adjacency=adjacency, options=options)
    else:  # pymetis < 2025.2
        result = pymetis.part_graph(nparts, xadj=starts, adjncy=cols, options=options)
    return np.asarray(result[1], dtype=np.int64)


def check_owner(owner: np.ndarray, nparts: int, what: str = "partition", allow_empty: bool = False) -> np.ndarray:
    """Validate ``owner [N]``: integer ranks in [0, nparts), no empty rank unless ``allow_empty``. Returns int64."""
    owner = np.asarray(owner)
    if owner.ndim != 1 or not np.issubdtype(owner.dtype, np.integer):
        raise GraphError(f"{what}: owner must be a 1-D integer array, got shape {owner.shape} dtype {owner.dtype}")
    owner = owner.astype(np.int64, copy=False)
    if nparts < 1:
        raise GraphError(f"{what}: number of ranks must be at least 1, got {nparts}")
    if owner.size and (owner.min() < 0 or owner.max() >= nparts):
        raise GraphError(f"{what}: owner values must lie in [0, {nparts}), found [{owner.min()}, {owner.max()}]")
    counts = np.bincount(owner, minlength=nparts)
    if not allow_empty and np.any(counts == 0):
        empty = np.flatnonzero(counts == 0)
        raise GraphError(
            f"{what}: {len(empty)} of {nparts} subdomains are empty (ranks {empty[:10].tolist()}"
            f"{'...' if len(empty) > 10 else ''}) for {len(owner)} nodes; use fewer ranks or another method")
    return owner


def partition(pos: np.ndarray, nparts: int, method: str = DEFAULT_PARTITION_METHOD,
              edge_index: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """Owner rank of every node: ``owner [N] int64`` in ``[0, nparts)``, no rank empty.

    Args:
        pos: [N, d] node positions.
        nparts: P, the number of subdomains (1 <= P <= N).
        method: "slab", "rcb" or "metis" (the default; see the module docstring).
        edge_index: [2, E] graph edges, needed by "metis" (directions are symmetrised).
        seed: METIS' random seed (slab and rcb are deterministic).
    """
    pos = np.asarray(pos, dtype=np.float64)
    if pos.ndim != 2:
        raise GraphError(f"pos has shape {pos.shape}, expected [N, d]")
    n = len(pos)
    if not isinstance(nparts, (int, np.integer)) or nparts < 1:
        raise GraphError(f"number of subdomains must be an integer >= 1, got {nparts!r}")
    if nparts > n:
        raise GraphError(f"cannot split {n} nodes into {nparts} subdomains: every subdomain needs a node")
    if method not in PARTITION_METHODS:
        raise GraphError(f"unknown partition method {method!r}, expected one of {list(PARTITION_METHODS)}")
    if nparts == 1:
        return np.zeros(n, dtype=np.int64)
    if method == "slab":
        owner = _slab(pos, nparts)
    elif method == "rcb":
        owner = _rcb(pos, nparts)
    else:
        owner = _metis(n, nparts, edge_index, seed)
    return check_owner(owner, int(nparts), f"partition method {method!r}")


@dataclass(frozen=True)
class PartitionReport:
    """Per-rank sizes of a partition and its halos.

    Shapes: owned, halo, cut_edges, local_edges, send_rows: [P] int64.
    ``cut_edges[p]``: edges whose target p owns and whose source another rank owns.
    ``send_rows[p]``: rows rank p sends per exchange (each halo row is received once, so the totals agree).
    """

    method: str
    halo_hops: int
    owned: np.ndarray
    halo: np.ndarray
    cut_edges: np.ndarray
    local_edges: np.ndarray
    send_rows: np.ndarray

    @property
    def nparts(self) -> int:
        return len(self.owned)

    @property
    def imbalance(self) -> float:
        """max / mean owned nodes (1.0 is perfect balance)."""
        return float(self.owned.max() / self.owned.mean())

    @property
    def halo_fraction(self) -> float:
        """Halo rows over owned rows, summed over ranks (extra memory and redundant work)."""
        return float(self.halo.sum() / self.owned.sum())

    @property
    def edge_cut(self) -> int:
        return int(self.cut_edges.sum())

    def as_dict(self) -> dict:
        return {"method": self.method, "nparts": self.nparts, "halo_hops": self.halo_hops,
                "imbalance": self.imbalance, "halo_fraction": self.halo_fraction, "edge_cut": self.edge_cut,
                "owned": self.owned.tolist(), "halo": self.halo.tolist(), "cut_edges": self.cut_edges.tolist(),
                "local_edges": self.local_edges.tolist(), "send_rows": self.send_rows.tolist()}

    def format(self) -> str:
        """A table with one line per rank and a summary line."""
        lines = [f"{'rank':>5} {'owned':>9} {'halo':>9} {'cut edges':>10} {'local edges':>12} {'sends':>9}"]
        for p in range(self.nparts):
            lines.append(f"{p:>5} {self.owned[p]:>9} {self.halo[p]:>9} {self.cut_edges[p]:>10} "
                         f"{self.local_edges[p]:>12} {self.send_rows[p]:>9}")
        lines.append(f"{self.method}, P={self.nparts}, halo_hops={self.halo_hops}: imbalance "
                     f"{self.imbalance:.3f} (max/mean owned), halo fraction {self.halo_fraction:.3f}, "
                     f"edge cut {self.edge_cut}")
        return "\n".join(lines)


def partition_report(owner: np.ndarray, edge_index: np.ndarray, nparts: int | None = None, halo_hops: int = 1,
                     method: str = "") -> PartitionReport:
    """Owned/halo/cut sizes per rank for ``owner [N]`` on the graph ``edge_index [2, E]``."""
    from dsmpnn.graph.halo import build_halo_plans  # halo builds on partition, not the other way round

    owner = np.asarray(owner)
    nparts = int(owner.max()) + 1 if nparts is None else nparts
    plans = build_halo_plans(owner, edge_index, nparts=nparts, halo_hops=halo_hops)
    src, dst = np.asarray(edge_index, dtype=np.int64)
    own = np.asarray(owner, dtype=np.int64)
    cut = own[src] != own[dst]
    return PartitionReport(
        method=method, halo_hops=halo_hops,
        owned=np.array([p.num_owned for p in plans], dtype=np.int64),
        halo=np.array([p.num_halo for p in plans], dtype=np.int64),
        cut_edges=np.bincount(own[dst][cut], minlength=nparts).astype(np.int64),
        local_edges=np.array([p.num_edges for p in plans], dtype=np.int64),
        send_rows=np.array([len(p.send_rows) for p in plans], dtype=np.int64))
