r"""How one optimizer step, the loading of meshes and prediction run: in one process, or domain-decomposed over P ranks.

The training loop (:mod:`dsmpnn.train.trainer`), evaluation and prediction (:mod:`dsmpnn.train.evaluate`) are
written once against this small interface; :func:`make_strategy` picks the implementation from the process group.

- :class:`SingleProcess` (S-MPNN): the step's sampled graphs are joined into one disjoint graph and the loss is the
  MSE over all its nodes.
- :class:`DomainDecomposed` (DS-MPNN): every rank holds a :class:`~dsmpnn.train.sharding.MeshShard` of each mesh,
  draws the same node samples (same seeded generator), and for each sampled graph g of a step back-propagates

  .. math:: L_{p,g} = \frac{1}{n T} \sum_{i \in O_{p,g}} \sum_t (\hat y_{it} - y_{it})^2,

  with :math:`O_{p,g}` its owned sampled nodes and :math:`n` the number of nodes of all graphs of the step. The
  halo exchange's backward sends every halo contribution to its owner, so after one SUM all-reduce of the
  parameter gradients every rank holds the gradient of the single-process batch MSE and takes the same step.

Both build the step's graphs (``prepare``, which the trainer runs one step ahead in a background thread) and
hand them to the one step function, :func:`dsmpnn.train.step.run_step` (which
``dsmpnn check`` and the benchmarks call too); it returns the loss and the step's statistics, nothing is kept on
the strategy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from dsmpnn.data.dataset import Dataset
from dsmpnn.data.sample import MeshSample
from dsmpnn.distributed import (DistContext, LocalShard, all_gather_objects, all_reduce_sum, any_rank, barrier,
                                broadcast_parameters, quiet_unless_main, run_agreed)
from dsmpnn.errors import ConfigError, DatasetError, DsmpnnError
from dsmpnn.train.config import Config
from dsmpnn.train.features import FeatureMap, GraphStats, make_batch
from dsmpnn.train.inference import predict_sample
from dsmpnn.train.sharding import MeshShard, decompose, predict_sharded, shard_meshes, step_graph
from dsmpnn.train.step import StepGraph, StepResult, run_step

__all__ = ["SingleProcess", "DomainDecomposed", "PreparedStep", "make_strategy", "check_decomposable", "Item"]

T = TypeVar("T")
Item = tuple[object, np.ndarray]
"""A sampled graph: (mesh, ascending node ids); the mesh is a MeshSample or a MeshShard."""


@dataclass
class PreparedStep:
    """The graphs of one step, built before the model runs: one joined :class:`GraphBatch` (one process) or this
    rank's :class:`~dsmpnn.distributed.LocalShard` of them all, joined (DS); ``nodes``: nodes of all the step's graphs;
    ``stats``: the nodes without a neighbour among those built."""

    graphs: list
    nodes: int
    stats: GraphStats


def _files(data: Dataset, split: str, limit: int | None, only: Sequence[int] | None = None) -> tuple[str, ...]:
    files = data.split(split)
    if not files:
        raise DatasetError(f"{data.root / 'manifest.json'}: split '{split}' is empty")
    files = files[:limit] if limit is not None else files
    return files if only is None else tuple(files[k] for k in only)


class SingleProcess:
    """Everything in this process (no process group, or a group of one)."""

    def __init__(self, cfg: Config, fmap: FeatureMap, dtype: torch.dtype, device: torch.device | str,
                 ctx: DistContext | None = None) -> None:
        self.cfg, self.fmap, self.dtype, self.device = cfg, fmap, dtype, torch.device(device)
        self.ctx = ctx or DistContext()

    @property
    def is_main(self) -> bool:
        return True

    def agreed(self, fn: Callable[[], T]) -> T:
        return fn()

    def error(self, err: DsmpnnError) -> DsmpnnError:
        return err

    def load(self, data: Dataset, split: str, limit: int | None = None, keep_full: bool = False,
             only: Sequence[int] | None = None) -> list[MeshSample]:
        """The meshes of ``split`` (the first ``limit``; of those, the ones numbered ``only``)."""
        return [self.fmap.check(data.load(f), self.dtype) for f in _files(data, split, limit, only)]

    def hold(self, sample: MeshSample) -> MeshSample:
        """The mesh as this strategy keeps it (for one mesh read from elsewhere, e.g. ``dsmpnn predict``)."""
        return sample

    def full(self, mesh: MeshSample) -> MeshSample:
        return mesh

    def broadcast(self, model: nn.Module) -> None:
        pass

    def same_everywhere(self, value: object, what: str) -> None:
        pass

    def gather_objects(self, value: object) -> list:
        """``[value]``: the values of every rank (here one)."""
        return [value]

    def prepare(self, items: Sequence[Item]) -> PreparedStep:
        """The step's sampled graphs joined into one disjoint graph (no collective: may run in a background
        thread, see :mod:`dsmpnn.train.prefetch`)."""
        stats = GraphStats()
        gc = self.cfg.graph
        batch = make_batch(list(items), self.fmap, gc.radius, gc.max_neighbors, self.dtype, max_edges=gc.max_edges,
                           stats=stats, cap_mode=gc.sampled_cap)
        return PreparedStep([batch], sum(len(ids) for _, ids in items), stats)

    def step(self, model: nn.Module, items: Sequence[Item] | PreparedStep, stop_requested: bool = False,
             gather: bool = False) -> StepResult:
        """Forward and backward of one optimizer step over ``items`` (or their :meth:`prepare`-d graphs) by
        :func:`~dsmpnn.train.step.run_step`; gradients accumulate into ``.grad``. ``gather``: keep the outputs."""
        prepared = items if isinstance(items, PreparedStep) else self.prepare(items)
        batch = prepared.graphs[0].to(self.device)
        res = run_step(model, [StepGraph(batch.x, batch.edge_index, batch.edge_attr, batch.y)],
                       stop_requested=stop_requested, gather=gather)
        res.graph_stats = prepared.stats
        return res

    def agree_stop(self, requested: bool) -> bool:
        return requested

    def predict(self, model: nn.Module, mesh: MeshSample, stats: GraphStats | None = None) -> np.ndarray:
        """[N, T] physical prediction; ``stats`` counts the nodes without a neighbour in the graphs built."""
        return predict_sample(model, self.fmap, mesh, self.cfg, self.device, stats=stats)

    def total_graph_stats(self, stats: GraphStats) -> GraphStats:
        """``stats`` counted by every rank, summed (here: ``stats``)."""
        return stats

    def barrier(self) -> None:
        pass


class DomainDecomposed:
    """Rank ``ctx.rank`` of ``ctx.world_size`` in an initialised process group (see the module docstring)."""

    def __init__(self, cfg: Config, fmap: FeatureMap, dtype: torch.dtype, ctx: DistContext) -> None:
        if not dist.is_initialized() or ctx.world_size < 2:
            raise DsmpnnError("DomainDecomposed needs an initialised process group of at least 2 ranks")
        self.cfg, self.fmap, self.dtype, self.ctx = cfg, fmap, dtype, ctx
        self.device = ctx.device

    @property
    def is_main(self) -> bool:
        return self.ctx.is_main

    def agreed(self, fn: Callable[[], T]) -> T:
        """``fn()`` on every rank; a :class:`DsmpnnError` on any rank is raised on all (rank 0 reports it)."""
        return run_agreed(fn)

    def error(self, err: DsmpnnError) -> DsmpnnError:
        """``err`` as raised by every rank: reported by rank 0, quiet elsewhere."""
        return quiet_unless_main(err)

    def load(self, data: Dataset, split: str, limit: int | None = None, keep_full: bool = False,
             only: Sequence[int] | None = None) -> list[MeshShard]:
        files = self.agreed(lambda: _files(data, split, limit, only))
        return shard_meshes(lambda k: data.load(files[k]), len(files), self.ctx, self.cfg, self.fmap, self.dtype,
                            keep_full)

    def hold(self, sample: MeshSample) -> MeshShard:
        return shard_meshes(lambda k: sample, 1, self.ctx, self.cfg, self.fmap, self.dtype, keep_full=True)[0]

    def full(self, mesh: MeshShard) -> MeshSample | None:
        return mesh.sample

    def broadcast(self, model: nn.Module) -> None:
        """Rank 0's parameters on every rank."""
        broadcast_parameters(model)

    def same_everywhere(self, value: object, what: str) -> None:
        """Refuse to go on when ranks disagree on ``value`` (e.g. the checkpoint each one loaded)."""
        values = all_gather_objects(value)
        if any(v != values[0] for v in values):
            raise self.error(DsmpnnError(f"ranks disagree on {what}: {values}; every rank must see the same files "
                                         "(a shared file system)"))

    def gather_objects(self, value: object) -> list:
        """The ``value`` of every rank, in rank order, on every rank (a collective)."""
        return all_gather_objects(value)

    def prepare(self, items: Sequence[Item]) -> PreparedStep:
        """This rank's part and halo plan of each sampled graph of the step, joined into one shard of their disjoint
        union (:meth:`LocalShard.batch`: one forward, backward and exchange per layer for the whole step, as one
        process runs one batch graph), without a collective: may run in a background thread (see
        :mod:`dsmpnn.train.prefetch`)."""
        stats = GraphStats()
        shards = [decompose(mesh, ids, self.ctx.world_size, self.cfg, self.dtype, stats=stats) for mesh, ids in items]
        return PreparedStep([LocalShard.batch(shards)], sum(len(ids) for _, ids in items), stats)

    def step(self, model: nn.Module, items: Sequence[Item] | PreparedStep, stop_requested: bool = False,
             gather: bool = False) -> StepResult:
        """Forward and backward of one optimizer step over ``items`` (or their :meth:`prepare`-d shards) by
        :func:`~dsmpnn.train.step.run_step`, each graph run with its halo exchange and back-propagated; on return
        every rank's ``.grad`` holds the gradient of the batch MSE and the result the global loss and whether any
        rank asked to stop. ``gather``: the outputs on rank 0."""
        prepared = items if isinstance(items, PreparedStep) else self.prepare(items)
        graphs = (step_graph(s, self.cfg) for s in prepared.graphs)
        res = run_step(model, graphs, prepared.nodes * self.fmap.out_channels, stop_requested=stop_requested,
                       gather=gather)
        res.graph_stats = prepared.stats
        return res

    def agree_stop(self, requested: bool) -> bool:
        """True on every rank when any rank received SIGINT/SIGTERM, so all stop after the same step."""
        return any_rank(requested, device=self.device)

    def total_graph_stats(self, stats: GraphStats) -> GraphStats:
        """Counts of nodes without a neighbour, summed over ranks (each counted its owned nodes; a collective:
        every rank calls it)."""
        nodes, isolated = all_reduce_sum(torch.tensor([stats.nodes, stats.isolated], dtype=torch.float64,
                                                      device=self.device)).tolist()
        return GraphStats(stats.graphs, int(nodes), int(isolated))

    def predict(self, model: nn.Module, mesh: MeshShard, stats: GraphStats | None = None) -> np.ndarray | None:
        """[N, T] physical prediction on rank 0, None elsewhere (a collective); ``stats`` counts this rank's owned
        nodes without a neighbour."""
        return predict_sharded(model, self.fmap, mesh, self.cfg, self.ctx, stats=stats)

    def barrier(self) -> None:
        barrier()


def check_decomposable(cfg: Config, nproc: int) -> None:
    """Refuse a model that P > 1 ranks cannot run exactly: the GCN's symmetric normalisation needs the degrees
    of halo nodes, which a one-hop halo does not hold (:mod:`dsmpnn.nn.gcn`)."""
    if nproc > 1 and cfg.model.kind == "gcn":
        raise ConfigError(f"model.kind 'gcn' runs in one process only, got {nproc} ranks: GCNConv's normalisation "
                          "needs the degrees of halo nodes, so a domain-decomposed GCN would differ from one "
                          "process; drop --nproc (or use model.kind=mpnn)")


def make_strategy(ctx: DistContext, cfg: Config, fmap: FeatureMap, dtype: torch.dtype,
                  device: torch.device | str) -> SingleProcess | DomainDecomposed:
    """:class:`DomainDecomposed` on a process group of two or more ranks, else :class:`SingleProcess`."""
    if ctx.world_size > 1:
        check_decomposable(cfg, ctx.world_size)
        return DomainDecomposed(cfg, fmap, dtype, ctx)
    return SingleProcess(cfg, fmap, dtype, device, ctx)
