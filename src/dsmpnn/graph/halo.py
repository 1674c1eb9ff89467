r"""Halo (overlap) plans: the index maps a rank needs to run its part of the MPNN.

For rank p with owned nodes :math:`O_p` and ``halo_hops = k``, ring 1 is the set of nodes outside :math:`O_p`
that are sources of edges into :math:`O_p`, ring h+1 the new sources of edges into ring h. The halo
:math:`H_p` is rings 1..k. The local graph holds every edge whose target lies in :math:`O_p` or in an inner ring
(1..k-1), so after an exchange (halo rows overwritten with their owners' values) k message-passing layers give
exact values on :math:`O_p`: layer j is exact on rings < k - j (the inner halo is computed redundantly). The
runtime therefore exchanges before layers 0, k, 2k, ...

Local node order: owned nodes (ascending global id), then halo nodes sorted by (owner, global id), so the rows
received from each peer are one contiguous block. Local edges keep the global edge order (ascending global edge
id), so every owned node sums its messages in the same order as one process does.

The geometric overlap of the DS-MPNN paper is :func:`build_overlap_plans`: the halo is every node within
Euclidean distance l of an owned node, the local graph every edge into an owned node whose source is present,
and the exchange happens before every layer. It equals one process when every edge into an owned node is
present (l >= r for a radius-r graph); otherwise it warns that the result differs.

Every builder computes all P plans at once with sorted integer keys ``rank * N + node`` (numpy, no Python loop
over nodes or edges; loops run over ranks and hops only).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from scipy.spatial import cKDTree

from dsmpnn.errors import GraphError
from dsmpnn.graph.partition import check_edge_index, check_owner, unique_sorted
from dsmpnn.graph.radius import DEFAULT_MAX_EDGES, Graph, build_graph, edge_attributes, index_dtype, radius_graph

__all__ = ["HaloPlan", "batch_plans", "build_halo_plans", "build_halo_plan", "build_overlap_plans", "check_plans",
           "SampledDecomposition", "build_sampled_plans", "LocalDecomposition", "build_local_plan", "halo_reach",
           "within_reach"]

_INDEX_FIELDS = ("owned", "halo", "halo_owner", "halo_ring", "edge_index", "edge_ids", "send_counts", "send_rows")


@dataclass(frozen=True, eq=False)
class HaloPlan:
    """Everything rank ``rank`` of ``nparts`` needs: its nodes, its local graph and its exchange lists.

    Shapes (int64, read-only; ``edge_index`` may be int32, as the graph it comes from: :func:`index_dtype`):
        owned:       [n_own]  global ids of owned nodes, ascending (local rows 0..n_own-1)
        halo:        [n_halo] global ids of halo nodes, sorted by (owner, id) (local rows n_own..n_local-1)
        halo_owner:  [n_halo] owner rank of each halo node
        halo_ring:   [n_halo] hop distance 1..halo_hops from the owned nodes (1 for geometric overlap)
        edge_index:  [2, E_loc] local edges (row 0 source, row 1 target) in local row numbers
        edge_ids:    [E_loc] global id of each local edge, ascending (``edge_attr[edge_ids]``)
        send_counts: [P] rows sent to each peer per exchange (0 for ``rank``)
        send_rows:   [S] local rows sent, grouped by peer in rank order; within a peer by global id
    ``recv_counts [P]`` and ``recv_rows [R]`` follow from the halo order (contiguous blocks per peer).
    """

    rank: int
    nparts: int
    num_global_nodes: int
    halo_hops: int
    owned: np.ndarray
    halo: np.ndarray
    halo_owner: np.ndarray
    halo_ring: np.ndarray
    edge_index: np.ndarray
    edge_ids: np.ndarray
    send_counts: np.ndarray
    send_rows: np.ndarray
    overlap: float | None = None

    def __post_init__(self) -> None:
        for name in _INDEX_FIELDS:
            a = np.asarray(getattr(self, name))
            if not np.issubdtype(a.dtype, np.integer):
                raise GraphError(f"HaloPlan.{name}: expected an integer array, got dtype {a.dtype}")
            keep = name == "edge_index" and a.dtype == np.int32  # a graph's int32 ids (index_dtype): no copy
            view = (a if keep else a.astype(np.int64, copy=False)).view()
            view.flags.writeable = False
            object.__setattr__(self, name, view)
        self._validate()

    def _fail(self, msg: str) -> None:
        raise GraphError(f"halo plan of rank {self.rank}/{self.nparts}: {msg}")

    def _validate(self) -> None:
        P, N = self.nparts, self.num_global_nodes
        if not 0 <= self.rank < P:
            self._fail(f"rank must lie in [0, {P})")
        if self.halo_hops < 1:
            self._fail(f"halo_hops must be >= 1, got {self.halo_hops}")
        own, halo = self.owned, self.halo
        if own.ndim != 1 or halo.ndim != 1:
            self._fail(f"owned and halo must be 1-D, got shapes {own.shape} and {halo.shape}")
        if np.any(np.diff(own) <= 0) or (own.size and (own[0] < 0 or own[-1] >= N)):
            self._fail(f"owned ids must be strictly ascending in [0, {N})")
        if self.halo_owner.shape != halo.shape or self.halo_ring.shape != halo.shape:
            self._fail(f"halo_owner {self.halo_owner.shape} and halo_ring {self.halo_ring.shape} must match "
                       f"halo {halo.shape}")
        if halo.size:
            if halo.min() < 0 or halo.max() >= N:
                self._fail(f"halo ids must lie in [0, {N})")
            key = self.halo_owner * N + halo
            if np.any(np.diff(key) <= 0):
                self._fail("halo nodes must be distinct and sorted by (owner, global id)")
            if np.any(self.halo_owner == self.rank) or self.halo_owner.min() < 0 or self.halo_owner.max() >= P:
                self._fail(f"halo owners must be other ranks in [0, {P})")
            if _isin_sorted(halo, own).any():
                self._fail("a node is both owned and halo")
            if self.halo_ring.min() < 1 or self.halo_ring.max() > self.halo_hops:
                self._fail(f"halo rings must lie in [1, {self.halo_hops}]")
        ei = self.edge_index
        if ei.ndim != 2 or ei.shape[0] != 2 or self.edge_ids.shape != (ei.shape[1],):
            self._fail(f"edge_index {ei.shape} must be [2, E] and edge_ids {self.edge_ids.shape} [E]")
        if ei.size and (ei.min() < 0 or ei.max() >= self.num_local):
            self._fail(f"local edges must index rows in [0, {self.num_local})")
        if np.any(np.diff(self.edge_ids) <= 0):
            self._fail("edge_ids must be strictly ascending")
        if self.send_counts.shape != (P,) or self.send_counts.min() < 0 or self.send_counts[self.rank] != 0:
            self._fail(f"send_counts must be [P={P}] non-negative with 0 for the rank itself")
        if self.send_counts.sum() != len(self.send_rows):
            self._fail(f"send_counts sum to {self.send_counts.sum()}, but there are {len(self.send_rows)} send_rows")
        if self.send_rows.size and (self.send_rows.min() < 0 or self.send_rows.max() >= self.num_owned):
            self._fail(f"send_rows must be owned rows in [0, {self.num_owned})")

    # sizes -----------------------------------------------------------------------------------------------------
    @property
    def num_owned(self) -> int:
        return len(self.owned)

    @property
    def num_halo(self) -> int:
        return len(self.halo)

    @property
    def num_local(self) -> int:
        return len(self.owned) + len(self.halo)

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])

    @property
    def halo_fraction(self) -> float:
        """Halo rows per owned row."""
        return self.num_halo / max(self.num_owned, 1)

    # exchange lists ----------------------------------------------------------------------------------------------
    @cached_property
    def recv_counts(self) -> np.ndarray:
        """[P] rows received from each peer per exchange."""
        return np.bincount(self.halo_owner, minlength=self.nparts).astype(np.int64)

    @cached_property
    def recv_rows(self) -> np.ndarray:
        """[R] local rows received, grouped by peer in rank order (the halo rows, in order)."""
        return np.arange(self.num_owned, self.num_local, dtype=np.int64)

    @property
    def peers(self) -> list[int]:
        """Ranks this rank sends to or receives from."""
        return np.flatnonzero((self.send_counts > 0) | (self.recv_counts > 0)).tolist()

    def send_idx(self, peer: int) -> np.ndarray:
        """Local rows sent to ``peer``, in the order the peer receives them."""
        start = int(self.send_counts[:peer].sum())
        return self.send_rows[start:start + int(self.send_counts[peer])]

    def recv_idx(self, peer: int) -> np.ndarray:
        """Local halo rows overwritten with the values ``peer`` sends."""
        start = int(self.recv_counts[:peer].sum())
        return self.recv_rows[start:start + int(self.recv_counts[peer])]

    # local data --------------------------------------------------------------------------------------------------
    @cached_property
    def local_nodes(self) -> np.ndarray:
        """[n_local] global id of every local row (owned, then halo)."""
        out = np.concatenate([self.owned, self.halo])
        out.flags.writeable = False
        return out

    def tensor(self, name: str, device: torch.device | str | None = None) -> torch.Tensor:
        """An index array of the plan (``"owned"``, ``"edge_index"``, ``"send_rows"``, ``"local_nodes"``...) as an
        int64 tensor on ``device`` (a copy: the plan's arrays are read-only)."""
        return torch.from_numpy(np.array(getattr(self, name), dtype=np.int64)).to(device)

    def to_local(self, values):
        """Rows of a global per-node array (numpy or torch, [N, ...]) in local order: ``values[local_nodes]``."""
        if isinstance(values, torch.Tensor):
            return values[self.tensor("local_nodes", values.device)]
        return np.asarray(values)[self.local_nodes]

    def local_graph(self, graph: Graph) -> Graph:
        """This rank's part of a global :class:`Graph`: local edge_index and the same edge attributes."""
        if graph.num_nodes != self.num_global_nodes:
            raise GraphError(f"graph has {graph.num_nodes} nodes, the plan was built for {self.num_global_nodes}")
        attr = graph.edge_attr[self.tensor("edge_ids", graph.edge_attr.device)]
        return Graph(self.tensor("edge_index", graph.edge_index.device), attr, self.num_local)

    def __repr__(self) -> str:
        return (f"HaloPlan(rank={self.rank}/{self.nparts}, owned={self.num_owned}, halo={self.num_halo}, "
                f"edges={self.num_edges}, halo_hops={self.halo_hops}, peers={self.peers}"
                + (f", overlap={self.overlap:g})" if self.overlap is not None else ")"))


# ---------------------------------------------------------------------------------------------------------------
# builders
# ---------------------------------------------------------------------------------------------------------------

def _owner_and_nparts(owner, nparts: int | None, allow_empty: bool) -> tuple[np.ndarray, int]:
    owner = np.asarray(owner)
    if nparts is None:
        nparts = int(owner.max()) + 1 if owner.size else 1
    return check_owner(owner, nparts, "halo plan", allow_empty), nparts


class _InEdges:
    """Edges grouped by target (CSR), to expand sets of (rank, node) keys into their incoming edges.
    ``dst_sorted``: the edges are already sorted by target (a radius graph), so edge ids are CSR positions."""

    def __init__(self, dst: np.ndarray, n: int, dst_sorted: bool = False) -> None:
        self.order = None if dst_sorted else np.argsort(dst, kind="stable")  # [E] edge ids by target, then id
        self.ptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(dst, minlength=n), out=self.ptr[1:])

    def expand(self, ranks: np.ndarray, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For every (rank, node) pair, one (rank, edge) pair per edge into node."""
        start, count = self.ptr[nodes], self.ptr[nodes + 1] - self.ptr[nodes]
        total = int(count.sum())
        first = np.repeat(np.cumsum(count) - count, count)  # [total] offset of each pair's block
        edges = np.repeat(start, count) + np.arange(total) - first
        return np.repeat(ranks, count), edges if self.order is None else self.order[edges]


def _isin_sorted(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    if sorted_set.size == 0:
        return np.zeros(values.shape, dtype=bool)
    i = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return sorted_set[i] == values


def _segments(sorted_rank: np.ndarray, nparts: int) -> np.ndarray:
    """Boundaries [P + 1] of each rank's block in an array sorted by rank."""
    return np.searchsorted(sorted_rank, np.arange(nparts + 1))


def _assemble(owner: np.ndarray, ei: np.ndarray, nparts: int, halo_rank: np.ndarray, halo_node: np.ndarray,
              halo_ring: np.ndarray, edge_rank: np.ndarray, edge_id: np.ndarray, halo_hops: int,
              overlap: float | None) -> list[HaloPlan]:
    """Plans from the (rank, halo node, ring) triples and (rank, local edge) pairs of all ranks."""
    n = len(owner)
    src, dst = ei
    # halo of each rank sorted by (rank, owner, id): the receive order
    h_owner = owner[halo_node]
    o = np.lexsort((halo_node, h_owner, halo_rank))
    halo_rank, halo_node, halo_ring, h_owner = halo_rank[o], halo_node[o], halo_ring[o], h_owner[o]
    hseg = _segments(halo_rank, nparts)
    # sends: the same triples sorted by (owner, receiving rank, id)
    s = np.lexsort((halo_node, halo_rank, h_owner))
    send_to, send_node, send_from = halo_rank[s], halo_node[s], h_owner[s]
    sseg = _segments(send_from, nparts)
    # local edges of each rank, ascending global edge id
    num_edges = ei.shape[1]
    key = np.sort(edge_rank * num_edges + edge_id)
    edge_rank, edge_id = key // num_edges, key % num_edges
    eseg = _segments(edge_rank, nparts)
    owned_order = np.argsort(owner, kind="stable")  # node ids grouped by owner, ascending within
    oseg = _segments(owner[owned_order], nparts)

    local_row = np.empty(n, dtype=np.int64)  # global id -> local row of the rank being assembled
    plans = []
    for p in range(nparts):
        owned = owned_order[oseg[p]:oseg[p + 1]]
        halo = halo_node[hseg[p]:hseg[p + 1]]
        local_row[owned] = np.arange(len(owned))
        local_row[halo] = np.arange(len(owned), len(owned) + len(halo))
        e = edge_id[eseg[p]:eseg[p + 1]]
        local_ei = np.stack([local_row[src[e]], local_row[dst[e]]])  # every endpoint is owned or halo here
        sn = send_node[sseg[p]:sseg[p + 1]]
        plans.append(HaloPlan(
            rank=p, nparts=nparts, num_global_nodes=n, halo_hops=halo_hops, owned=owned, halo=halo,
            halo_owner=h_owner[hseg[p]:hseg[p + 1]], halo_ring=halo_ring[hseg[p]:hseg[p + 1]],
            edge_index=local_ei, edge_ids=e,
            send_counts=np.bincount(send_to[sseg[p]:sseg[p + 1]], minlength=nparts),
            send_rows=local_row[sn], overlap=overlap))
    return plans


def _key_rings(owner: np.ndarray, src: np.ndarray, in_edges: _InEdges, start: np.ndarray,
               halo_hops: int) -> list[np.ndarray]:
    """Rings 1..halo_hops of every rank that owns one of the nodes ``start``, searched from those nodes alone, as
    sorted keys ``rank * N + node`` (one array per ring): ring h+1 holds the sources of edges into ring h (ring 0:
    the rank's nodes in ``start``) that the rank neither owns nor met in an earlier ring."""
    n = len(owner)
    visited = np.sort(owner[start] * n + start)  # keys rank * N + node already owned or in a ring
    frontier_rank, frontier_node = owner[start], start
    rings: list[np.ndarray] = []
    for _ in range(halo_hops):
        r, e = in_edges.expand(frontier_rank, frontier_node)
        cut = owner[src[e]] != r  # sources the rank owns are never halo; drop them before sorting
        cand = unique_sorted(r[cut] * n + src[e[cut]])
        new = cand[~_isin_sorted(cand, visited)]
        rings.append(new)
        visited = np.sort(np.concatenate([visited, new]))  # disjoint sorted sets
        frontier_rank, frontier_node = new // n, new % n
    return rings


def build_halo_plans(owner: np.ndarray, edge_index, halo_hops: int = 1, nparts: int | None = None,
                     allow_empty: bool = False) -> list[HaloPlan]:
    """The plans of all ranks for ``owner [N]`` on the graph ``edge_index [2, E]`` with ``halo_hops = k`` rings.

    ``nparts`` defaults to ``owner.max() + 1``. Empty subdomains are refused unless ``allow_empty`` (sampled
    graphs, where a rank's region may hold no sampled node).
    """
    if not isinstance(halo_hops, (int, np.integer)) or halo_hops < 1:
        raise GraphError(f"halo_hops must be an integer >= 1, got {halo_hops!r}")
    owner, nparts = _owner_and_nparts(owner, nparts, allow_empty)
    n = len(owner)
    ei = check_edge_index(edge_index, n)
    src, dst = ei
    in_edges = _InEdges(dst, n)

    rings = _key_rings(owner, src, in_edges, np.arange(n), halo_hops)

    # local edges: every edge into an owned node, plus every edge into an inner ring (1..k-1)
    edge_rank, edge_id = [owner[dst]], [np.arange(ei.shape[1])]
    for ring in rings[:-1]:
        r, e = in_edges.expand(ring // n, ring % n)
        edge_rank.append(r)
        edge_id.append(e)
    halo = np.concatenate(rings)
    ring_no = np.repeat(np.arange(1, halo_hops + 1), [len(r) for r in rings])
    return _assemble(owner, ei, nparts, halo // n, halo % n, ring_no, np.concatenate(edge_rank),
                     np.concatenate(edge_id), halo_hops, None)


def _rank_halo_plan(owner: np.ndarray, ei: np.ndarray, rank: int, halo_hops: int, nparts: int,
                    chunk: int = 1 << 20) -> tuple[HaloPlan, np.ndarray]:
    """``build_halo_plans(owner, ei, halo_hops, nparts, allow_empty=True)[rank]`` computed for that rank alone, and
    its local ``edge_index`` as a writable array (the plan holds a read-only view of it), for
    ``ei [2, E]`` sorted by target (a radius graph) and a rank that owns nodes: besides the plan, a few bytes per
    edge (boolean masks), not the sorted int64 keys of every edge of every rank.

    The rank's rings come from a breadth-first search over in-edges from its owned nodes (masks over the nodes);
    its local edges are those into its owned nodes and inner rings, in edge order. Its send lists are the owned
    nodes in the other ranks' rings: those searches start from the nodes of other ranks, which in a graph of the
    nodes near the subdomain (:func:`build_local_plan`) are a thin band, and run on (rank, node) keys as in
    :func:`build_halo_plans`.
    """
    n = len(owner)
    src, dst = ei
    in_edges = _InEdges(dst, n, dst_sorted=True)
    mine = owner == rank  # [n]
    seen, frontier, inner = mine.copy(), mine, mine.copy()  # inner: targets of the local edges
    rings = []
    for hop in range(halo_hops):
        hit = frontier[dst]  # [E] edges into the frontier ...
        hit &= ~seen[src]  # ... from a node not met yet
        new = unique_sorted(src[hit])
        del hit
        rings.append(new)
        seen[new] = True
        frontier = np.zeros(n, dtype=bool)
        frontier[new] = True
        if hop < halo_hops - 1:
            inner[new] = True
    ring_no = np.repeat(np.arange(1, halo_hops + 1), [len(r) for r in rings])
    halo = np.concatenate(rings)
    order = np.lexsort((halo, owner[halo]))  # receive order: (owner, id)
    halo, ring_no = halo[order], ring_no[order]
    owned = np.flatnonzero(mine)
    local_row = np.full(n, -1, dtype=np.int64)
    local_row[owned] = np.arange(len(owned))
    local_row[halo] = np.arange(len(owned), len(owned) + len(halo))
    edge_ids = np.flatnonzero(inner[dst])  # [E_loc] ascending
    local_ei = np.empty((2, len(edge_ids)), dtype=index_dtype(len(owned) + len(halo)))
    for s in range(0, len(edge_ids), chunk):  # no [E_loc] int64 temporaries
        e = edge_ids[s:s + chunk]
        local_ei[0, s:s + len(e)] = local_row[src[e]]
        local_ei[1, s:s + len(e)] = local_row[dst[e]]
    # the other ranks' rings (only the part near this rank's nodes is ever reached); keys q * n + node
    theirs = np.concatenate(_key_rings(owner, src, in_edges, np.flatnonzero(~mine), halo_hops))
    send = np.sort(theirs[mine[theirs % n]])  # this rank's nodes in them, by (receiving rank, id)
    plan = HaloPlan(rank=rank, nparts=nparts, num_global_nodes=n, halo_hops=halo_hops, owned=owned, halo=halo,
                    halo_owner=owner[halo], halo_ring=ring_no, edge_index=local_ei, edge_ids=edge_ids,
                    send_counts=np.bincount(send // n, minlength=nparts), send_rows=local_row[send % n])
    return plan, local_ei


def build_halo_plan(owner: np.ndarray, edge_index, rank: int, halo_hops: int = 1,
                    nparts: int | None = None) -> HaloPlan:
    """The plan of one rank (its send lists depend on the other ranks' halos, so all are computed)."""
    return build_halo_plans(owner, edge_index, halo_hops, nparts)[rank]


def build_overlap_plans(owner: np.ndarray, edge_index, pos: np.ndarray, overlap: float,
                        radius: float | None = None, nparts: int | None = None, allow_empty: bool = False,
                        warn: bool = True) -> list[HaloPlan]:
    """Plans with the paper's geometric overlap: halo = nodes within distance ``overlap`` of an owned node.

    The local graph holds every edge into an owned node whose source is present; the exchange runs before every
    layer (``halo_hops = 1``). When some edge into an owned node is missing (``overlap < radius`` for a radius
    graph) a warning says the result differs from one process (unless ``warn=False``: the caller already said so).
    ``allow_empty``: accept ranks that own no node (sampled graphs).
    """
    if not (overlap >= 0 and np.isfinite(overlap)):
        raise GraphError(f"overlap must be a finite distance >= 0, got {overlap}")
    owner, nparts = _owner_and_nparts(owner, nparts, allow_empty)
    n = len(owner)
    ei = check_edge_index(edge_index, n)
    pos = np.asarray(pos, dtype=np.float64)
    if pos.shape[0] != n or pos.ndim != 2:
        raise GraphError(f"pos has shape {pos.shape}, expected [{n}, d]")
    src, dst = ei
    pairs = cKDTree(pos).query_pairs(overlap, output_type="ndarray")  # [M, 2], i < j
    a = np.concatenate([pairs[:, 0], pairs[:, 1]])
    b = np.concatenate([pairs[:, 1], pairs[:, 0]])
    cross = owner[a] != owner[b]
    halo = unique_sorted(owner[a[cross]] * n + b[cross])  # node b is within the overlap of a's subdomain
    present = np.sort(np.concatenate([owner * n + np.arange(n), halo]))  # disjoint sets
    keep = _isin_sorted(owner[dst] * n + src, present)  # edges into owned nodes whose source is present
    missing = int((~keep).sum())
    if warn and (missing or (radius is not None and overlap < radius)):
        warnings.warn(
            f"geometric overlap {overlap:g} < radius {radius if radius is not None else 'of the graph'}: "
            f"{missing} of {ei.shape[1]} edges into owned nodes have their source outside the overlap and are "
            "dropped, so the result differs from one process (use overlap >= radius, or halo_hops, for exactness)",
            stacklevel=2)
    edge_id = np.flatnonzero(keep)
    return _assemble(owner, ei, nparts, halo // n, halo % n, np.ones(len(halo), dtype=np.int64),
                     owner[dst[edge_id]], edge_id, 1, float(overlap))


def batch_plans(plans: Sequence[HaloPlan]) -> tuple[HaloPlan, list[np.ndarray]]:
    """One rank's plans of several graphs as the plan of their disjoint union, and where each graph's local rows
    went (``rows[g] [n_local_g]``: batch row of every local row of graph g).

    Graph g's node ids are offset by the node counts of graphs 0..g-1 (every rank offsets alike, so the union is
    the same graph on all ranks, the one :func:`dsmpnn.train.features.make_batch` gives one process). Batch rows:
    the owned rows of every graph (graph order), then the halo rows sorted by (owner, offset id), i.e. by peer,
    then graph: one contiguous block per peer, so one exchange per layer serves every graph. Local edges stay in
    graph order, each graph's in its own order, so every node sums its messages in the same order as before.
    """
    first = plans[0]
    if len(plans) == 1:
        return first, [np.arange(first.num_local)]
    if any(p.rank != first.rank or p.nparts != first.nparts or p.halo_hops != first.halo_hops or
           p.overlap != first.overlap for p in plans):
        raise GraphError("batch_plans: the plans differ in rank, nparts, halo_hops or overlap")
    node_off = np.cumsum([0] + [p.num_global_nodes for p in plans])
    edge_off = np.cumsum([0] + [int(p.edge_ids.max()) + 1 if p.edge_ids.size else 0 for p in plans])
    own_off = np.cumsum([0] + [p.num_owned for p in plans])
    halo_off = np.cumsum([0] + [p.num_halo for p in plans])
    halo = np.concatenate([p.halo + o for p, o in zip(plans, node_off)])
    halo_owner = np.concatenate([p.halo_owner for p in plans])
    order = np.lexsort((halo, halo_owner))  # (owner, offset id)
    place = np.empty(len(order), dtype=np.int64)
    place[order] = np.arange(len(order))  # batch halo position of each concatenated halo row
    rows = [np.concatenate([own_off[g] + np.arange(p.num_owned), own_off[-1] + place[halo_off[g]:halo_off[g + 1]]])
            for g, p in enumerate(plans)]
    send_rows, send_counts = [], np.zeros(first.nparts, dtype=np.int64)
    for q in range(first.nparts):  # per peer, graph after graph, each by id: the peer's halo order
        for p, r in zip(plans, rows):
            send_rows.append(r[p.send_idx(q)])
            send_counts[q] += p.send_counts[q]
    batch = HaloPlan(rank=first.rank, nparts=first.nparts, num_global_nodes=int(node_off[-1]),
                     halo_hops=first.halo_hops, owned=np.concatenate([p.owned + o for p, o in zip(plans, node_off)]),
                     halo=halo[order], halo_owner=halo_owner[order],
                     halo_ring=np.concatenate([p.halo_ring for p in plans])[order],
                     edge_index=np.concatenate([r[p.edge_index] for p, r in zip(plans, rows)], axis=1),
                     edge_ids=np.concatenate([p.edge_ids + o for p, o in zip(plans, edge_off)]),
                     send_counts=send_counts, send_rows=np.concatenate(send_rows), overlap=first.overlap)
    return batch, rows


def check_plans(plans: list[HaloPlan]) -> None:
    """Cross-check the plans of all ranks: every rank's sends are exactly what each peer expects to receive."""
    P = len(plans)
    if P == 0 or any(p.nparts != P or p.rank != i for i, p in enumerate(plans)):
        raise GraphError(f"expected the plans of ranks 0..{P - 1} in order")
    owned_total = sum(p.num_owned for p in plans)
    if owned_total != plans[0].num_global_nodes:
        raise GraphError(f"owned nodes sum to {owned_total}, the graph has {plans[0].num_global_nodes}")
    for p in plans:
        for q in p.peers:
            sent = p.owned[p.send_idx(q)]
            expected = plans[q].local_nodes[plans[q].recv_idx(p.rank)]
            if not np.array_equal(sent, expected):
                raise GraphError(f"rank {p.rank} sends {len(sent)} rows to rank {q}, which expects "
                                 f"{len(expected)} different ones")


@dataclass(frozen=True, eq=False)
class SampledDecomposition:
    """A Nyström-sampled graph split over ranks.

    Shapes: sample_ids [m] global mesh ids of the sampled nodes (ascending), owner [m] rank of each sampled
    node (its mesh node's owner); ``graph`` and ``plans`` number nodes 0..m-1 in sample order.
    """

    sample_ids: np.ndarray
    owner: np.ndarray
    graph: Graph
    plans: list[HaloPlan]

    def local_rows(self, rank: int) -> np.ndarray:
        """Global mesh ids of rank's local rows (owned sampled nodes, then sampled halo): ``x[local_rows]``."""
        return self.sample_ids[self.plans[rank].local_nodes]


def _sample_arguments(pos, sample_ids, owner,
                      nparts: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The arguments of the sampled-plan builders as arrays, checked: ``owner [N]`` one rank per mesh node,
    ``sample_ids`` distinct ascending mesh ids; ``nparts`` defaults to ``owner.max() + 1``."""
    pos = np.asarray(pos)
    sample_ids = np.asarray(sample_ids, dtype=np.int64)
    owner = np.asarray(owner)
    if owner.shape != (len(pos),):
        raise GraphError(f"owner has shape {owner.shape}, expected [{len(pos)}] (one rank per mesh node)")
    if sample_ids.ndim != 1 or np.any(np.diff(sample_ids) <= 0) or (
            sample_ids.size and (sample_ids[0] < 0 or sample_ids[-1] >= len(pos))):
        raise GraphError(f"sample_ids must be distinct ascending mesh ids in [0, {len(pos)})")
    return pos, sample_ids, owner, int(owner.max()) + 1 if nparts is None else nparts


def _isolated(targets: np.ndarray, num_nodes: int, owned: np.ndarray) -> int:
    """How many of the nodes ``owned`` (ids or a mask over ``num_nodes``) no edge points to (``targets [E]``)."""
    hit = np.zeros(num_nodes, dtype=bool)
    hit[targets] = True
    return int((~hit[owned]).sum())


def build_sampled_plans(pos: np.ndarray, sample_ids: np.ndarray, owner: np.ndarray, radius: float,
                        halo_hops: int = 1, nparts: int | None = None, max_neighbors: int | None = None,
                        dtype: torch.dtype = torch.float32, warn_isolated: bool = True,
                        overlap: float | None = None, max_edges: int = DEFAULT_MAX_EDGES) -> SampledDecomposition:
    """The sampled radius graph and its per-rank plans, equal on every rank and to the single-process graph.

    Nyström sampling in DS mode draws ``sample_ids`` with one global seed (``sample_nodes(N, m, rng)`` with the
    same rng on every rank), so every rank builds the same graph from the same ids without communication; each
    sampled node keeps the owner of its mesh node (``owner [N]``, the full-mesh partition). A rank whose region
    holds no sampled node gets an empty plan and still takes part in the exchanges.

    Data each rank needs: the positions of the sampled nodes (``pos[sample_ids]``, m x d floats) to build the
    graph and plans, and the fields ``x``/``y`` of its local rows only (``local_rows(rank)``: its owned sampled
    nodes plus sampled halo nodes, all within ``halo_hops * radius`` of its owned ones). This function builds
    the whole sampled graph and all P plans (m log m work, no messages), so the plans can be cross-checked
    (:func:`check_plans`); the training and inference runtime builds each rank's plan alone, equal to
    ``plans[rank]``, with :func:`build_local_plan`, from the sampled nodes near its subdomain.
    ``warn_isolated=False`` silences the warning about sampled nodes without a neighbour (training draws many
    samples; the single-process path does not warn).
    ``max_edges``: the refusal limit of :func:`~dsmpnn.graph.radius_graph`.

    ``overlap``: a geometric overlap l (:func:`build_overlap_plans` on the sampled nodes, ``halo_hops`` ignored)
    instead of the graph halo; exact for l >= radius, and it drops edges without a warning for l < radius (the
    config warns once).
    """
    pos, sample_ids, owner, nparts = _sample_arguments(pos, sample_ids, owner, nparts)
    graph = build_graph(pos[sample_ids], radius, max_neighbors, dtype=dtype, warn_isolated=warn_isolated,
                        max_edges=max_edges)
    owner_s = owner[sample_ids].astype(np.int64)
    if overlap is None:
        plans = build_halo_plans(owner_s, graph.edge_index.numpy(), halo_hops, nparts, allow_empty=True)
    else:
        plans = build_overlap_plans(owner_s, graph.edge_index.numpy(), pos[sample_ids], overlap, radius, nparts,
                                    allow_empty=True, warn=False)
    return SampledDecomposition(sample_ids, owner_s, graph, plans)


@dataclass(frozen=True, eq=False)
class LocalDecomposition:
    """One rank's share of a Nyström-sampled graph, built from the sampled nodes near its subdomain only.

    ``plan`` numbers nodes 0..m-1 in sample order like :class:`SampledDecomposition` (``sample_ids[plan.owned]``
    are mesh ids); ``graph`` is the rank's local graph (``plan.edge_index`` and its edge attributes, rows in the
    plan's local order). ``isolated``: owned sampled nodes without a neighbour within the radius. Unlike a plan
    of the whole graph, ``plan.edge_ids`` number the edges of the graph built on the nodes near the subdomain (the
    whole graph is never built), so they do not index the whole sampled graph's edge attributes: use
    ``graph.edge_attr``, which holds the local edges' attributes in order.
    """

    sample_ids: np.ndarray
    plan: HaloPlan
    graph: Graph
    isolated: int

    def local_rows(self) -> np.ndarray:
        """Global mesh ids of the local rows (owned sampled nodes, then sampled halo)."""
        return self.sample_ids[self.plan.local_nodes]


def build_local_plan(pos: np.ndarray, sample_ids: np.ndarray, owner: np.ndarray, rank: int, radius: float,
                     halo_hops: int = 1, nparts: int | None = None, max_neighbors: int | None = None,
                     dtype: torch.dtype = torch.float32, overlap: float | None = None,
                     max_edges: int = DEFAULT_MAX_EDGES) -> LocalDecomposition:
    """Rank ``rank``'s plan of the sampled radius graph, equal to ``build_sampled_plans(...).plans[rank]`` (and its
    local graph to ``plan.local_graph(graph)``), built from the sampled nodes within ``reach`` of the rank's owned
    ones only: work and memory ~ the subdomain and its halo, not the whole sample.

    Why that suffices, for ``halo_hops = k``: every node the plan mentions is at most k hops, so k r, from an owned
    node: the halo rings, the sources of the local edges (edges into owned nodes and into rings 1..k-1), and the
    other ranks' nodes whose halo rings hold owned nodes (the send lists), reached along paths of at most k edges.
    Among the nodes kept, the edges are those of the whole graph (radius graphs are local), in the same order
    (sorted by target, then source, in sample order): reach = k r. With a geometric ``overlap`` l, reach =
    max(l, r): the halo and the nodes of other ranks the rank sends to lie within l, the sources of edges into
    owned nodes within r. For the graph halo only this rank's plan is computed (:func:`_rank_halo_plan`: masks
    over the near nodes, and the other ranks' rings searched from their nodes in the near set, a thin band), and
    the edge attributes of its local edges only, which share memory with ``plan.edge_index``: what the rank
    holds per edge is its local edge_index and attributes. With ``max_neighbors`` the whole graph is built
    (:func:`build_sampled_plans`): which of several equidistant neighbours the cap keeps is up to the k-d tree,
    and a tree on fewer nodes may keep another one (on regular grids this happens), which would break the
    equality.
    """
    pos, sample_ids, owner, nparts = _sample_arguments(pos, sample_ids, owner, nparts)
    if not isinstance(halo_hops, (int, np.integer)) or halo_hops < 1:
        raise GraphError(f"halo_hops must be an integer >= 1, got {halo_hops!r}")
    m = len(sample_ids)
    if max_neighbors is not None:
        # Which of several equidistant neighbours (a regular grid has many) the k-d tree keeps under the cap
        # depends on the tree, so a tree on fewer nodes could keep another: build the whole graph instead.
        whole = build_sampled_plans(pos, sample_ids, owner, radius, halo_hops, nparts, max_neighbors, dtype,
                                    warn_isolated=False, overlap=overlap, max_edges=max_edges)
        plan = whole.plans[rank]
        return LocalDecomposition(sample_ids, plan, plan.local_graph(whole.graph),
                                  _isolated(whole.graph.edge_index[1].numpy(), m, plan.owned))
    every = m == len(pos)  # every mesh node (full-graph inference): no [m] copies
    pos_s = np.asarray(pos if every else pos[sample_ids], dtype=np.float64)  # [m, d]
    owner_s = owner if every else owner[sample_ids]  # [m], the caller's integer type
    keep = within_reach(pos_s, owner_s == rank, halo_reach(radius, halo_hops, overlap))
    near = np.flatnonzero(keep)  # ascending sample indices: the order of the whole graph is kept
    if near.size == 0:  # no sampled node in this rank's region: it only takes part in the exchanges
        none = np.zeros(0, dtype=np.int64)
        plan = HaloPlan(rank=rank, nparts=nparts, num_global_nodes=m, halo_hops=1 if overlap is not None else
                        halo_hops, owned=none, halo=none, halo_owner=none, halo_ring=none,
                        edge_index=np.zeros((2, 0), dtype=np.int64), edge_ids=none,
                        send_counts=np.zeros(nparts, dtype=np.int64), send_rows=none,
                        overlap=float(overlap) if overlap is not None else None)
        attr = torch.zeros(0, pos_s.shape[1] + 1, dtype=dtype)
        return LocalDecomposition(sample_ids, plan, Graph(torch.zeros(2, 0, dtype=torch.int64), attr, 0), 0)
    owner_near = owner_s[near].astype(np.int64)
    if overlap is not None:
        graph = build_graph(pos_s[near], radius, dtype=dtype, warn_isolated=False, max_edges=max_edges)
        ei = graph.edge_index.numpy()
        local = build_overlap_plans(owner_near, ei, pos_s[near], overlap, radius, nparts, allow_empty=True,
                                    warn=False)[rank]
        local_ei = np.array(local.edge_index)
    else:
        ei = radius_graph(pos_s[near], radius, warn_isolated=False, max_edges=max_edges)  # sorted by target
        local, local_ei = _rank_halo_plan(owner_near, ei, rank, halo_hops, nparts)
    isolated = _isolated(ei[1], len(near), owner_near == rank)  # every edge into an owned node is in `ei`
    del ei
    edge_index = torch.from_numpy(local_ei)  # [2, E_loc]; the plan holds a read-only view of the same memory
    plan = HaloPlan(rank=rank, nparts=nparts, num_global_nodes=m, halo_hops=local.halo_hops,
                    owned=near[local.owned], halo=near[local.halo], halo_owner=local.halo_owner,
                    halo_ring=local.halo_ring, edge_index=edge_index.numpy(), edge_ids=local.edge_ids,
                    send_counts=local.send_counts, send_rows=local.send_rows, overlap=local.overlap)
    if overlap is not None:
        attr = graph.edge_attr[torch.from_numpy(local.edge_ids.copy())]
    else:  # the attributes of the local edges only, from the same float64 positions: equal to the whole graph's
        attr = edge_attributes(torch.from_numpy(pos_s[near[local.local_nodes]]), edge_index, radius, dtype=dtype)
    return LocalDecomposition(sample_ids, plan, Graph(edge_index, attr, plan.num_local), isolated)


def halo_reach(radius: float, halo_hops: int = 1, overlap: float | None = None) -> float:
    """How far from a rank's owned nodes the nodes of its plan lie at most (halo rows, sources of local edges, the
    nodes it sends to): ``halo_hops * radius`` for the graph halo (k hops of edges no longer than r), ``max(l, r)``
    for a geometric ``overlap`` l (see :func:`build_local_plan`)."""
    return max(overlap, radius) if overlap is not None else halo_hops * radius


def within_reach(pos: np.ndarray, mine: np.ndarray, reach: float) -> np.ndarray:
    """Mask of the points within ``reach`` of a point where ``mine`` (those included): a box test first, then the
    distance to the nearest of them (k-d tree), with a relative slack of 1e-9 (a superset is always safe)."""
    if not mine.any():
        return mine.copy()
    reach = reach * (1 + 1e-9) + 1e-300
    own = pos[mine]
    box = np.all((pos >= own.min(0) - reach) & (pos <= own.max(0) + reach), axis=1)
    out = mine.copy()  # included even for a reach of 0 (the tree compares squared distances, which underflow)
    cand = np.flatnonzero(box)
    dist, _ = cKDTree(own).query(pos[cand], distance_upper_bound=reach)
    out[cand[dist <= reach]] = True
    return out
