"""``dsmpnn check``: the training step as one process and as P ranks; how far apart they are.

Domain decomposition must not change the result: with the halo exchange, the owned-node loss over the global
target count and the summed gradients, the P-rank outputs and parameter gradients equal the single-process ones
up to round-off (relative 1e-10 in float64, 1e-5 in float32, :data:`~dsmpnn.distributed.TOLERANCE`).

:func:`check_training_step` runs exactly what ``dsmpnn train`` runs: the config's model (seeded by
``train.seed``), the batches of the first optimizer steps of epoch 1 (the same Nyström samples,
:func:`~dsmpnn.train.step.epoch_batches`), built by the trainer's strategies (:mod:`dsmpnn.train.strategy`:
the joined batch in one process; each rank's part of every sampled graph with the config's ``halo_hops`` or
geometric ``overlap``, ``graph.max_neighbors`` cap, partitioner and ``overlap_comm`` on P ranks) and run by the one
step function :func:`~dsmpnn.train.step.run_step`. :func:`check` does the same for a graph given as arrays.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dsmpnn.data.dataset import Dataset
from dsmpnn.distributed import (TOLERANCE, DistContext, broadcast_parameters, make_exchange, make_shard,
                                max_rel_diff, run_processes)
from dsmpnn.errors import DatasetError, DsmpnnError
from dsmpnn.graph import Graph, build_graph, build_halo_plans, partition, partition_report
from dsmpnn.graph.partition import DEFAULT_PARTITION_METHOD
from dsmpnn.train.config import Config
from dsmpnn.train.factory import build_model
from dsmpnn.train.features import FeatureMap
from dsmpnn.train.prefetch import prefetched, use_prefetch
from dsmpnn.train.sharding import check_nproc
from dsmpnn.train.step import StepGraph, StepResult, epoch_batches, run_step
from dsmpnn.train.strategy import check_decomposable, make_strategy

__all__ = ["check", "check_training_step", "format_check", "TOLERANCE", "max_rel_diff"]


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone().cpu() for n, p in model.named_parameters() if p.grad is not None}


def _record(res: StepResult, model: nn.Module, main: bool) -> dict:
    """What a rank reports of one step: its statistics always; outputs, loss and gradients (rank 0 and, for the
    agreement of the ranks, gradients everywhere)."""
    s = res.stats
    return {"loss": res.loss, "outputs": res.outputs.cpu() if main and res.outputs is not None else None,
            "grads": _grads(model), "owned": s.owned_rows, "halo": s.halo_rows, "edges": s.edges,
            "exchange_bytes": s.exchange_bytes, "exchange_seconds": s.exchange_seconds, "seconds": s.seconds,
            "isolated": res.graph_stats.isolated}


def _compare(ref: list[dict], ranks: list[list[dict]], dtype: torch.dtype) -> dict:
    """The report of :func:`check` / :func:`check_training_step` from the single-process records ``ref`` (one per
    step) and every rank's records ``ranks[p]``."""
    tol = TOLERANCE[dtype]
    main = ranks[0]
    out_diff = max(max_rel_diff(d["outputs"], r["outputs"]) for d, r in zip(main, ref))
    names = list(ref[0]["grads"])
    grad_diff = {n: max(max_rel_diff(d["grads"][n], r["grads"][n]) if n in d["grads"] else float("inf")
                        for d, r in zip(main, ref)) for n in names}
    # after the SUM all-reduce every rank must hold the same gradient and loss (else the ranks drift apart)
    rank_diff = max((max_rel_diff(other[k]["grads"][n], main[k]["grads"][n]) for other in ranks[1:]
                     for k in range(len(ref)) for n in names), default=0.0)
    same_loss = all(other[k]["loss"] == main[k]["loss"] for other in ranks[1:] for k in range(len(ref)))
    owned = np.array([sum(r["owned"] for r in rank) for rank in ranks], dtype=np.float64)
    halo = sum(r["halo"] for rank in ranks for r in rank)
    worst_grad = max(grad_diff.values(), default=0.0)
    return {
        "passed": bool(out_diff <= tol and worst_grad <= tol and rank_diff <= tol and same_loss),
        "tolerance": tol, "nproc": len(ranks), "dtype": str(dtype), "steps": len(ref),
        "output_max_rel_diff": out_diff, "grad_max_rel_diff": worst_grad, "grad_rel_diff": grad_diff,
        "ranks_max_rel_diff": rank_diff, "ranks_same_loss": same_loss,
        "loss_single": [r["loss"] for r in ref], "loss_distributed": [d["loss"] for d in main],
        "num_nodes": int(sum(r["owned"] for r in ref)), "num_edges": int(sum(r["edges"] for r in ref)),
        "imbalance": float(owned.max() / owned.mean()) if owned.mean() > 0 else 1.0,
        "halo_fraction": float(halo / owned.sum()) if owned.sum() > 0 else 0.0,
        "exchange_bytes": int(sum(r["exchange_bytes"] for rank in ranks for r in rank)),
        "seconds_single": sum(r["seconds"] for r in ref),
        "seconds_distributed": max(sum(r["seconds"] for r in rank) for rank in ranks),
    }


