"""The tensors one rank works on (:class:`LocalShard`: its subdomain plus halo of a graph) and gathering
per-owned-node results on one rank. Graph-agnostic beyond the :class:`~dsmpnn.graph.HaloPlan`; the step that
runs a model on shards is :func:`dsmpnn.train.step.run_step`::

    plans = build_halo_plans(partition(pos, ctx.world_size, "metis", graph.edge_index.numpy()),
                             graph.edge_index, halo_hops=2)
    shard = make_shard(plans[ctx.rank], graph, x, y, device=ctx.device)
    result = run_step(model, [StepGraph.from_shard(shard, make_exchange(shard.plan))], gather=True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dsmpnn.distributed.process_group import collective
from dsmpnn.errors import DsmpnnError
from dsmpnn.graph.halo import HaloPlan, batch_plans
from dsmpnn.graph.radius import Graph

__all__ = ["LocalShard", "make_shard", "gather_owned"]


@dataclass(frozen=True, eq=False)
class LocalShard:
    """The tensors rank ``plan.rank`` works on.

    Shapes: x [n_local, F] (owned rows, then halo rows), edge_index [2, E_loc], edge_attr [E_loc, D],
    y [n_own, T] or None.

    The halo rows of ``x`` are never read: the first exchange overwrites the encoder's halo rows with the
    owners' values. A rank that holds only its owned data may pass zeros there (:meth:`from_owned`).
    """

    plan: HaloPlan
    x: torch.Tensor
    edge_index: torch.Tensor
    edge_attr: torch.Tensor
    y: torch.Tensor | None = None

    def __post_init__(self) -> None:
        p = self.plan
        if self.x.shape[0] != p.num_local:
            raise DsmpnnError(f"rank {p.rank}: x has {self.x.shape[0]} rows, expected {p.num_local} local rows")
        if tuple(self.edge_index.shape) != (2, p.num_edges) or self.edge_attr.shape[0] != p.num_edges:
            raise DsmpnnError(f"rank {p.rank}: edge_index {tuple(self.edge_index.shape)} / edge_attr "
                              f"{tuple(self.edge_attr.shape)} do not match the plan's {p.num_edges} local edges")
        if self.y is not None and self.y.shape[0] != p.num_owned:
            raise DsmpnnError(f"rank {p.rank}: y has {self.y.shape[0]} rows, expected {p.num_owned} owned rows")

    @classmethod
    def from_owned(cls, plan: HaloPlan, x_owned: torch.Tensor, edge_attr_local: torch.Tensor,
                   y_owned: torch.Tensor | None = None, edge_index: torch.Tensor | None = None) -> "LocalShard":
        """A shard from this rank's data only: ``x_owned [n_own, F]`` (halo rows padded with zeros) and the
        local edges' attributes ``edge_attr_local [E_loc, D]`` (``edge_attributes(pos_local, plan.edge_index,
        r)`` from the positions of the local rows gives the global graph's values; ``fields=`` the node fields of
        the local rows, halo included, when the graph's attributes carry them). ``edge_index``: the plan's local
        edges as a tensor already made (e.g. :attr:`LocalDecomposition.graph`, which shares the plan's memory);
        None: a copy of ``plan.edge_index``."""
        x = torch.cat([x_owned, x_owned.new_zeros(plan.num_halo, *x_owned.shape[1:])])
        ei = plan.tensor("edge_index", x_owned.device) if edge_index is None else edge_index.to(x_owned.device)
        return cls(plan, x, ei, edge_attr_local, y_owned)

    @classmethod
    def batch(cls, shards: Sequence["LocalShard"]) -> "LocalShard":
        """Several graphs' shards of this rank as the shard of their disjoint union (:func:`~dsmpnn.graph.halo.
        batch_plans`: owned rows of every graph, then the halo rows by peer), so a step of B graphs runs one
        forward, one backward and one exchange per layer instead of B. Halo rows of ``x`` are zeros (never
        read)."""
        if len(shards) == 1:
            return shards[0]
        plan, _ = batch_plans([s.plan for s in shards])
        x0 = shards[0].x
        x = torch.cat([s.x[:s.plan.num_owned] for s in shards] + [x0.new_zeros(plan.num_halo, *x0.shape[1:])])
        ys = [s.y for s in shards]
        y = None if any(v is None for v in ys) else torch.cat(ys)
        return cls(plan, x, plan.tensor("edge_index", x0.device), torch.cat([s.edge_attr for s in shards]), y)


def make_shard(plan: HaloPlan, graph: Graph, x: torch.Tensor, y: torch.Tensor | None = None,
               device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> LocalShard:
    """This rank's shard from global data: ``graph`` on N nodes, ``x [N, F]``, ``y [N, T]``."""
    x, y = torch.as_tensor(x), None if y is None else torch.as_tensor(y)
    if x.shape[0] != plan.num_global_nodes or (y is not None and y.shape[0] != plan.num_global_nodes):
        raise DsmpnnError(f"x/y must have one row per node of the graph ({plan.num_global_nodes}), got "
                          f"{x.shape[0]}" + ("" if y is None else f"/{y.shape[0]}"))
    local = plan.local_graph(graph)
    dtype = dtype or x.dtype
    owned = plan.tensor("owned")
    return LocalShard(plan, plan.to_local(x).to(device=device, dtype=dtype), local.edge_index.to(device),
                      local.edge_attr.to(device=device, dtype=dtype),
                      None if y is None else y[owned].to(device=device, dtype=dtype))


def gather_owned(values: torch.Tensor, plan: HaloPlan, dst: int = 0,
                 group: dist.ProcessGroup | None = None) -> torch.Tensor | None:
    """Per-node values of all ranks as one ``[N, ...]`` tensor in global node order on rank ``dst``.

    Shapes: values [n_own, ...] in ``plan.owned`` order -> [N, ...] on ``dst``, None on the other ranks.
    """
    values = values.detach().contiguous()
    if values.shape[0] != plan.num_owned:
        raise DsmpnnError(f"rank {plan.rank}: expected {plan.num_owned} owned rows, got {values.shape[0]}")
    world = dist.get_world_size(group) if dist.is_initialized() else 1
    ids = plan.tensor("owned", values.device)
    if world == 1:
        return values.new_empty((plan.num_global_nodes, *values.shape[1:])).index_copy_(0, ids, values)
    counts = [torch.zeros(1, dtype=torch.int64, device=values.device) for _ in range(world)]
    with collective("all-gather of owned-node counts (gathering a prediction)", group=group):
        dist.all_gather(counts, torch.tensor([plan.num_owned], device=values.device), group=group)
    most = int(max(c.item() for c in counts))
    pad_v = values.new_zeros((most, *values.shape[1:]))
    pad_v[:plan.num_owned] = values
    pad_i = torch.full((most,), -1, dtype=torch.int64, device=values.device)
    pad_i[:plan.num_owned] = ids
    is_dst = dist.get_rank(group) == dst
    all_v = [torch.empty_like(pad_v) for _ in range(world)] if is_dst else None
    all_i = [torch.empty_like(pad_i) for _ in range(world)] if is_dst else None
    dst_global = dst if group is None else dist.get_global_rank(group, dst)
    with collective(f"gather of the prediction on rank {dst}", group=group):
        dist.gather(pad_v, all_v, dst=dst_global, group=group)
        dist.gather(pad_i, all_i, dst=dst_global, group=group)
    if not is_dst:
        return None
    out = values.new_empty((plan.num_global_nodes, *values.shape[1:]))
    for v, i, c in zip(all_v, all_i, counts):
        n = int(c.item())
        out.index_copy_(0, i[:n], v[:n])
    return out
