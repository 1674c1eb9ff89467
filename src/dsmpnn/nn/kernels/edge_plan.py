r"""Edges grouped by source and by out-degree: the layout the fast edge-conditioned aggregation works on.

The aggregation :math:`\mathrm{out}_i = \sum_{e = (j \to i)} h_e^\top Q_j` (see :mod:`dsmpnn.nn.aggregate`) is a
batch of small dense products, one per source node j: :math:`M_j = H_j Q_j`, with :math:`H_j \in
\mathbb{R}^{d_j \times K}` the kernel features of the :math:`d_j` edges leaving j. Sorting the edges by
(out-degree of the source, source) puts the edges of all sources of the same out-degree d next to each other,
so the products of those sources are one ``bmm`` of shape [n_d, d, K] x [n_d, K, C] on views, without padding
or copies (``order="degree"``). The fused CPU kernels (:mod:`dsmpnn.nn.kernels.native`) take any out-degree per source;
for them the sources are put in reverse Cuthill-McKee order instead (``order="locality"``, SciPy), so that
consecutive sources are graph neighbours: the rows of the output they add into, and of the gradient they read,
are still in cache (on the issue-5 reference case, whose node ids are random, this doubled the kernels' speed).
The sorted sequence is then cut into chunks of at most ``chunk`` edges and ``chunk // 8`` sources (a
source's edges are never split), which bounds the temporary memory of one chunk; within a chunk, runs of
sources of equal out-degree form the groups of the ``bmm`` path. Both paths compute the same sums with either
order, only in a different order of addition.

A plan depends only on ``edge_index`` and the node counts, so the L layers of a model that share one graph can
share one plan: :func:`cached_edge_plan` keeps the last few plans, keyed by the identity and version counter of the
``edge_index`` tensor (an in-place change to the tensor, or a new tensor, gives a new plan).

For a layer that overlaps the halo exchange with its work, :class:`EdgeSplit` (cached the same way,
:func:`cached_edge_split`) divides the edges by source into those the exchange cannot change (interior) and the
others (boundary); each part gets its own plan.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import scipy.sparse
import torch
from scipy.sparse.csgraph import reverse_cuthill_mckee

from dsmpnn.nn.kernels.backend import choose_backend
from dsmpnn.nn.kernels.chunk_pool import run_single_threaded

__all__ = ["EdgePlan", "EdgeSplit", "Group", "Chunk", "cached_edge_plan", "cached_edge_split", "default_order",
           "DEFAULT_EDGE_CHUNK", "ORDERS"]

DEFAULT_EDGE_CHUNK = 8_192
"""Edges per chunk (at most ``chunk // 8`` sources). On the PyTorch (``bmm``) path it bounds the temporaries of one
chunk at about chunk x (K + 2 C) + min(chunk / d, chunk / 8) x (K + 1) x C floats (d: out-degree of its sources);
that path is about 15 % faster at 16 384 than at 8 192 on the issue-5 reference case. The fused kernels work in
blocks of 16 sources whatever the chunk, so for them it only sets how many calls, and how many parts to share
between threads, a pass has."""

ORDERS = ("degree", "locality")

T = TypeVar("T")


def default_order(device: torch.device) -> str:
    """"locality" where the fused CPU kernels will run, "degree" (the ``bmm`` and padded paths) elsewhere."""
    return "locality" if choose_backend(device) == "fused" else "degree"

NODES_PER_CHUNK_DIVISOR = 8


@dataclass(frozen=True)
class Group:
    """Sources of equal out-degree ``d`` inside a chunk: local nodes ``[a, b)`` own local edges ``[s, t)``,
    ``t - s = (b - a) d``, edge ``s + k d + r`` being the r-th edge of node ``a + k``."""

    d: int
    a: int
    b: int
    s: int
    t: int


@dataclass(frozen=True)
class Chunk:
    """Source slots ``[n0, n1)`` and sorted edges ``[e0, e1)`` of one chunk (its equal-degree groups, which only
    the ``bmm`` path needs: :meth:`EdgePlan.groups`)."""

    n0: int
    n1: int
    e0: int
    e1: int


@dataclass(frozen=True)
class EdgePlan:
    """Edges of ``edge_index`` sorted by (out-degree of the source, source), in chunks.

    Shapes:
        perm:       [E] original edge id of each sorted edge (stable: ties keep their input order)
        sources:    [S] int64, the source node of each slot, S = number of nodes with out-degree > 0
        source_degree: [S] int64, the out-degree of each slot's source (non-decreasing in "degree" order)
        dst_sorted: [E] target of each sorted edge (``edge_index[1, perm]``)
        in_degree:  [num_nodes] int64, edges per target

    ``perm`` and ``dst_sorted``, the two arrays per edge, are int32 where E and the node count fit (below 2^31;
    half the memory of int64), else int64; :meth:`rows` and :meth:`targets` give one chunk's as int64.
    """

    perm: torch.Tensor
    sources: torch.Tensor
    source_degree: torch.Tensor
    dst_sorted: torch.Tensor
    in_degree: torch.Tensor
    chunks: tuple[Chunk, ...]
    num_src: int
    num_nodes: int
    chunk: int
    order: str = "degree"
    _padded: dict = field(default_factory=dict, compare=False, repr=False)
    _groups: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def num_edges(self) -> int:
        return int(self.perm.shape[0])

    @property
    def max_chunk_edges(self) -> int:
        return max((c.e1 - c.e0 for c in self.chunks), default=0)

    def rows(self, ch: Chunk) -> torch.Tensor:
        """Original edge ids of chunk ``ch``'s sorted edges: [e] int64."""
        return self.perm[ch.e0:ch.e1].long()

    def targets(self, ch: Chunk) -> torch.Tensor:
        """Targets of chunk ``ch``'s sorted edges: [e] int64."""
        return self.dst_sorted[ch.e0:ch.e1].long()

    @property
    def max_chunk_nodes(self) -> int:
        return max((c.n1 - c.n0 for c in self.chunks), default=0)

    def padded(self, ch: Chunk) -> tuple[torch.Tensor, torch.Tensor]:
        """The degree-padded layout of chunk ``ch`` (:func:`dsmpnn.nn.kernels.padded.padded_index`), made once."""
        if ch.n0 not in self._padded:
            from dsmpnn.nn.kernels.padded import padded_index  # noqa: PLC0415 - only the padded (CUDA) path needs it

            self._padded[ch.n0] = padded_index(self.source_degree[ch.n0:ch.n1], ch.e1 - ch.e0)
        return self._padded[ch.n0]

    def groups(self, ch: Chunk) -> tuple[Group, ...]:
        """The runs of equal out-degree in chunk ``ch`` (chunk-local slots and edges), made once per chunk."""
        if ch.n0 not in self._groups:
            degrees, counts = torch.unique_consecutive(self.source_degree[ch.n0:ch.n1], return_counts=True)
            groups, a, e = [], 0, 0
            for d, k in zip(degrees.tolist(), counts.tolist()):
                groups.append(Group(d, a, a + k, e, e + k * d))
                a, e = a + k, e + k * d
            self._groups[ch.n0] = tuple(groups)
        return self._groups[ch.n0]

    def mean_weights(self, dtype: torch.dtype) -> torch.Tensor:
        """``1 / max(deg_in(i), 1)`` per target node: [num_nodes]."""
        return self.in_degree.clamp(min=1).to(dtype).reciprocal()

    @classmethod
    def build(cls, edge_index: torch.Tensor, num_nodes: int, num_src: int | None = None,
              chunk: int = DEFAULT_EDGE_CHUNK, order: str | None = None) -> "EdgePlan":
        """Plan for ``edge_index [2, E]`` (row 0 source in ``[0, num_src)``, row 1 target in ``[0, num_nodes)``;
        ``num_src`` defaults to ``num_nodes``), its sources in ``order`` ("degree" or "locality"; None:
        :func:`default_order`). On CPU it is built on one thread: its many small sorts and gathers were measured
        10 times slower with two threads on cores shared with other processes."""
        order = default_order(edge_index.device) if order is None else order
        return run_single_threaded(lambda: cls._build(edge_index, num_nodes, num_src, chunk, order),
                                   edge_index.device)

    @classmethod
    def _build(cls, edge_index: torch.Tensor, num_nodes: int, num_src: int | None, chunk: int,
               order: str) -> "EdgePlan":
        num_src = num_nodes if num_src is None else num_src
        if edge_index.dim() != 2 or edge_index.shape[0] != 2:
            raise ValueError(f"edge_index has shape {list(edge_index.shape)}, expected [2, E]")
        if edge_index.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"edge_index has dtype {edge_index.dtype}, expected int64 or int32")
        if chunk < 1:
            raise ValueError(f"chunk must be at least 1 edge, got {chunk}")
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        src, dst = edge_index[0], edge_index[1]  # views, int32 or int64 (no int64 copies of an int32 graph)
        out_degree = torch.bincount(src, minlength=num_src)  # [num_src] (raises on negative ids)
        in_degree = torch.bincount(dst, minlength=num_nodes)  # [num_nodes]
        if out_degree.shape[0] != num_src or in_degree.shape[0] != num_nodes:
            raise ValueError(f"edge_index refers to node {max(out_degree.shape[0], in_degree.shape[0]) - 1}, "
                             f"expected sources < {num_src} and targets < {num_nodes}")
        small = max(src.shape[0], num_src, num_nodes) < 2**31
        if order == "degree":
            # Sort key (out-degree, source): both < 2^31 for any graph that fits in memory, so one int64 key.
            perm = torch.argsort(out_degree[src] * num_src + src, stable=True)  # [E]
            slot_key = out_degree * num_src + torch.arange(num_src, device=src.device)
            sources = torch.argsort(slot_key)[num_src - int((out_degree > 0).sum()):]  # [S], degree > 0 only
            dst_sorted = dst[perm]  # the graph's id type
            perm, dst_sorted = (perm.int(), dst_sorted.int()) if small else (perm, dst_sorted.long())
        else:
            perm, sources, dst_sorted = _locality_order(src, dst, out_degree, num_nodes, small)
        source_degree = out_degree[sources]  # [S]
        chunks = _cut(source_degree, chunk, max(1, chunk // NODES_PER_CHUNK_DIVISOR))
        return cls(perm, sources, source_degree, dst_sorted, in_degree, chunks, num_src, num_nodes, chunk, order)


def _locality_order(src: torch.Tensor, dst: torch.Tensor, out_degree: torch.Tensor, num_nodes: int,
                    small: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``perm [E]``, ``sources [S]`` (the sources with edges, in reverse Cuthill-McKee order) and ``dst_sorted
    [E]``: the edges of each source in input order, the sources one after the other.

    One stable counting sort of the edges by source (:func:`_stable_order`) gives a CSR matrix source x target whose
    values are the edge ids; the order of the sources comes from its pattern, then its rows are gathered in that
    order (values: ``perm``, column indices: ``dst_sorted``). With ``small`` (ids below 2^31) the per-edge arrays
    kept are int32."""
    device, num_src = src.device, out_degree.shape[0]
    num_edges = int(src.shape[0])
    it = np.int32 if small else np.int64
    deg = out_degree.cpu().numpy()
    n = max(num_src, num_nodes)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(deg, out=indptr[1:num_src + 1])
    indptr[num_src + 1:] = num_edges
    by_src = _stable_order(src.cpu().numpy(), num_src, it)  # [E] edge ids grouped by source, in order
    targets = dst.cpu().numpy()[by_src].astype(it, copy=False)  # [E]
    # reverse Cuthill-McKee on the graph source -> target (as if symmetric: only the order is at stake)
    pattern = scipy.sparse.csr_matrix((np.ones(num_edges, dtype=np.int8), targets, indptr), shape=(n, n))
    rcm = reverse_cuthill_mckee(pattern, symmetric_mode=True)  # [n] node ids
    del pattern
    rcm = rcm[rcm < num_src]
    sources = rcm[deg[rcm] > 0].astype(np.int64)
    rows = scipy.sparse.csr_matrix((by_src, targets, indptr), shape=(n, n))[sources]  # rows in RCM order
    del by_src, targets
    perm, dst_sorted = rows.data.astype(it, copy=False), rows.indices.astype(it, copy=False)
    return (torch.from_numpy(perm).to(device), torch.from_numpy(sources).to(device),
            torch.from_numpy(dst_sorted).to(device))


def _stable_order(keys: np.ndarray, num_keys: int, it: type) -> np.ndarray:
    """``argsort(keys, stable)`` [E] of integer keys in ``[0, num_keys)``, as ``it``, by a counting sort in linear
    time: a matrix with one entry per element (row e, column keys[e]) converted to columns by SciPy, which moves
    the entries of each column in row order (1e6-node radius graph, 25 M edges: 1.3 s against 4.1 s for numpy's
    stable argsort and 2.0 s for torch's)."""
    num = len(keys)
    one_per_row = scipy.sparse.csr_matrix((np.ones(num, dtype=np.int8), keys.astype(it, copy=False),
                                           np.arange(num + 1, dtype=it)), shape=(num, num_keys))
    return one_per_row.tocsc().indices.astype(it, copy=False)


def _cut(source_degree: torch.Tensor, chunk: int, max_nodes: int) -> tuple[Chunk, ...]:
    """Cut the sources, in order, into chunks of at most ``chunk`` edges and ``max_nodes`` sources, greedily
    (a source with more than ``chunk`` edges gets a chunk of its own): one binary search per chunk."""
    cum = np.concatenate([[0], np.cumsum(source_degree.cpu().numpy())])  # [S + 1] edges before each slot
    num = cum.shape[0] - 1
    chunks: list[Chunk] = []
    n0 = 0
    while n0 < num:
        n1 = int(np.searchsorted(cum, cum[n0] + chunk, side="right")) - 1  # last end within `chunk` edges
        n1 = max(min(n1, n0 + max_nodes), n0 + 1)
        chunks.append(Chunk(n0, n1, int(cum[n0]), int(cum[n1])))
        n0 = n1
    return tuple(chunks)


@dataclass(frozen=True, eq=False)
class EdgeSplit:
    r"""The edges of a graph in two parts by source row, for a layer that overlaps the halo exchange with its work.

    Rows ``[0, first_halo_row)`` are never overwritten by the halo exchange (a rank's owned rows); rows
    ``[first_halo_row, num_nodes)`` are (its halo rows). The *interior* edges are those whose source is a row
    of the first kind: their messages can be computed before the exchange has delivered anything. The
    *boundary* edges are the others. The aggregation of a target i is then

    .. math:: \mathrm{out}_i = s_i \Big(\sum_{e \in I,\, e \to i} m_e + \sum_{e \in B,\, e \to i} m_e\Big),

    with :math:`s_i = 1 / \max(\deg(i), 1)` over the whole graph for a mean (``in_degree``), 1 for a sum.

    Shapes (int64): interior_ids [E_I], boundary_ids [E_B] (ascending edge ids, together 0..E-1 once each);
    interior_index [2, E_I] and boundary_index [2, E_B] (``edge_index[:, ids]``); in_degree [num_nodes], edges
    into each target over both parts.
    """

    first_halo_row: int
    num_nodes: int
    interior_ids: torch.Tensor
    boundary_ids: torch.Tensor
    interior_index: torch.Tensor
    boundary_index: torch.Tensor
    in_degree: torch.Tensor

    @classmethod
    def build(cls, edge_index: torch.Tensor, num_nodes: int, first_halo_row: int) -> "EdgeSplit":
        """The split of ``edge_index [2, E]`` (row 0 source, row 1 target, both in ``[0, num_nodes)``)."""
        if edge_index.dim() != 2 or edge_index.shape[0] != 2:
            raise ValueError(f"edge_index has shape {list(edge_index.shape)}, expected [2, E]")
        if not 0 <= first_halo_row <= num_nodes:
            raise ValueError(f"first_halo_row {first_halo_row} must lie in [0, num_nodes={num_nodes}]")
        edge_index = edge_index.long()
        halo_source = edge_index[0] >= first_halo_row  # [E]
        interior = torch.nonzero(~halo_source).flatten()  # [E_I] ascending
        boundary = torch.nonzero(halo_source).flatten()  # [E_B] ascending
        in_degree = torch.bincount(edge_index[1], minlength=num_nodes)  # [num_nodes]
        if in_degree.shape[0] != num_nodes:
            raise ValueError(f"edge_index refers to node {in_degree.shape[0] - 1}, expected targets < {num_nodes}")
        return cls(first_halo_row, num_nodes, interior, boundary, edge_index[:, interior], edge_index[:, boundary],
                   in_degree)

    def mean_weights(self, dtype: torch.dtype) -> torch.Tensor:
        """``1 / max(deg_in(i), 1)`` per target over both parts: [num_nodes]."""
        return self.in_degree.clamp(min=1).to(dtype).reciprocal()

    def split_attr(self, edge_attr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``edge_attr [E, D]`` -> (interior rows [E_I, D], boundary rows [E_B, D]), differentiable."""
        return edge_attr.index_select(0, self.interior_ids), edge_attr.index_select(0, self.boundary_ids)


_CACHE: OrderedDict[tuple[int, str], tuple[weakref.ref, tuple, EdgePlan | EdgeSplit]] = OrderedDict()
_CACHE_SIZE = 6
_LOCK = threading.Lock()
_FREED: list[tuple[int, str]] = []  # keys whose tensor was freed (appended by weakref callbacks, which take no lock)


def cached_edge_plan(edge_index: torch.Tensor, num_nodes: int, num_src: int | None = None,
                     chunk: int = DEFAULT_EDGE_CHUNK) -> EdgePlan:
    """:meth:`EdgePlan.build`, reusing the plan of the same ``edge_index`` tensor when it has not changed.

    The cache holds the last few plans (and splits, :func:`cached_edge_split`). An entry is used only for the very
    tensor object it was built from (weak reference), with the same version counter (no in-place change since),
    node counts and chunk size; it is dropped when that tensor is freed.
    """
    num_src = num_nodes if num_src is None else num_src
    order = default_order(edge_index.device)  # part of the key: the kernels may be switched on or off
    sig = (tuple(edge_index.shape), edge_index.device, num_nodes, num_src, chunk, order)
    return _cached(edge_index, "plan", sig, lambda: EdgePlan.build(edge_index, num_nodes, num_src, chunk, order))


def cached_edge_split(edge_index: torch.Tensor, num_nodes: int, first_halo_row: int) -> EdgeSplit:
    """:meth:`EdgeSplit.build`, cached like :func:`cached_edge_plan`; the split's two edge lists keep their own
    identity, so the layers sharing the split share the edge plans of its parts too."""
    sig = (tuple(edge_index.shape), edge_index.device, num_nodes, first_halo_row)
    return _cached(edge_index, "split", sig, lambda: EdgeSplit.build(edge_index, num_nodes, first_halo_row))


def _cached(edge_index: torch.Tensor, kind: str, sig: tuple, build: Callable[[], T]) -> T:
    """``build()``, or the entry of the same ``kind`` and ``sig`` built for this ``edge_index`` tensor object at its
    current version."""
    key = (id(edge_index), kind)
    try:
        sig = (edge_index._version, *sig)
    except RuntimeError:  # inference tensors have no version counter: build every time
        return build()
    with _LOCK:
        _drop_freed()
        hit = _CACHE.get(key)
        if hit is not None and hit[0]() is edge_index and hit[1] == sig:
            _CACHE.move_to_end(key)
            return hit[2]
    value = build()
    try:
        ref = weakref.ref(edge_index, lambda _, key=key: _FREED.append(key))
    except TypeError:  # an object that takes no weak reference is built every time
        return value
    with _LOCK:
        _CACHE[key] = (ref, sig, value)
        _CACHE.move_to_end(key)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return value


def _drop_freed() -> None:
    """Forget the entries of freed tensors (call with _LOCK held)."""
    while _FREED:
        key = _FREED.pop()
        hit = _CACHE.get(key)
        if hit is not None and hit[0]() is None:
            del _CACHE[key]