# --- the training step of a config and dataset ------------------------------------------------------------------


def _first_batches(data: Dataset, cfg: Config, split: str, steps: int) -> tuple[list[int], list[list[tuple]]]:
    """The meshes (numbers in ``split``) the first ``steps`` steps of epoch 1 use, and those steps as lists of
    (position in that mesh list, node ids)."""
    files = data.split(split)
    if not files:
        raise DatasetError(f"{data.root / 'manifest.json'}: split '{split}' is empty")
    batches = epoch_batches([data.num_nodes(f) for f in files], cfg, 1)[:steps]
    used = sorted({k for batch in batches for k, _ in batch})
    where = {k: i for i, k in enumerate(used)}
    return used, [[(where[k], ids) for k, ids in batch] for batch in batches]


def _run_steps(ctx: DistContext, data_dir: str, cfg: Config, dtype_name: str, split: str, steps: int,
               state: dict) -> list[dict]:
    """The first ``steps`` training steps of epoch 1 from the parameters ``state``, each from those parameters
    (no optimizer step between them), with the strategy the trainer would use in this process group."""
    dtype = getattr(torch, dtype_name)
    data = Dataset(data_dir)
    fmap = FeatureMap.from_config(data.manifest, cfg)
    strategy = make_strategy(ctx, cfg, fmap, dtype, ctx.device)
    model = build_model(cfg.model, fmap).to(dtype).to(ctx.device)
    model.load_state_dict(state)
    strategy.broadcast(model)
    model.train()
    used, batches = _first_batches(data, cfg, split, steps)
    meshes = strategy.load(data, split, only=used)
    step_items = [[(meshes[i], ids) for i, ids in batch] for batch in batches]
    out = []
    ahead = use_prefetch(cfg.train.prefetch, torch.device(ctx.device))
    for prepared in prefetched(strategy.prepare, step_items, ahead):  # as the trainer does
        model.zero_grad(set_to_none=True)
        res = strategy.step(model, prepared, gather=True)
        out.append(_record(res, model, strategy.is_main))
    return out


