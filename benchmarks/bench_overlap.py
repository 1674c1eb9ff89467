"""The halo exchange overlapped with computation (``distributed.overlap_comm``) against the blocking exchange and a
compute-only step, on P local gloo ranks (CPU).

A Darcy-like mesh (a regular ``--grid`` x ``--grid`` grid on the unit square, 128 x 128 by default), one Nyström
sample of ``--sample`` nodes (4096), its radius graph (``--radius``), the mesh partitioned as ``dsmpnn train`` does
(``--partition``, METIS by default, on the whole mesh's radius graph) and each rank's part of the sampled graph built
by :func:`dsmpnn.graph.build_local_plan`. The model is configs/darcy.yaml's MPNN (hidden 32, 4 layers, kernel MLP
[32], encoder and decoder [64], GELU). Each round times one step of each mode, in an order that rotates from round
to round, every step being the one of ``dsmpnn train`` (:func:`dsmpnn.train.step.run_step`: forward, owned-node
loss, backward, gradient all-reduce; no optimizer step):

- ``overlap``: the exchange overlapped with the interior edges' work (forward and backward);
- ``blocking``: each exchange waited for before the layer;
- ``split``: the overlapped layers (two passes per layer: interior and boundary edges) with no exchange: the cost of
  the split alone;
- ``compute``: no halo exchange at all (the same local graph and model; the halo rows keep their stale values),
  the gradient all-reduce still included: the step's time without the halo exchange.

A step's time is the slowest rank's; the table gives the median over rounds and the median of the per-round ratios
to ``compute``. With P ranks sharing fewer than P + (gloo threads) cores, communication and computation compete for
the cores and the times mean less (the output says so)::

    .venv/bin/python benchmarks/bench_overlap.py                       # P=2, 128^2 grid, m=4096, about 2 minutes
    .venv/bin/python benchmarks/bench_overlap.py --rounds 30 --radius 0.05 --hops 2 --json out.json
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
from dsmpnn.distributed import (EXCHANGE_MODES, DistContext, ExchangeStats, LocalShard, broadcast_parameters,
                                make_exchange, run_processes)
from dsmpnn.graph import PARTITION_METHODS, build_local_plan, sample_nodes
from dsmpnn.nn import MPNN
from dsmpnn.train.sharding import partition_mesh
from dsmpnn.train.step import StepGraph, run_step

MODES = ("overlap", "blocking", "split", "compute")


class NoExchange:
    """The overlapped layers (edges split into interior and boundary, two passes per layer) without any exchange:
    what the split itself costs."""

    def __init__(self, first_halo_row: int) -> None:
        self.first_halo_row, self.stats = first_halo_row, ExchangeStats()

    def start(self, h: torch.Tensor, layer: int) -> None:
        return None

    def finish(self, h: torch.Tensor, handle: None) -> torch.Tensor:
        return h


def darcy_like(grid: int, seed: int = 0) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """pos [grid^2, 2] on the unit square, x [grid^2, 3] (a coefficient field and the position), y [grid^2, 1]."""
    h = 1.0 / (grid - 1)
    pos = np.stack(np.meshgrid(np.arange(grid) * h, np.arange(grid) * h, indexing="ij"), -1).reshape(-1, 2)
    rng = np.random.default_rng(seed)
    coeff = np.where(np.sin(7 * pos[:, 0]) * np.cos(5 * pos[:, 1]) + 0.3 * rng.standard_normal(len(pos)) > 0, 12, 3)
    x = np.column_stack([coeff, pos])
    y = (np.sin(np.pi * pos[:, 0]) * np.sin(np.pi * pos[:, 1]) / coeff)[:, None]
    return pos, torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)


def local_shard(ctx: DistContext, args) -> LocalShard:
    """This rank's part of the sampled graph, as the DS trainer builds it."""
    pos, x, y = darcy_like(args.grid)
    owner = partition_mesh(pos, ctx.world_size, args.partition, args.radius, None)
    ids = sample_nodes(len(pos), args.sample, np.random.default_rng(args.seed))
    dec = build_local_plan(pos, ids, owner, ctx.rank, args.radius, args.hops, ctx.world_size)
    rows = torch.from_numpy(dec.sample_ids[dec.plan.owned])
    return LocalShard.from_owned(dec.plan, x[rows], dec.graph.edge_attr, y[rows])


