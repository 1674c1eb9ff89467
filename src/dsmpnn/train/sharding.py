"""What one rank holds of a mesh in DS-MPNN, how meshes are split over the ranks, and distributed inference.

Memory of rank p of P for a mesh of N nodes (:class:`MeshShard`):

- ``pos [N, d]`` of every node: every rank draws the same Nyström samples and builds, without communication, its
  part of the sampled radius graph and its halo plan from the sampled nodes near its subdomain
  (:func:`dsmpnn.graph.build_local_plan`: work and memory of the graph ~ N/P plus the halo; with a neighbour cap
  the whole sampled graph);
- ``owner [N]`` (one byte per node up to 256 ranks): the partition of the full mesh;
- the normalised inputs ``x`` and targets ``y`` of its own ~N/P nodes only. Halo rows of the inputs are never
  read by the model (the first halo exchange overwrites the encoder's halo outputs), so they are zero-padded;
- with ``graph.edge_features: inputs`` also the normalised input fields of the nodes within
  :func:`~dsmpnn.graph.halo_reach` of its own (``near``, ``near_fields``): every halo node of any graph on the
  mesh lies there, so the rank writes its local edges' attributes ``[.., a_i, a_j]`` itself, equal to the rows of
  the single-process ones, without communication.

Rank 0 additionally keeps the whole :class:`MeshSample` of the meshes it evaluates or predicts on (``keep_full``):
it gathers the prediction, computes the metrics and writes the outputs.

Partitions are computed once when a command starts (``dsmpnn train`` also when it resumes): mesh k is partitioned by
rank k mod P (``partition`` of the full mesh; METIS on its radius graph) and the owner arrays are all-gathered, so
every rank holds the same partition even where METIS would differ between machines. A resumed run may get a
different partition than the first part of the run on other software; that changes results only by round-off.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dsmpnn.data.sample import MeshSample
from dsmpnn.distributed import DistContext, LocalShard, all_gather_objects, make_exchange, run_agreed
from dsmpnn.errors import GraphError
from dsmpnn.graph import (build_local_plan, covering_samples, halo_reach, node_pair_fields, partition, radius_graph,
                          sampled_cap, within_reach)
from dsmpnn.graph.radius import DEFAULT_MAX_EDGES
from dsmpnn.train.config import Config
from dsmpnn.train.features import FeatureMap, GraphStats
from dsmpnn.train.step import StepGraph, run_step

__all__ = ["MeshShard", "partition_mesh", "check_nproc", "shard_meshes", "decompose", "step_graph",
           "predict_sharded"]

CHUNK = 32
"""Meshes partitioned between two all-gathers of owner arrays (bounds the size of one message)."""


@dataclass(frozen=True, eq=False)
class MeshShard:
    """Rank ``rank``'s part of one mesh.

    Shapes: pos [N, d] float64 (all nodes), owner [N] (rank of every node), owned [n_own] int64 ascending global
    ids, x [n_own, C] and y [n_own, T] (or None) normalised model inputs/targets of the owned nodes, in the model
    dtype and on the rank's device. ``sample``: the whole mesh, only where kept (rank 0 with ``keep_full``).
    ``near [n_near]`` (ascending global ids: the owned nodes and those within the halo reach) and ``near_fields
    [n_near, F]`` (their normalised input fields, :meth:`FeatureMap.edge_fields`): only with
    ``graph.edge_features: inputs``, else None.
    """

    name: str
    rank: int
    pos: np.ndarray
    owner: np.ndarray
    owned: np.ndarray
    x: torch.Tensor
    y: torch.Tensor | None
    sample: MeshSample | None = None
    near: np.ndarray | None = None
    near_fields: torch.Tensor | None = None

    @property
    def num_nodes(self) -> int:
        return len(self.pos)

    @staticmethod
    def from_sample(sample: MeshSample, owner: np.ndarray, rank: int, fmap: FeatureMap, dtype: torch.dtype,
                    device: torch.device | str = "cpu", keep_full: bool = False,
                    reach: float = 0.0) -> "MeshShard":
        """Rank ``rank``'s share of ``sample``; with ``fmap.edge_features == "inputs"`` the input fields of the
        nodes within ``reach`` of the owned ones too (:func:`~dsmpnn.graph.halo_reach` of the config; 0 holds the
        owned nodes' only, enough for one rank)."""
        owned = np.flatnonzero(owner == rank)
        idx = torch.from_numpy(owned)
        inputs = fmap.inputs(sample, dtype)  # [N, C]
        x = inputs[idx].to(device)  # [n_own, C]
        y = None if sample.y is None else fmap.targets(sample, dtype)[idx].to(device)  # [n_own, T]
        fields, near = fmap.edge_fields(inputs), None  # [N, F] or None
        if fields is not None:
            near = np.flatnonzero(within_reach(sample.pos, owner == rank, reach))
            fields = fields[torch.from_numpy(near)].to(device)  # [n_near, F]
        return MeshShard(sample.name, rank, sample.pos, owner, owned, x, y, sample if keep_full else None, near,
                         fields)

    def rows(self, ids: np.ndarray) -> torch.Tensor:
        """Rows of ``x``/``y`` holding the owned global node ids ``ids``."""
        return torch.from_numpy(np.searchsorted(self.owned, ids)).to(self.x.device)

    def edge_fields(self, ids: np.ndarray) -> torch.Tensor | None:
        """The input fields of the global node ids ``ids`` (all within the reach the shard was made for), [len(ids),
        F]; None without ``near_fields``."""
        if self.near_fields is None:
            return None
        rows = np.minimum(np.searchsorted(self.near, ids), len(self.near) - 1)
        if not np.array_equal(self.near[rows], ids):
            raise GraphError(f"rank {self.rank}, mesh '{self.name}': the edge attributes need the input fields of "
                             f"{int((self.near[rows] != ids).sum())} node(s) farther from the subdomain than the "
                             "halo reach this rank holds; expected every halo node within it")
        return self.near_fields[torch.from_numpy(rows).to(self.near_fields.device)]


def partition_mesh(pos: np.ndarray, nparts: int, method: str, radius: float, max_neighbors: int | None = None,
                   seed: int = 0, max_edges: int = DEFAULT_MAX_EDGES) -> np.ndarray:
    """``owner [N]`` of a whole mesh; METIS partitions its radius graph (``radius``, ``max_neighbors``)."""
    edge_index = radius_graph(pos, radius, max_neighbors, warn_isolated=False, max_edges=max_edges) if (
        method == "metis" and nparts > 1) else None
    return partition(pos, nparts, method, edge_index, seed)


def check_nproc(nproc: int, sizes: Sequence[tuple[str, int]]) -> None:
    """Refuse ``nproc`` ranks when a mesh ``(name, nodes)`` has fewer nodes than ranks."""
    for name, n in sizes:
        if n < nproc:
            raise GraphError(f"mesh '{name}' has {n} nodes, fewer than the {nproc} ranks: every rank must own at "
                             f"least one node; use at most {min(m for _, m in sizes)} processes")


def _owner_dtype(nparts: int) -> np.dtype:
    return np.min_scalar_type(max(nparts - 1, 0))


def shard_meshes(load: Callable[[int], MeshSample], count: int, ctx: DistContext, cfg: Config, fmap: FeatureMap,
                 dtype: torch.dtype, keep_full: bool = False) -> list[MeshShard]:
    """This rank's :class:`MeshShard` of meshes ``load(0) .. load(count - 1)`` (a collective: every rank calls it).

    Mesh k is loaded twice at most on one rank (once to partition it, by rank k mod P; once to keep its share) and
    never held whole for longer than that, except by rank 0 with ``keep_full``. Errors (a missing file, more
    ranks than nodes) are raised on every rank.
    """
    P, rank = ctx.world_size, ctx.rank
    dc, gc = cfg.distributed, cfg.graph
    reach = halo_reach(gc.radius, dc.halo_hops, dc.overlap)
    out: list[MeshShard] = []
    for start in range(0, count, CHUNK):
        ks = range(start, min(count, start + CHUNK))

        def partition_mine() -> dict[int, np.ndarray]:
            owners = {}
            for k in ks:
                if k % P == rank:
                    s = load(k)
                    check_nproc(P, [(s.name, s.num_nodes)])
                    owners[k] = partition_mesh(s.pos, P, dc.partition, gc.radius, gc.max_neighbors,
                                               max_edges=gc.max_edges).astype(_owner_dtype(P))
            return owners

        owners: dict[int, np.ndarray] = {}
        for part in all_gather_objects(run_agreed(partition_mine)):
            owners.update(part)
        out.extend(run_agreed(lambda: [MeshShard.from_sample(load(k), owners[k], rank, fmap, dtype, ctx.device,
                                                             keep_full and ctx.is_main, reach) for k in ks]))
    return out


def decompose(mesh: MeshShard, ids: np.ndarray, nparts: int, cfg: Config, dtype: torch.dtype,
              with_targets: bool = True, stats: GraphStats | None = None) -> LocalShard:
    """This rank's :class:`LocalShard` of the radius graph on the mesh nodes ``ids`` (ascending; all nodes for
    full-graph inference): built from the nodes of ``ids`` near its subdomain only
    (:func:`dsmpnn.graph.build_local_plan`), equal to its part of the whole graph; the owned rows come from
    ``mesh``, and with ``graph.edge_features: inputs`` the input fields at both ends of each local edge
    (:func:`dsmpnn.graph.node_pair_fields`) from ``mesh.near_fields``. ``stats`` counts this rank's owned nodes
    and those without a neighbour (summed over ranks by
    :meth:`dsmpnn.train.strategy.DomainDecomposed.total_graph_stats`)."""
    gc = cfg.graph
    cap = sampled_cap(gc.max_neighbors, len(ids), mesh.num_nodes, gc.sampled_cap)
    dec = build_local_plan(mesh.pos, ids, mesh.owner, mesh.rank, gc.radius, cfg.distributed.halo_hops, nparts,
                           cap, dtype, overlap=cfg.distributed.overlap, max_edges=gc.max_edges)
    plan = dec.plan
    if stats is not None:
        stats.count(plan.num_owned, dec.isolated)
    rows = mesh.rows(dec.sample_ids[plan.owned])
    attr = dec.graph.edge_attr.to(mesh.x.device)  # [E_loc, d + 1]
    fields = mesh.edge_fields(dec.local_rows())  # [n_local, F] or None
    if fields is not None:
        attr = torch.cat([attr, node_pair_fields(fields, dec.graph.edge_index)], dim=1)  # [E_loc, d + 1 + 2F]
    y = mesh.y[rows] if with_targets and mesh.y is not None else None
    return LocalShard.from_owned(plan, mesh.x[rows], attr, y, dec.graph.edge_index)


def step_graph(shard: LocalShard, cfg: Config) -> StepGraph:
    """``shard`` for :func:`~dsmpnn.train.step.run_step`, with the halo exchange ``cfg.distributed`` asks for
    (plan counts verified or not, overlapped with the interior edges or blocking)."""
    dc = cfg.distributed
    return StepGraph.from_shard(shard, make_exchange(shard.plan, verify=dc.verify_exchange, overlap=dc.overlap_comm))


@torch.no_grad()
def predict_sharded(model: nn.Module, fmap: FeatureMap, mesh: MeshShard, cfg: Config, ctx: DistContext,
                    seed: int = 0, stats: GraphStats | None = None) -> np.ndarray | None:
    """Predicted targets [N, T] in physical units on rank 0 (None on the others): the distributed counterpart of
    :func:`dsmpnn.train.inference.predict_sample`, equal to it up to round-off (full graph, or the mean over the same
    covering node subsets)."""
    model.eval()
    dtype = next(model.parameters()).dtype
    n = mesh.num_nodes
    if cfg.eval.mode == "full":
        subsets = [np.arange(n)]
    else:
        subsets = covering_samples(n, cfg.graph.sample_nodes, cfg.eval.samples, np.random.default_rng(seed))
    total = torch.zeros(n, fmap.out_channels, dtype=torch.float64) if ctx.is_main else None
    count = torch.zeros(n, 1, dtype=torch.float64) if ctx.is_main else None
    for ids in subsets:
        shard = decompose(mesh, ids, ctx.world_size, cfg, dtype, with_targets=False, stats=stats)
        res = run_step(model, [step_graph(shard, cfg)], backward=False, gather=True)
        full = res.outputs  # [len(ids), T] normalised, in subset order, on rank 0
        if ctx.is_main:
            rows = torch.from_numpy(ids)
            total[rows] += full.double().cpu()
            count[rows] += 1
    return fmap.to_physical(total / count) if ctx.is_main else None
