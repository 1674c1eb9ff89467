"""One rank's share of a DS graph: built from the whole sampled graph, or from the nodes near its subdomain.

    python benchmarks/bench_local_plan.py [--nodes 1000000] [--ranks 2,4] [--dim 2]

N uniform random points (unit square or cube), ~25 neighbours per node (radius as in ``dsmpnn bench scale``), rcb
partition, halo_hops 1, every node in the graph (full-graph inference). For each P, in a fresh process each:
``build_sampled_plans`` (the whole graph and all P plans, what every rank built before) and ``build_local_plan``
for rank 0 (what a rank builds now): wall time, peak memory (``dsmpnn.bench.measure.peak_memory``: peak RSS above
the start) and the edges held. The two plans are checked equal first, on a 20,000-node cloud.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np
import torch

from dsmpnn.bench.measure import peak_memory
from dsmpnn.graph import build_local_plan, build_sampled_plans, partition


def cloud(nodes: int, dim: int) -> tuple[np.ndarray, float]:
    pos = np.random.default_rng(0).random((nodes, dim))
    radius = (25 / (np.pi * nodes)) ** 0.5 if dim == 2 else (75 / (4 * np.pi * nodes)) ** (1 / 3)
    return pos, radius


def measure(nodes: int, dim: int, ranks: int, local: bool) -> dict:
    pos, radius = cloud(nodes, dim)
    owner = partition(pos, ranks, "rcb")
    ids = np.arange(nodes)
    out: dict = {}

    def build() -> None:
        t = time.perf_counter()
        if local:
            dec = build_local_plan(pos, ids, owner, 0, radius, 1, ranks)
            out["edges"] = int(dec.graph.edge_index.shape[1])
        else:
            dec = build_sampled_plans(pos, ids, owner, radius, 1, ranks, warn_isolated=False)
            out["edges"] = int(dec.graph.num_edges)
        out["seconds"] = time.perf_counter() - t

    peak, how = peak_memory(build)
    return {**out, "peak_mib": peak / 2**20, "memory": how}


def check_equal(dim: int) -> None:
    pos, radius = cloud(20_000, dim)
    owner = partition(pos, 4, "rcb")
    ids = np.arange(20_000)
    whole = build_sampled_plans(pos, ids, owner, radius, 1, 4, warn_isolated=False)
    for p in range(4):
        local = build_local_plan(pos, ids, owner, p, radius, 1, 4)
        assert np.array_equal(local.plan.edge_index, whole.plans[p].edge_index)
        assert torch.equal(local.graph.edge_attr, whole.plans[p].local_graph(whole.graph).edge_attr)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=float, default=1e6)
    p.add_argument("--ranks", default="2,4")
    p.add_argument("--dim", type=int, default=2, choices=(2, 3))
    p.add_argument("--one", nargs=2, metavar=("P", "KIND"), help=argparse.SUPPRESS)  # a child process's job
    a = p.parse_args()
    nodes = int(a.nodes)
    if a.one:
        print(json.dumps(measure(nodes, a.dim, int(a.one[0]), a.one[1] == "local")))
        return
    check_equal(a.dim)
    print(f"{nodes:,} nodes, {a.dim}D, ~25 neighbours, rcb, halo_hops 1; rank 0's share; fresh process each")
    print("| P | built | seconds | peak memory [MiB] | edges held |\n|---|---|---|---|---|")
    for ranks in [int(r) for r in a.ranks.split(",")]:
        for kind in ("whole", "local"):
            run = subprocess.run([sys.executable, __file__, "--nodes", str(nodes), "--dim", str(a.dim), "--one",
                                  str(ranks), kind], capture_output=True, text=True, check=True)
            r = json.loads(run.stdout.strip().splitlines()[-1])
            what = "whole graph, all plans" if kind == "whole" else "rank 0's nodes only"
            print(f"| {ranks} | {what} | {r['seconds']:.2f} | {r['peak_mib']:.0f} | {r['edges']:,} |", flush=True)


if __name__ == "__main__":
    main()
