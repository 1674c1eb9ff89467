"""The fused CPU kernels alone, and how ECConv scales from one to two chunk workers.

    python benchmarks/bench_kernels.py [--degree 25] [--hidden 64] [--channels 32] [--edges 8192]
    python benchmarks/bench_kernels.py --activations

1. One chunk of sources of equal out-degree d, targets near each other as in a locality-ordered plan (within 64
   rows of the source's slot; ``--random-targets``: at random rows of the output), one thread: GFLOP/s of one
   fused forward pass (kernel MLP 3 -> K with ReLU, Q = x W, the scattered products) and one fused backward pass
   (all the adjoints; h and Q recomputed but not counted), both ``dsmpnn.nn.kernels.native.FusedPass``, against
   torch.bmm on the [d, K+1] x [K+1, C] products alone and a 2048^3 dense matmul.
2. The issue-5 reference ECConv (20,000 nodes, r = 0.02, C = 32, H = 64) forward + backward with 1 and 2 chunk
   workers, interleaved rounds: min and median seconds and the 2-worker speed-up, next to the dense matmul's
   speed-up from 1 to 2 threads.

``--activations`` instead times that ECConv with a ReLU, GELU and SiLU kernel MLP, the MLP evaluated inside the
fused kernels or by PyTorch per chunk.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from dsmpnn.bench.conv import _nnconv
from dsmpnn.graph import build_graph
from dsmpnn.nn import ECConv, RowwiseKernel
from dsmpnn.nn.kernels import chunk_pool, native


def _rate(fn, flops: float, calls: int = 30) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    return flops * calls / (time.perf_counter() - t) / 1e9


def kernel_rates(degree: int, hidden: int, channels: int, edges: int, random_targets: bool = False) -> dict:
    """GFLOP/s of the fused forward and backward of one chunk, one thread, against torch.bmm and a dense matmul."""
    kern = native.kernels()
    if kern is None:
        raise SystemExit("the fused CPU kernels are not available here (see the warning above)")
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    n, k, c, cin, f = edges // degree, hidden, channels, channels, 3
    e, k1, num_nodes = n * degree, k + 1, 20_000
    deg = torch.full((n,), degree, dtype=torch.long)
    nodes = torch.randperm(num_nodes, generator=gen)[:n]
    # targets within 64 rows of the source's slot, so that consecutive sources share targets as in a
    # locality-ordered plan; or random rows of [20000, C]
    near = torch.arange(n).repeat_interleave(degree) + torch.randint(-64, 65, (e,), generator=gen)
    dst = torch.randint(0, num_nodes, (e,), generator=gen) if random_targets else near % num_nodes
    x, wq = torch.randn(num_nodes, cin, generator=gen), torch.randn(cin, k1, c, generator=gen)
    layers = [native.Layer(torch.randn(k, f, generator=gen), torch.randn(k, generator=gen), "relu")]
    feats, rows = torch.randn(e, f, generator=gen), torch.arange(e)
    out, g = torch.zeros(num_nodes, c), torch.randn(num_nodes, c, generator=gen)
    gx, gw = torch.zeros(num_nodes, cin), torch.zeros(cin, k1 * c)
    glw, glb = [torch.zeros(f, k)], [torch.zeros(k)]
    fwd = native.FusedPass(kern, x, wq, k, layers, out=out)
    bwd = native.FusedPass(kern, x, wq, k, layers, g=g, gx=gx, gw=gw, glw=glw, glb=glb, need_dh=True)
    mlp, nodes_q, msg = 2.0 * e * f * k, 2.0 * n * cin * k1 * c, 2.0 * e * k * c
    h, q = torch.randn(e, k1, generator=gen), torch.randn(n, k1, c, generator=gen)
    a = torch.randn(2048, 2048, generator=gen)
    return {
        # counted as in dsmpnn.bench.conv.ecconv_flops: backward without the recomputation of h and Q, and
        # without dL/d(edge attributes) (not asked for, as in the reference case)
        "fused forward pass": _rate(lambda: fwd.chunk(deg, nodes, dst, None, feats, rows), mlp + nodes_q + msg),
        "fused backward pass": _rate(lambda: bwd.chunk(deg, nodes, dst, None, feats, rows), mlp + 2 * (nodes_q + msg)),
        "torch.bmm [d,K+1]x[K+1,C]": _rate(lambda: torch.bmm(h.view(n, degree, k1), q), msg),
        "dense 2048^3": _rate(lambda: a @ a, 2.0 * 2048**3, 5),
    }


def worker_scaling(rounds: int) -> dict:
    nodes = 20_000
    g = build_graph(np.random.default_rng(0).random((nodes, 2)), 0.02, dtype=torch.float32, warn_isolated=False)
    torch.manual_seed(0)
    conv = ECConv.from_pyg(_nnconv(32, 32, 3, 64, "mean"))
    x = torch.randn(nodes, 32, requires_grad=True)
    grad = torch.randn(nodes, 32)
    a = torch.randn(2048, 2048)
    times: dict[int, list[float]] = {1: [], 2: []}
    dense: dict[int, list[float]] = {1: [], 2: []}
    old = chunk_pool.CHUNK_WORKERS
    try:
        for r in range(rounds + 1):
            for w in (1, 2):
                chunk_pool.CHUNK_WORKERS = w
                torch.set_num_threads(w)
                t = time.perf_counter()
                conv(x, g.edge_index, g.edge_attr).backward(grad)
                t1 = time.perf_counter()
                a @ a
                t2 = time.perf_counter()
                if r:  # round 0 warms up
                    times[w].append(t1 - t)
                    dense[w].append(t2 - t1)
    finally:
        chunk_pool.CHUNK_WORKERS = old
    return {"ecconv_min": {w: min(v) for w, v in times.items()},
            "ecconv_median": {w: statistics.median(v) for w, v in times.items()},
            "dense_min": {w: min(v) for w, v in dense.items()}}


def activation_costs(rounds: int) -> dict:
    """ECConv fwd + bwd on the reference case with a ReLU, GELU and SiLU kernel MLP, each with the MLP inside the
    fused kernels and evaluated by PyTorch per chunk (as for activations the kernels do not have): min seconds."""
    nodes = 20_000
    g = build_graph(np.random.default_rng(0).random((nodes, 2)), 0.02, dtype=torch.float32, warn_isolated=False)
    x = torch.randn(nodes, 32, requires_grad=True)
    grad = torch.randn(nodes, 32)
    convs = {act: ECConv(32, 32, 3, (64,), act=act) for act in ("relu", "gelu", "silu")}
    times: dict[tuple[str, str], list[float]] = {}
    native_layers = RowwiseKernel.native_layers
    try:
        for r in range(rounds + 1):
            for where in ("fused", "pytorch"):
                RowwiseKernel.native_layers = native_layers if where == "fused" else (lambda self: None)
                for act, conv in convs.items():
                    t = time.perf_counter()
                    conv(x, g.edge_index, g.edge_attr).backward(grad)
                    if r:  # round 0 warms up
                        times.setdefault((act, where), []).append(time.perf_counter() - t)
    finally:
        RowwiseKernel.native_layers = native_layers
    return {key: min(v) for key, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--degree", type=int, default=25)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--edges", type=int, default=8192)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--skip-scaling", action="store_true", help="only the one-chunk rates")
    p.add_argument("--activations", action="store_true",
                   help="instead: ECConv fwd+bwd with ReLU/GELU/SiLU kernel MLPs, in the kernels or by PyTorch")
    p.add_argument("--random-targets", action="store_true", help="targets at random rows instead of near the source")
    a = p.parse_args()
    if a.activations:
        torch.set_num_threads(2)
        t = activation_costs(a.rounds)
        print(f"ECConv fwd+bwd, reference case, 2 threads, min over {a.rounds} rounds [s]:")
        for act in ("relu", "gelu", "silu"):
            fused, by_torch = t[act, "fused"], t[act, "pytorch"]
            print(f"  {act:5s} MLP in the kernels {fused:.3f}, by PyTorch per chunk {by_torch:.3f} "
                  f"({by_torch / fused:.2f}x); in the kernels, {fused / t['relu', 'fused']:.2f}x the ReLU time")
        return
    order = "random" if a.random_targets else "near the source"
    print(f"one chunk, degree {a.degree}, K = {a.hidden}, C = {a.channels}, {a.edges} edges, targets {order}, "
          "1 thread [GFLOP/s]:")
    for name, rate in kernel_rates(a.degree, a.hidden, a.channels, a.edges, a.random_targets).items():
        print(f"  {name:26s} {rate:6.1f}")
    if a.skip_scaling:
        return
    s = worker_scaling(a.rounds)
    print(f"ECConv fwd+bwd, reference case, {a.rounds} rounds: 1 worker {s['ecconv_min'][1]:.3f} s "
          f"(median {s['ecconv_median'][1]:.3f}), 2 workers {s['ecconv_min'][2]:.3f} s (median "
          f"{s['ecconv_median'][2]:.3f}) -> {s['ecconv_min'][1] / s['ecconv_min'][2]:.2f}x on mins, "
          f"{s['ecconv_median'][1] / s['ecconv_median'][2]:.2f}x on medians; dense 2048^3 matmul 1 -> 2 threads "
          f"{s['dense_min'][1] / s['dense_min'][2]:.2f}x")


if __name__ == "__main__":
    main()