def rank_main(ctx: DistContext, args) -> dict:
    """Per round, this rank's seconds for one step of each mode."""
    shard = local_shard(ctx, args)
    torch.manual_seed(0)
    model = MPNN(3, 1, 3, hidden=32, layers=4, kernel_hidden=(32,), encoder_hidden=(64,), decoder_hidden=(64,),
                 act="gelu")
    broadcast_parameters(model)
    graphs = {"overlap": StepGraph.from_shard(shard, make_exchange(shard.plan, mode=args.mode, overlap=True)),
              "blocking": StepGraph.from_shard(shard, make_exchange(shard.plan, mode=args.mode, overlap=False)),
              "split": StepGraph.from_shard(shard, NoExchange(shard.plan.num_owned)),
              "compute": StepGraph.from_shard(shard, None)}
    times = {m: [] for m in MODES}
    exposed = {m: [] for m in MODES}
    for r in range(args.warmup + args.rounds):
        for k in range(len(MODES)):
            mode = MODES[(r + k) % len(MODES)]
            dist.barrier()
            model.zero_grad(set_to_none=True)
            t = time.perf_counter()
            res = run_step(model, [graphs[mode]])
            dt = time.perf_counter() - t
            if r >= args.warmup:
                times[mode].append(dt)
                exposed[mode].append(res.stats.exchange_seconds)
    plan = shard.plan
    interior = int((plan.edge_index[0] < plan.num_owned).sum())
    return {"times": times, "exchange_s": exposed, "owned": plan.num_owned, "halo": plan.num_halo,
            "edges": plan.num_edges, "interior_edges": interior}


def summarise(per_rank: list[dict]) -> dict:
    """Per mode: the slowest rank's time per round, its median, and the median per-round ratio to compute."""
    slowest = {m: np.max([r["times"][m] for r in per_rank], axis=0) for m in MODES}  # [rounds]
    out = {}
    for m in MODES:
        out[m] = {"median_s": float(np.median(slowest[m])), "min_s": float(np.min(slowest[m])),
                  "ratio_to_compute": float(np.median(slowest[m] / slowest["compute"])),
                  "exchange_s": float(np.median(np.max([r["exchange_s"][m] for r in per_rank], axis=0)))}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--procs", type=int, default=2, help="ranks P (default 2)")
    ap.add_argument("--grid", type=int, default=128, help="mesh: grid x grid nodes on the unit square (default 128)")
    ap.add_argument("--sample", type=int, default=4096, help="Nyström sample m (default 4096)")
    ap.add_argument("--radius", type=float, default=0.035,
                    help="graph radius (default 0.035: about 16 neighbours at m = 4096, as configs/darcy.yaml's 0.1 "
                         "at its m = 512 on 64^2)")
    ap.add_argument("--partition", choices=PARTITION_METHODS, default="metis", help="partitioner (default metis)")
    ap.add_argument("--hops", type=int, default=1, help="halo_hops (default 1)")
    ap.add_argument("--mode", choices=EXCHANGE_MODES, default="all_to_all", help="the exchange's collectives")
    ap.add_argument("--rounds", type=int, default=15, help="timed rounds, one step of each mode each (default 15)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per rank (default 1)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the Nyström sample (default 0)")
    ap.add_argument("--json", help="also write the per-round times to this JSON file")
    args = ap.parse_args(argv)

    cores = os.cpu_count() or 1
    print(f"# overlap_comm: {platform.node()}, {cores} cores, torch {torch.__version__}, gloo, P={args.procs} x "
          f"{args.threads} thread(s); {args.grid}^2 grid, m={args.sample}, r={args.radius:g}, {args.partition}, "
          f"halo_hops={args.hops}, {args.mode}; {args.rounds} rounds after {args.warmup} warm-up")
    if args.procs * args.threads >= cores:
        print(f"# note: {args.procs} ranks x {args.threads} thread(s) fill the {cores} cores: gloo's threads compete "
              "with the compute threads, so what the overlap hides is partly paid back in compute time")
    t = time.perf_counter()
    per_rank = run_processes(rank_main, args.procs, (args,), threads=args.threads, timeout_s=1800)
    print(f"# {time.perf_counter() - t:.0f} s")
    for p, r in enumerate(per_rank):
        print(f"# rank {p}: {r['owned']} owned, {r['halo']} halo rows, {r['edges']} edges "
              f"({r['interior_edges'] / max(r['edges'], 1):.1%} interior)")
    summary = summarise(per_rank)
    print("\n| mode | median step s | min step s | median ratio to compute | median exposed exchange s |")
    print("|---|---|---|---|---|")
    for m in MODES:
        s = summary[m]
        print(f"| {m} | {s['median_s']:.4f} | {s['min_s']:.4f} | {s['ratio_to_compute']:.3f} | "
              f"{s['exchange_s']:.4f} |")
    if args.json:
        write_json({"args": vars(args), "summary": summary, "ranks": per_rank}, args.json)


if __name__ == "__main__":
    main()