def check_training_step(data_dir: str | Path, cfg: Config, nproc: int, dtype: torch.dtype = torch.float64,
                        split: str = "train", steps: int = 1, threads: int = 1) -> dict:
    """The first ``steps`` optimizer steps of epoch 1 of ``dsmpnn train`` with ``cfg`` on the meshes of
    ``split`` (forward, loss, backward, gradient all-reduce; each from the initial parameters), as one process
    and as ``nproc`` local gloo ranks (``cfg.distributed``: partitioner, halo_hops or overlap), in ``dtype``;
    the graphs are built as the trainer builds them (``train.prefetch``), and the ranks verify their halo plans'
    counts before every exchange.

    Returns a dict: ``passed`` (outputs, every parameter gradient and the agreement of the ranks within
    ``tolerance``), ``output_max_rel_diff``, ``grad_rel_diff`` (per parameter), ``grad_max_rel_diff``,
    ``ranks_max_rel_diff`` (rank p's gradient against rank 0's), ``loss_single``/``loss_distributed`` (per step),
    the batch (``meshes``, ``graphs``, ``num_nodes``, ``num_edges``), the decomposition (``imbalance`` of owned
    rows, ``halo_fraction``, ``exchange_bytes`` of all ranks) and seconds.
    """
    if dtype not in TOLERANCE:
        raise DsmpnnError(f"dtype must be torch.float64 or torch.float32, got {dtype}")
    check_decomposable(cfg, nproc)
    cfg = dataclasses.replace(cfg, distributed=dataclasses.replace(cfg.distributed, verify_exchange=True))
    data = Dataset(data_dir)
    used, batches = _first_batches(data, cfg, split, steps)
    files = data.split(split)
    check_nproc(nproc, [(Path(files[k]).stem, data.num_nodes(files[k])) for k in used])
    fmap = FeatureMap.from_config(data.manifest, cfg)
    torch.manual_seed(cfg.train.seed)  # the trainer's initial parameters
    state = build_model(cfg.model, fmap).to(dtype).state_dict()
    name = str(dtype).replace("torch.", "")
    ref = _run_steps(DistContext(), str(data_dir), cfg, name, split, steps, state)
    ranks = run_processes(_run_steps, nproc, (str(data_dir), cfg, name, split, steps, state), threads=threads)
    report = _compare(ref, ranks, dtype)
    dc = cfg.distributed
    report.update(method=dc.partition, halo_hops=dc.halo_hops, overlap=dc.overlap, overlap_comm=dc.overlap_comm,
                  max_neighbors=cfg.graph.max_neighbors, graphs=sum(len(b) for b in batches),
                  meshes=[Path(files[k]).stem for k in used], split=split,
                  subject=f"{len(batches)} training step(s) of epoch 1: {sum(len(b) for b in batches)} sampled "
                          f"graph(s) of {cfg.graph.sample_nodes} nodes from {len(used)} mesh(es) of split "
                          f"'{split}'")
    return report


# --- a graph given as arrays ------------------------------------------------------------------------------------


def _run_graph(ctx: DistContext, model: nn.Module, plans: list, graph: Graph, x: torch.Tensor, y: torch.Tensor,
               mode: str, overlap_comm: bool) -> list[dict]:
    broadcast_parameters(model)
    model.zero_grad(set_to_none=True)
    plan = plans[ctx.rank]
    shard = make_shard(plan, graph, x, y)
    exchange = make_exchange(plan, mode=mode, overlap=overlap_comm)
    res = run_step(model, [StepGraph.from_shard(shard, exchange)], gather=True)
    return [_record(res, model, ctx.is_main)]


