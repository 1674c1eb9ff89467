"""The per-rank program of tests/test_devices.py's process-group case (module level, so spawned ranks import it):
float32 on the rank's device (CUDA under NCCL), against one float64 process on the CPU."""

from __future__ import annotations

import torch

from dsmpnn.distributed import DistContext, broadcast_parameters, make_exchange, make_shard
from dsmpnn.graph import build_halo_plans, partition
from dsmpnn.train.step import StepGraph, run_step
from tests.distributed.workers import case_graph, model_for, single_process

PROBLEM = "cloud2d"


def reference() -> dict:
    """One process, float64, CPU: prediction, loss and gradients (MSE against y)."""
    pos, x, y, graph = case_graph(PROBLEM, torch.float64)
    return single_process(model_for(2, torch.float64), graph, x, y)


def exchange_case(ctx: DistContext) -> dict | None:
    """Forward + MSE backward + gradient all-reduce + gather of the prediction, halo_hops 1 (an exchange before
    every layer), in both exchange modes; tensors on ``ctx.device``. Rank 0 returns CPU copies and counters."""
    pos, x, y, graph = case_graph(PROBLEM, torch.float64)
    plan = build_halo_plans(partition(pos, ctx.world_size, "rcb"), graph.edge_index, 1)[ctx.rank]
    out = {}
    for mode in ("all_to_all", "p2p"):
        model = model_for(2, torch.float64).float().to(ctx.device)
        broadcast_parameters(model)
        shard = make_shard(plan, graph, x, y, device=ctx.device, dtype=torch.float32)
        exchange = make_exchange(plan, mode=mode)
        res = run_step(model, [StepGraph.from_shard(shard, exchange)], gather=True)
        pred_all = res.outputs
        out[mode] = {"device": shard.x.device.type, "exchanges": exchange.stats.calls,
                     "rows_sent": exchange.stats.rows_sent, "loss": res.loss,
                     "pred": None if pred_all is None else pred_all.cpu(),
                     "grads": {n: p.grad.cpu() for n, p in model.named_parameters()}}
    return out if ctx.is_main else None
