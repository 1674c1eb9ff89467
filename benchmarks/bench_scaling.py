"""DS-MPNN strong and weak scaling on P = 1, 2, 4 local gloo ranks (CPU), and the halo volume per partitioner.

First a deterministic table of halo volume (rows sent per exchange) for each partitioner and halo width on
uniform 2-D/3-D clouds and a graded 2-D cloud, P = 2, 4, 8: this picks the default partitioner. Then, for every
partitioner and halo width, it times training steps (:func:`dsmpnn.train.step.run_step`, the step ``dsmpnn
train`` runs and ``dsmpnn check`` verifies: forward, distributed loss, backward, gradient all-reduce; then Adam)
of the same MPNN and reports, per step, the slowest rank's wall-clock and CPU seconds (process time, which leaves
out the time a rank waited for a core on a shared host), its compute and halo-exchange seconds,
the bytes all ranks send per message-passing layer and the halo fraction (halo rows / owned rows).

    .venv/bin/python benchmarks/bench_scaling.py                      # defaults below, about 3 minutes on 2 cores
    .venv/bin/python benchmarks/bench_scaling.py --procs 1 2 --methods metis --steps 5 --json out.json

Strong scaling keeps the mesh (``--nodes``) fixed; weak scaling keeps ``--per-rank`` nodes on every rank. Points
are uniform in the unit square with the radius chosen for ``--neighbors`` neighbours on average. Each rank uses
``--threads`` intra-op threads; when P * threads exceeds the cores the ranks share cores and the times mean less
(the output says so).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch
import torch.distributed as dist

from dsmpnn.bench.scale import write_json
from dsmpnn.distributed import DistContext, broadcast_parameters, make_exchange, make_shard, run_processes
from dsmpnn.graph import (PARTITION_METHODS, build_graph, build_halo_plans, partition, partition_report,
                          radius_graph)
from dsmpnn.nn import MPNN
from dsmpnn.train.step import StepGraph, run_step


def problem(n: int, neighbors: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    pos = rng.random((n, 2))
    radius = float(np.sqrt(neighbors / (np.pi * n)))
    x = np.column_stack([np.sin(4 * pos[:, 0]), pos[:, 1], rng.standard_normal(n)])
    y = np.column_stack([np.cos(3 * pos.sum(1)), pos[:, 0] * pos[:, 1]])
    return pos, torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32), radius


def volume_clouds(n: int, seed: int = 0):
    """(name, pos, edge_index) of the meshes of the halo-volume table: uniform 2-D and 3-D clouds with about 16
    and 24 neighbours, and a 2-D cloud graded towards a central body (like a refined airfoil mesh) with a
    16-neighbour cap."""
    rng = np.random.default_rng(seed)
    for name, d, nb in (("uniform 2-D", 2, 16), ("uniform 3-D", 3, 24)):
        pos = rng.random((n, d))
        ball = np.pi if d == 2 else 4 / 3 * np.pi
        yield name, pos, radius_graph(pos, (nb / (ball * n)) ** (1 / d))
    rad, th = rng.random(n) ** 2 * 0.5, rng.random(n) * 2 * np.pi
    pos = np.column_stack([0.5 + rad * np.cos(th), 0.5 + rad * np.sin(th)])
    yield "graded 2-D", pos, radius_graph(pos, 0.02, max_neighbors=16, warn_isolated=False)


def halo_volume_table(n: int, methods, hops, procs) -> dict:
    """Rows sent per exchange (all ranks; each row is C features) for each mesh, P, partitioner and halo width."""
    print(f"\n## Halo volume: rows sent per exchange, all ranks ({n} nodes; deterministic, no timing)\n")
    print("| mesh | P | " + " | ".join(f"{m} k={k}" for m in methods for k in hops) + " |")
    print("|---|---|" + "---|" * (len(methods) * len(hops)))
    totals = {(m, k): 0 for m in methods for k in hops}
    for name, pos, ei in volume_clouds(n):
        for P in procs:
            cells = []
            for m in methods:
                owner = partition(pos, P, m, ei)
                for k in hops:
                    rows = int(partition_report(owner, ei, P, k, m).send_rows.sum())
                    totals[(m, k)] += rows
                    cells.append(str(rows))
            print(f"| {name} | {P} | " + " | ".join(cells) + " |")
    for k in hops:
        best = min(methods, key=lambda m: totals[(m, k)])
        print(f"\n# halo_hops={k}: total rows " + ", ".join(f"{m} {totals[(m, k)]}" for m in methods)
              + f" -> cheapest: {best}")
    return {f"{m}/k{k}": v for (m, k), v in totals.items()}


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def run_config(ctx: DistContext, args, n: int, method: str, hops: int) -> dict:
    """Time ``args.steps`` training steps of one configuration on this rank; return this rank's numbers."""
    pos, x, y, radius = problem(n, args.neighbors)
    graph = build_graph(pos, radius)
    t0 = time.perf_counter()
    owner = partition(pos, ctx.world_size, method, graph.edge_index.numpy())
    plan = build_halo_plans(owner, graph.edge_index, hops)[ctx.rank]
    setup = time.perf_counter() - t0
    torch.manual_seed(0)
    model = MPNN(3, 2, 3, hidden=args.hidden, layers=args.layers, kernel_hidden=(args.kernel_hidden,))
    broadcast_parameters(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    shard = make_shard(plan, graph, x, y)
    graph_step = StepGraph.from_shard(shard, make_exchange(plan) if ctx.world_size > 1 else None)
    step_times, exch_times, cpu_times = [], [], []
    for step in range(args.warmup + args.steps):
        _barrier(ctx.world_size)
        t, c = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        res = run_step(model, [graph_step])  # the training step of dsmpnn train / check
        opt.step()
        dt, dc = time.perf_counter() - t, time.process_time() - c
        if step >= args.warmup:
            step_times.append(dt)
            cpu_times.append(dc)
            exch_times.append(res.stats.exchange_seconds)
    exchanges_per_forward = -(-args.layers // hops)
    return {"owned": plan.num_owned, "halo": plan.num_halo, "edges": plan.num_edges, "setup_s": setup,
            "step_s": float(np.median(step_times)), "step_min_s": float(np.min(step_times)),
            "cpu_s": float(np.median(cpu_times)), "cpu_min_s": float(np.min(cpu_times)),
            "exchange_s": float(np.median(exch_times)),
            "fwd_bytes_per_layer": len(plan.send_rows) * args.hidden * 4 * exchanges_per_forward / args.layers}


def rank_main(ctx: DistContext, args, configs) -> list[dict]:
    return [run_config(ctx, args, *cfg) for cfg in configs]


def summarise(P: int, cfg, per_rank: list[dict], scaling: str) -> dict:
    n, method, hops = cfg
    step = max(r["step_s"] for r in per_rank)  # the slowest rank sets the pace
    step_min = max(r["step_min_s"] for r in per_rank)  # each rank's fastest step, slowest rank
    cpu = max(r["cpu_s"] for r in per_rank)  # CPU seconds of a step (process time: not the waits for a core)
    exch = max(r["exchange_s"] for r in per_rank)
    owned, halo = sum(r["owned"] for r in per_rank), sum(r["halo"] for r in per_rank)
    return {"scaling": scaling, "P": P, "nodes": n, "method": method, "halo_hops": hops, "step_s": step,
            "step_min_s": step_min, "cpu_s": cpu, "cpu_min_s": max(r["cpu_min_s"] for r in per_rank),
            "compute_s": step - exch, "exchange_s": exch,
            "kb_per_layer": sum(r["fwd_bytes_per_layer"] for r in per_rank) / 1024,
            "halo_fraction": halo / owned, "imbalance": max(r["owned"] for r in per_rank) / (owned / P),
            "setup_s": max(r["setup_s"] for r in per_rank)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4], help="rank counts P (default 1 2 4)")
    ap.add_argument("--methods", nargs="+", default=list(PARTITION_METHODS), choices=PARTITION_METHODS)
    ap.add_argument("--hops", type=int, nargs="+", default=[1, 2], help="halo widths in graph hops (default 1 2)")
    ap.add_argument("--nodes", type=int, default=8000, help="strong scaling: mesh nodes (default 8000)")
    ap.add_argument("--per-rank", type=int, default=3000, help="weak scaling: nodes per rank (default 3000)")
    ap.add_argument("--neighbors", type=float, default=16, help="mean neighbours per node (default 16)")
    ap.add_argument("--hidden", type=int, default=32, help="node features C (default 32)")
    ap.add_argument("--kernel-hidden", type=int, default=32, help="kernel MLP width H (default 32)")
    ap.add_argument("--layers", type=int, default=4, help="message-passing layers (default 4)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per configuration (median; default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per rank (default 1)")
    ap.add_argument("--volume-nodes", type=int, default=20000,
                    help="nodes of the meshes of the halo-volume table (default 20000; 0 skips it)")
    ap.add_argument("--volume-procs", type=int, nargs="+", default=[2, 4, 8],
                    help="P of the halo-volume table (default 2 4 8)")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    args = ap.parse_args(argv)

    cores = os.cpu_count() or 1
    print(f"# DS-MPNN scaling: {platform.node()} ({platform.processor() or platform.machine()}), {cores} cores, "
          f"torch {torch.__version__}, gloo on CPU, {args.threads} thread(s) per rank")
    print(f"# MPNN hidden={args.hidden}, kernel_hidden={args.kernel_hidden}, layers={args.layers}; 2-D uniform "
          f"points, {args.neighbors:g} neighbours per node; times are per training step, slowest rank, median of "
          f"{args.steps}")
    volume = halo_volume_table(args.volume_nodes, args.methods, args.hops, args.volume_procs) \
        if args.volume_nodes else {}
    print("\n## Training step times\n")
    rows = []
    for P in args.procs:
        if P * args.threads > cores:
            print(f"# note: P={P} x {args.threads} thread(s) oversubscribes the {cores} cores of this machine: "
                  "ranks share cores, so compute times do not drop with P here")
        hops = [1] if P == 1 else args.hops
        methods = ["slab"] if P == 1 else args.methods  # one rank: no partition, no halo
        configs, kinds = [], []
        for scaling, n in (("strong", args.nodes), ("weak", args.per_rank * P)):
            for method in methods:
                for k in hops:
                    configs.append((n, method, k))
                    kinds.append(scaling)
        t = time.perf_counter()
        per_rank = run_processes(rank_main, P, (args, configs), threads=args.threads, timeout_s=1800)
        print(f"# P={P}: {len(configs)} configurations in {time.perf_counter() - t:.0f} s")
        rows += [summarise(P, cfg, [r[i] for r in per_rank], kind) for i, (cfg, kind) in
                 enumerate(zip(configs, kinds))]

    print("\n| scaling | P | nodes | partitioner | halo_hops | step s | CPU s | compute s | exchange s | KiB sent/layer "
          "| halo fraction | imbalance |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["scaling"] != "strong", r["P"], r["method"], r["halo_hops"])):
        print(f"| {r['scaling']} | {r['P']} | {r['nodes']} | {r['method'] if r['P'] > 1 else '-'} | "
              f"{r['halo_hops'] if r['P'] > 1 else '-'} | {r['step_s']:.3f} | {r['cpu_s']:.3f} | {r['compute_s']:.3f} | "
              f"{r['exchange_s']:.3f} | {r['kb_per_layer']:.1f} | {r['halo_fraction']:.3f} | {r['imbalance']:.3f} |")
    if args.json:
        write_json({"args": vars(args), "halo_volume_rows": volume, "rows": rows}, args.json)


if __name__ == "__main__":
    main()
