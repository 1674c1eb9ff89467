r"""The one step of the MPNN that training, evaluation, prediction, ``dsmpnn check`` and the benchmarks run.

:func:`run_step` takes the graphs of one step as this process computes them (:class:`StepGraph`: the whole graph
in one process, or this rank's subdomain plus halo with its halo exchange) and, on every rank:

1. runs the model on each graph, the halo exchange refreshing halo rows before the layers that need them;
2. with targets and ``backward``, back-propagates the squared error of the owned rows divided by the number of
   target entries of the whole step (all graphs, all ranks)

   .. math:: L_p = \frac{1}{n T} \sum_g \sum_{i \in O_{p,g}} \sum_t (\hat y_{it} - y_{it})^2;

   the exchange's backward routes every halo contribution to its owner;
3. on P > 1 ranks, SUM all-reduces the parameter gradients (so every rank holds the gradient of the
   single-process batch MSE) and, in one more all-reduce, the squared error and the stop flags.

One process runs the same function with ``plan = exchange = None``: no message, nothing reduced. Statistics
(time, exchange bytes and seconds, reductions) come back in :class:`StepResult`; nothing is stored elsewhere.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from dsmpnn.distributed import LayerExchange, LocalShard, all_reduce_sum, allreduce_gradients, gather_owned
from dsmpnn.graph import HaloPlan, sample_nodes
from dsmpnn.train.config import Config
from dsmpnn.train.features import GraphStats

__all__ = ["StepGraph", "StepStats", "StepResult", "run_step", "epoch_batches"]


@dataclass(frozen=True, eq=False)
class StepGraph:
    """One graph of a step as this process computes it.

    Shapes: x [n_local, F] (owned rows first, then halo rows), edge_index [2, E_loc], edge_attr [E_loc, D],
    y [n_own, T] or None. ``plan``/``exchange``: this rank's halo plan and exchange, None in one process (then
    every row is owned).
    """

    x: torch.Tensor
    edge_index: torch.Tensor
    edge_attr: torch.Tensor
    y: torch.Tensor | None = None
    plan: HaloPlan | None = None
    exchange: LayerExchange | None = None

    @classmethod
    def from_shard(cls, shard: LocalShard, exchange: LayerExchange | None) -> "StepGraph":
        return cls(shard.x, shard.edge_index, shard.edge_attr, shard.y, shard.plan, exchange)

    @property
    def num_owned(self) -> int:
        return self.x.shape[0] if self.plan is None else self.plan.num_owned

    @property
    def num_global(self) -> int:
        """Nodes of the whole graph (all ranks)."""
        return self.x.shape[0] if self.plan is None else self.plan.num_global_nodes

    @property
    def distributed(self) -> bool:
        return self.plan is not None and self.plan.nparts > 1


@dataclass
class StepStats:
    """What one step cost on this rank. Exchange numbers cover forward and backward exchanges."""

    graphs: int = 0
    owned_rows: int = 0
    halo_rows: int = 0
    edges: int = 0
    seconds: float = 0.0
    exchange_calls: int = 0
    exchange_bytes: int = 0
    exchange_seconds: float = 0.0
    reduce_seconds: float = 0.0

    def add(self, other: "StepStats") -> None:
        for f in self.__dataclass_fields__:
            setattr(self, f, getattr(self, f) + getattr(other, f))


@dataclass
class StepResult:
    """What :func:`run_step` returns on each rank.

    ``loss``: the global MSE of the step (the same on every rank; None without targets or without backward);
    ``nodes``: nodes of the step's graphs (all ranks); ``stop``: whether any rank asked to stop; ``outputs``:
    with ``gather``, the model outputs of every node of every graph, [sum of nodes, T] in graph order then node
    order, on rank ``dst`` (None elsewhere); ``graph_stats``: nodes without a neighbour in the graphs built for
    the step (this rank's owned ones; filled by the caller that built the graphs).
    """

    loss: float | None
    nodes: int
    stop: bool
    stats: StepStats
    outputs: torch.Tensor | None = None
    graph_stats: GraphStats = field(default_factory=GraphStats)


def _exchange_counters(ex: LayerExchange | None) -> tuple[int, int, float]:
    if ex is None:
        return 0, 0, 0.0
    s = ex.stats
    return s.calls, s.bytes_sent, s.seconds


def run_step(model: nn.Module, graphs: Iterable[StepGraph], denom: int | None = None, *, backward: bool = True,
             stop_requested: bool = False, gather: bool = False, dst: int = 0,
             group: dist.ProcessGroup | None = None) -> StepResult:
    """Forward (and backward) of one step over ``graphs`` (see the module docstring); gradients ACCUMULATE into
    ``.grad`` (zero them before) and are summed over ranks.

    ``graphs`` may be a generator: each graph is built, run and released before the next (activations of one
    graph at a time). ``denom``: target entries of the whole step, all ranks (default: the nodes of the graphs
    times the target channels, which needs every graph first). Without ``backward`` the step runs without
    autograd and reduces nothing (inference). Every rank calls it with the same number of graphs.
    """
    t0 = time.perf_counter()
    stats = StepStats()
    if denom is None:
        graphs = list(graphs)
        denom = sum(g.num_global * (g.y.shape[1] if g.y is not None else 1) for g in graphs)
    sse: torch.Tensor | None = None
    outputs: list[torch.Tensor] = []
    nodes, distributed, device = 0, False, None
    for g in graphs:
        before = _exchange_counters(g.exchange)
        kwargs = {} if g.exchange is None else {"exchange": g.exchange}
        with torch.set_grad_enabled(backward and torch.is_grad_enabled()):
            pred = model(g.x, g.edge_index, g.edge_attr, **kwargs)[:g.num_owned]  # [n_own, T]
            if backward and g.y is not None:
                err = (pred - g.y).pow(2).sum()  # owned rows of this rank only
                (err / denom).backward()
                sse = err.detach().double() if sse is None else sse + err.detach().double()
        if gather:
            full = pred.detach() if g.plan is None else gather_owned(pred, g.plan, dst, group)
            if full is not None:
                outputs.append(full)
        after = _exchange_counters(g.exchange)
        stats.exchange_calls += after[0] - before[0]
        stats.exchange_bytes += after[1] - before[1]
        stats.exchange_seconds += after[2] - before[2]
        stats.graphs += 1
        stats.owned_rows += g.num_owned
        stats.halo_rows += 0 if g.plan is None else g.plan.num_halo
        stats.edges += int(g.edge_index.shape[1])
        nodes += g.num_global
        distributed = distributed or g.distributed
        device = g.x.device
    loss, stop = None, stop_requested
    if backward:
        t1 = time.perf_counter()
        if sse is None:
            sse = torch.zeros((), dtype=torch.float64, device=device)
        if distributed:
            allreduce_gradients(model.parameters(), group)
            # one all-reduce for the global SSE and the stop flag (a sum of the flags > 0 is their MAX)
            total = all_reduce_sum(torch.stack([sse, torch.tensor(float(stop_requested), dtype=torch.float64,
                                                                  device=sse.device)]), group)
            sse, stop = total[0], bool(total[1] > 0)
        loss = float(sse) / denom if denom else None
        stats.reduce_seconds = time.perf_counter() - t1
    stats.seconds = time.perf_counter() - t0
    out = (torch.cat(outputs) if len(outputs) > 1 else outputs[0]) if outputs else None
    return StepResult(loss, nodes, stop, stats, out)


def epoch_batches(sizes: Sequence[int], cfg: Config, epoch: int) -> list[list[tuple[int, np.ndarray]]]:
    """The training steps of epoch ``epoch`` (1-based) over meshes of ``sizes`` nodes: a list of steps, each a
    list of ``(mesh index, ascending node ids)``, ``train.batch_graphs`` graphs a step.

    ``graph.samples_per_mesh`` Nyström samples of ``graph.sample_nodes`` nodes are drawn from every mesh with a
    generator seeded by (``train.seed``, epoch), then shuffled: a resumed run draws exactly what an uninterrupted
    one would, every rank draws the same, and ``dsmpnn check`` builds the trainer's batches."""
    gc, bg = cfg.graph, cfg.train.batch_graphs
    rng = np.random.default_rng([cfg.train.seed, epoch])
    items = [(k, sample_nodes(n, gc.sample_nodes, rng)) for k, n in enumerate(sizes)
             for _ in range(gc.samples_per_mesh)]
    order = rng.permutation(len(items))
    return [[items[i] for i in order[b:b + bg]] for b in range(0, len(order), bg)]
