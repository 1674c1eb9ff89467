"""``dsmpnn check``: one forward + backward as one process and as P ranks; report how far apart they are.

Domain decomposition must not change the result: with the halo exchange, the distributed loss and summed
gradients, the P-rank outputs and parameter gradients equal the single-process ones up to round-off
(relative 1e-10 in float64, 1e-5 in float32). This check runs both on the same sample and says whether they
agree, so a user can trust a partition, a halo width and a machine before a long run.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from dsmpnn.distributed.launch import run_processes
from dsmpnn.distributed.process_group import DistContext
from dsmpnn.distributed.runner import distributed_forward_backward
from dsmpnn.errors import DsmpnnError
from dsmpnn.graph.halo import HaloPlan, build_halo_plans
from dsmpnn.graph.partition import DEFAULT_PARTITION_METHOD, partition, partition_report
from dsmpnn.graph.radius import Graph, build_graph

__all__ = ["check", "max_rel_diff", "TOLERANCE"]

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
"""Largest accepted relative difference between P ranks and one process, per dtype."""


def max_rel_diff(a: torch.Tensor, ref: torch.Tensor) -> float:
    """``max |a - ref| / max |ref|`` (0 when both are zero); the scale is the whole tensor, not each entry."""
    a, ref = a.detach().double().cpu(), ref.detach().double().cpu()
    scale = ref.abs().max().item() if ref.numel() else 0.0
    diff = (a - ref).abs().max().item() if ref.numel() else 0.0
    return diff / scale if scale > 0 else diff


def _rank_forward_backward(ctx: DistContext, model: nn.Module, plans: list[HaloPlan], graph: Graph,
                           x: torch.Tensor, y: torch.Tensor, mode: str) -> dict | None:
    model.zero_grad(set_to_none=True)
    res = distributed_forward_backward(model, plans[ctx.rank], graph, x, y, mode=mode)
    if not ctx.is_main:
        return None
    return {"pred": res.pred, "loss": float(res.loss),
            "grads": {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}}


def check(pos: np.ndarray, x: np.ndarray | torch.Tensor, model: nn.Module | Callable[[], nn.Module],
          nproc: int = 2, method: str = DEFAULT_PARTITION_METHOD, halo_hops: int = 1,
          dtype: torch.dtype = torch.float64, radius: float | None = None, *, y: torch.Tensor | None = None,
          graph: Graph | None = None, max_neighbors: int | None = None, seed: int = 0, mode: str = "all_to_all",
          threads: int = 1) -> dict:
    """Compare one forward + backward (MSE loss) of ``model`` as one process and as ``nproc`` gloo ranks.

    Args:
        pos: [N, d] node positions; x: [N, F] input fields.
        model: a model (copied, not modified) or a factory returning one, with
            ``forward(x, edge_index, edge_attr, exchange=None)``.
        nproc, method, halo_hops: ranks spawned on this machine, partitioner, halo width in hops.
        dtype: float64 (exactness to 1e-10) or float32 (1e-5).
        radius, max_neighbors: the radius graph (or pass ``graph`` built already).
        y: [N, T] targets (default: seeded standard normal).

    Returns a dict: ``passed``, ``tolerance``, ``output_max_rel_diff``, ``grad_max_rel_diff``,
    ``grad_rel_diff`` (per parameter), ``loss_single``/``loss_distributed``, the partition's ``imbalance``,
    ``halo_fraction`` and ``edge_cut``, sizes and seconds.
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
    report = partition_report(owner, ei, nproc, halo_hops, method)

    t0 = time.perf_counter()
    model.zero_grad(set_to_none=True)
    out = model(x, graph.edge_index, graph.edge_attr)  # [N, T]
    if y is None:
        y = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    y = torch.as_tensor(y).to(dtype)
    loss = torch.nn.functional.mse_loss(out, y)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    t1 = time.perf_counter()
    dist_res = run_processes(_rank_forward_backward, nproc, (model, plans, graph, x, y, mode),
                             threads=threads)[0]
    t2 = time.perf_counter()

    grad_diff = {n: max_rel_diff(dist_res["grads"][n], g) if n in dist_res["grads"] else float("inf")
                 for n, g in grads.items()}
    out_diff = max_rel_diff(dist_res["pred"], out)
    tol = TOLERANCE[dtype]
    return {
        "passed": bool(out_diff <= tol and max(grad_diff.values(), default=0.0) <= tol),
        "tolerance": tol, "nproc": nproc, "method": method, "halo_hops": halo_hops, "dtype": str(dtype),
        "num_nodes": graph.num_nodes, "num_edges": graph.num_edges,
        "output_max_rel_diff": out_diff, "grad_max_rel_diff": max(grad_diff.values(), default=0.0),
        "grad_rel_diff": grad_diff, "loss_single": loss.item(), "loss_distributed": dist_res["loss"],
        "imbalance": report.imbalance, "halo_fraction": report.halo_fraction, "edge_cut": report.edge_cut,
        "seconds_single": t1 - t0, "seconds_distributed": t2 - t1,
    }