def check(pos: np.ndarray, x: np.ndarray | torch.Tensor, model: nn.Module | Callable[[], nn.Module],
          nproc: int = 2, method: str = DEFAULT_PARTITION_METHOD, halo_hops: int = 1,
          dtype: torch.dtype = torch.float64, radius: float | None = None, *, y: torch.Tensor | None = None,
          graph: Graph | None = None, max_neighbors: int | None = None, seed: int = 0, mode: str = "all_to_all",
          threads: int = 1, overlap_comm: bool = False) -> dict:
    """Compare one step (:func:`~dsmpnn.train.step.run_step`: forward, MSE, backward) of ``model`` on one graph as
    one process and as ``nproc`` gloo ranks.

    Args:
        pos: [N, d] node positions; x: [N, F] input fields.
        model: a model (copied, not modified) or a factory returning one, with
            ``forward(x, edge_index, edge_attr, exchange=None)``.
        nproc, method, halo_hops: ranks spawned on this machine, partitioner, halo width in hops.
        dtype: float64 (exactness to 1e-10) or float32 (1e-5).
        radius, max_neighbors: the radius graph (or pass ``graph`` built already).
        y: [N, T] targets (default: seeded standard normal).
        mode, overlap_comm: the halo exchange's collectives and whether it overlaps the layers' work.

    Returns the report of :func:`check_training_step` (one step) plus the partition's ``edge_cut``.
    """
    if dtype not in TOLERANCE:
        raise DsmpnnError(f"dtype must be torch.float64 or torch.float32, got {dtype}")
    model = copy.deepcopy(model if isinstance(model, nn.Module) else model()).to(dtype)
    pos = np.asarray(pos, dtype=np.float64)
    if graph is None:
        if radius is None:
            raise DsmpnnError("check needs the graph radius (or a graph)")
        graph = build_graph(pos, radius, max_neighbors, dtype=dtype)
    graph = Graph(graph.edge_index, graph.edge_attr.to(dtype), graph.num_nodes)
    x = torch.as_tensor(x).to(dtype)
    if x.shape[0] != graph.num_nodes or len(pos) != graph.num_nodes:
        raise DsmpnnError(f"pos has {len(pos)} rows and x {x.shape[0]}, the graph {graph.num_nodes} nodes")
    ei = graph.edge_index.numpy()
    owner = partition(pos, nproc, method, ei, seed)
    plans = build_halo_plans(owner, ei, halo_hops, nproc)
    # before spawning: passing graph to the ranks moves its tensors to shared memory, and ei views the old storage
    edge_cut = partition_report(owner, ei, nproc, halo_hops, method).edge_cut
    if y is None:
        with torch.no_grad():
            shape = model(x, graph.edge_index, graph.edge_attr).shape
        y = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    y = torch.as_tensor(y).to(dtype)
    t = time.perf_counter()
    model.zero_grad(set_to_none=True)
    ref = [_record(run_step(model, [StepGraph(x, graph.edge_index, graph.edge_attr, y)], gather=True), model, True)]
    model.zero_grad(set_to_none=True)
    ranks = run_processes(_run_graph, nproc, (model, plans, graph, x, y, mode, overlap_comm), threads=threads)
    report = _compare(ref, ranks, dtype)
    report.update(method=method, halo_hops=halo_hops, overlap=None, overlap_comm=overlap_comm,
                  max_neighbors=max_neighbors, edge_cut=edge_cut, loss_single=ref[0]["loss"],
                  loss_distributed=ranks[0][0]["loss"], seconds_total=time.perf_counter() - t,
                  subject=f"graph of {graph.num_nodes} nodes, {graph.num_edges} edges")
    return report


def format_check(rep: dict) -> str:
    """The check report as a table: one row for the outputs, one per parameter gradient, then the verdict."""
    rows = [("outputs", rep["output_max_rel_diff"])] + [(f"grad {n}", d) for n, d in rep["grad_rel_diff"].items()]
    width = max(len(n) for n, _ in rows)
    tol = rep["tolerance"]
    how = f"overlap {rep['overlap']:g}" if rep.get("overlap") is not None else f"halo_hops {rep['halo_hops']}"
    cap = f", max_neighbors {rep['max_neighbors']}" if rep.get("max_neighbors") is not None else ""
    lines = [f"{rep['subject']}: {rep['num_nodes']} nodes, {rep['num_edges']} edges{cap}",
             f"{rep['nproc']} ranks, {rep['method']}, {how}, {rep['dtype'].replace('torch.', '')}, "
             f"{'overlapped' if rep.get('overlap_comm') else 'blocking'} halo exchange; imbalance "
             f"{rep['imbalance']:.3f}, halo fraction {rep['halo_fraction']:.3f}, halo exchange "
             f"{rep['exchange_bytes'] / 1024:.1f} KiB (all ranks)",
             f"{'quantity':<{width}}  max rel diff", f"{'-' * width}  ------------"]
    lines += [f"{n:<{width}}  {d:12.3e}{'' if d <= tol else '  > tolerance'}" for n, d in rows]
    worst = max(d for _, d in rows)
    single, dist = rep["loss_single"], rep["loss_distributed"]
    single, dist = (single if isinstance(single, list) else [single]), (dist if isinstance(dist, list) else [dist])
    lines.append("loss: one process " + ", ".join(f"{v:.10g}" for v in single) + f"; {rep['nproc']} ranks "
                 + ", ".join(f"{v:.10g}" for v in dist))
    if not rep["ranks_same_loss"] or rep["ranks_max_rel_diff"] > tol:
        lines.append(f"ranks disagree after the all-reduce: gradients differ by {rep['ranks_max_rel_diff']:.3e}, "
                     f"same loss: {rep['ranks_same_loss']}")
    lines.append(f"{'PASSED' if rep['passed'] else 'FAILED'}: largest relative difference {worst:.3e} "
                 f"{'<=' if rep['passed'] else '>'} tolerance {tol:g}")
    return "\n".join(lines)
