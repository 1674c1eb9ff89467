r"""Measurements and assumptions behind the DS-MPNN scaling model (:mod:`dsmpnn.bench.scaling_model`), the
predictions to P = 1024, all as one JSON-able result (its tables and plot: :mod:`dsmpnn.bench.scaling_report`).

What is measured on this machine (one thread per process throughout):

- **ECConv** forward + backward at a few (N, degree) (:func:`measure_ecconv`) -> per-edge, per-node and per-call
  costs :math:`t_e, t_n, t_0` (:func:`fit_cpu_costs`, weighted non-negative least squares); the whole MPNN
  training step (encoder, L layers, decoder, loss, backward, Adam; :func:`measure_mpnn_step`) at a few N -> the
  per-node cost of everything outside the layers :math:`t_r` and the per-step constant :math:`t_s`.
- **The halo exchange over gloo** between two processes (:func:`measure_exchange`): the library's
  :class:`~dsmpnn.distributed.HaloExchange` (``apply_forward``: gather, send, receive, scatter) on a two-rank plan
  moving 1 KB..64 MB each way, both modes -> :math:`\alpha, \beta` (:func:`~dsmpnn.bench.scaling_model.fit_alpha_beta`).
- **Halo volumes of real partitions** (:func:`survey_partitions`): uniform random clouds in the unit square / cube
  with the radius graph of ``neighbors`` neighbours per node, split by the library's partitioners into P = 2..1024,
  loads per rank counted by :func:`~dsmpnn.bench.scaling_model.rank_loads`.

What is assumed (GPU; :func:`gpu_machine`): FLOP counts of the factorised ECConv
(:func:`~dsmpnn.bench.conv.ecconv_flops`) at an effective throughput, fixed per-layer and per-step overheads, and
published NVLink / InfiniBand / NCCL numbers; see :data:`GPU_ASSUMPTIONS`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dsmpnn.bench.scaling_model import (POWERS_OF_TWO, ComputeCosts, Link, Machine, Network, RankLoads,
                                        StepPrediction, crossover, efficiency, extrapolate_loads, fit_alpha_beta,
                                        fit_linear_costs, fit_power_law, predict_step, rank_loads,
                                        single_rank_loads, surface_exponent)

__all__ = ["measure_exchange", "measure_ecconv", "measure_mpnn_step", "fit_cpu_costs", "cpu_machine", "gpu_machine",
           "model_flops", "mpnn_parameters", "survey_partitions", "law_fits", "loads_for", "predict_scenarios",
           "compare_measured", "run_scaling_model", "MeshSpec", "DEFAULT_MESHES",
           "GPU_ASSUMPTIONS", "EXCHANGE_SIZES", "QUICK_RUN", "NEIGHBORS", "save_survey", "load_survey"]

EXCHANGE_SIZES = tuple(2**k for k in range(10, 27, 2))
"""Bytes each rank sends per exchange in the gloo micro-benchmark: 1 KiB, 4 KiB, ..., 64 MiB."""

NEIGHBORS = {2: 16.0, 3: 24.0}
"""Mean neighbours per node of the surveyed meshes (radius graph): 16 in 2-D (as benchmarks/bench_scaling.py), 24
in 3-D."""

MeshSpec = tuple[int, int, Sequence[str], Sequence[int]]
"""(dim, N, partition methods, P values) of one surveyed mesh."""

DEFAULT_MESHES: tuple[MeshSpec, ...] = (
    (2, 10**5, ("slab", "rcb", "metis"), POWERS_OF_TWO[1:]),
    (2, 10**6, ("slab", "rcb", "metis"), POWERS_OF_TWO[1:]),
    (2, 10**7, ("rcb",), (16, 128, 1024)),
    (3, 10**5, ("rcb", "metis"), POWERS_OF_TWO[1:]),
    (3, 10**6, ("rcb",), POWERS_OF_TWO[1:]),
    (3, 10**6, ("metis",), (2, 8, 64, 256, 1024)),
)
"""The meshes partitioned by default: about 6 minutes and 3 GiB on the 2-core test machine (1e7 nodes in 2-D
needs 2.8 GiB for its 80 M edge pairs and its rcb partitions take 5-50 s each, hence three P only; METIS on the
3-D 1e6 mesh takes ~10 s per P, hence five)."""

QUICK_RUN: dict = {
    "meshes": ((2, 20_000, ("rcb", "metis"), (2, 4, 16, 64)), (2, 80_000, ("rcb",), (4, 64)),
               (3, 20_000, ("rcb",), (2, 8, 64))),
    "conv_points": ((3000, 8), (3000, 24), (8000, 16)), "mpnn_nodes": (3000, 8000),
    "exchange_sizes": (1024, 1 << 20, 1 << 24), "exchange_rounds": 3}
"""Keyword arguments of :func:`run_scaling_model` for a smoke run (about 20 s): small meshes, few sizes."""

GPU_ASSUMPTIONS = {
    "flops_per_s": {"value": 10e12, "source": "assumption: 15 % of the H200 SXM's 67 TFLOP/s FP32 (no tensor cores; "
                    "NVIDIA H200 datasheet) for the gather/scatter-bound ECConv kernels; sensitivity run at 3 and 30"},
    "layer_overhead_s": {"value": 100e-6, "source": "assumption: ~20 kernel launches per layer forward + backward at "
                         "~5 us each (CUDA launch + PyTorch dispatch), no CUDA graphs"},
    "step_overhead_s": {"value": 1e-3, "source": "assumption: optimizer step, loss and Python per step"},
    "ranks_per_node": {"value": 8, "source": "8 GPUs per node (DGX/HGX H100/H200)"},
    "nvlink_bytes_per_s": {"value": 0.8 * 450e9, "source": "NVLink 4: 900 GB/s per GPU both directions = 450 GB/s per "
                           "direction (NVIDIA H100/H200 datasheets), at an assumed 80 % efficiency"},
    "ib_bytes_per_s": {"value": 0.8 * 50e9, "source": "InfiniBand NDR 400 Gb/s = 50 GB/s per direction, one ConnectX-7 "
                       "per GPU (NVIDIA DGX H100 user guide), at an assumed 80 % efficiency"},
    "call_s": {"value": 20e-6, "source": "NCCL base latency 8.4 us (ring/Simple, NVIDIA/nccl src/graph/tuning.cc "
               "baseLat) + ~10 us assumed for the gather and scatter kernels around it"},
    "nvlink_alpha_s": {"value": 3.4e-6, "source": "NCCL's NVLink hop latency, ring/Simple (tuning.cc hwLat)"},
    "ib_alpha_s": {"value": 9.6e-6, "source": "NCCL's network hop latency, ring/Simple (tuning.cc hwLat)"},
}
"""Every number of the GPU model with where it comes from (published value or a stated assumption)."""


# ---------------------------------------------------------------------------------------------------------------
# measurements on this machine
# ---------------------------------------------------------------------------------------------------------------

def _seconds_per_call(fn: Callable[[], object], calls: int, rounds: int, barrier: Callable[[], object]) -> list[float]:
    """Mean seconds per call of ``fn`` in each of ``rounds`` rounds of ``calls`` calls, the ranks lined up by
    ``barrier`` before each round."""
    times = []
    for _ in range(rounds):
        barrier()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls)
    return times


def _exchange_rank(ctx, sizes: Sequence[int], channels: int, modes: Sequence[str], rounds: int) -> dict:
    """One of two ranks: time ``HaloExchange.apply_forward`` moving ``size`` bytes each way, for every size."""
    import torch  # noqa: PLC0415
    import torch.distributed as dist  # noqa: PLC0415

    from dsmpnn.distributed.exchange import HaloExchange  # noqa: PLC0415
    from dsmpnn.graph import build_halo_plans  # noqa: PLC0415

    out = {m: {"bytes": [], "times_s": []} for m in (*modes, "all_reduce")}
    row_bytes = channels * 4
    for size in sizes:
        rows = max(1, size // row_bytes)
        i = np.arange(rows)
        owner = np.repeat([0, 1], rows)  # rank 0 owns 0..rows-1, rank 1 the next rows nodes
        edges = np.stack([np.r_[rows + i, i], np.r_[i, rows + i]])  # every node is the other rank's halo
        plan = build_halo_plans(owner, edges)[ctx.rank]
        h = torch.randn(plan.num_local, channels)  # [2 rows, C]
        calls = max(1, min(200, 2**20 // size))  # calls per timed round: ~1 MiB moved per round at least
        for mode in modes:
            ex = HaloExchange(plan, mode=mode)
            for _ in range(2):
                ex.apply_forward(h)  # warm-up: buffers, connections
            out[mode]["bytes"].append(rows * row_bytes)
            out[mode]["times_s"].append(_seconds_per_call(lambda: ex.apply_forward(h), calls, rounds, dist.barrier))
        grads = torch.randn(rows * channels)  # the same bytes, summed over both ranks
        dist.all_reduce(grads)
        out["all_reduce"]["bytes"].append(rows * row_bytes)
        out["all_reduce"]["times_s"].append(_seconds_per_call(lambda: dist.all_reduce(grads), calls, rounds,
                                                              dist.barrier))
    return out


def measure_exchange(sizes: Sequence[int] = EXCHANGE_SIZES, channels: int = 32,
                     modes: Sequence[str] = ("all_to_all", "p2p"), rounds: int = 7) -> dict:
    """Two gloo processes exchange ``size`` bytes each way with the library's HaloExchange; per mode the bytes,
    the slower rank's median and min seconds per exchange over ``rounds`` rounds, and the alpha-beta fit on the
    mins (the medians of a shared host include waits for a core). Also ``"all_reduce"``: ``dist.all_reduce`` of
    ``size`` bytes, whose fit is the two-rank ring, :math:`t = 2\alpha + b/\beta` (its ``alpha_s`` is the fitted
    intercept / 2, the per-step latency)."""
    from dsmpnn.distributed import run_processes  # noqa: PLC0415

    per_rank = run_processes(_exchange_rank, 2, (list(sizes), channels, list(modes), rounds), threads=1)
    result = {}
    for mode in (*modes, "all_reduce"):
        times = np.maximum(*(np.asarray(r[mode]["times_s"]) for r in per_rank))  # [sizes, rounds], slower rank
        nbytes = per_rank[0][mode]["bytes"]
        med, mins = np.median(times, axis=1), times.min(axis=1)
        try:
            link, fit = fit_alpha_beta(nbytes, mins), "weighted least squares"
        except ValueError:  # too noisy to show any growth: the bandwidth bound of the largest message
            link, fit = Link(float(mins.min()), nbytes[-1] / float(mins[-1])), "fallback: no growth with the size"
        pred = link.seconds(np.asarray(nbytes))
        if mode == "all_reduce":
            link = Link(link.alpha_s / 2, link.beta_bytes_per_s)
        result[mode] = {"bytes": nbytes, "median_s": med.tolist(), "min_s": mins.tolist(), "alpha_s": link.alpha_s,
                        "beta_bytes_per_s": link.beta_bytes_per_s, "fit": fit,
                        "fit_rel_error_max": float(np.max(np.abs(pred / mins - 1)))}
    return result


def _uniform_graph(nodes: int, neighbors: float, dim: int = 2, seed: int = 0):
    from dsmpnn.bench.scale import scale_radius  # noqa: PLC0415
    from dsmpnn.graph import build_graph  # noqa: PLC0415

    pos = np.random.default_rng(seed).random((nodes, dim))
    return pos, build_graph(pos, scale_radius(nodes, dim, neighbors), warn_isolated=False)


def measure_ecconv(points: Sequence[tuple[int, float]] = ((10_000, 8), (10_000, 32), (30_000, 16), (60_000, 8),
                                                          (60_000, 32)),
                   channels: int = 32, kernel_hidden: int = 32, repeats: int = 3, threads: int = 1,
                   echo: Callable[[str], None] | None = print) -> list[dict]:
    """Forward and backward seconds (min over ``repeats``, after a warm-up that builds the edge plan) of one
    ECConv layer (``channels`` in and out, kernel MLP 3 -> ``kernel_hidden``, GELU, mean) on N uniform random
    points in the unit square with about ``k`` neighbours each, for every (N, k) of ``points``.

    The times are the process's CPU time (``time.process_time``; one thread, so CPU time is the time on a core of
    its own): on a host whose cores other jobs share, wall-clock times include the time the process waited for a
    core, which a rank with a dedicated core (what the model predicts) does not. Wall times are kept beside."""
    import torch  # noqa: PLC0415

    from dsmpnn.nn import ECConv  # noqa: PLC0415

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows = []
    try:
        for n, k in points:
            _, g = _uniform_graph(n, k)
            torch.manual_seed(0)
            conv = ECConv(channels, channels, 3, (kernel_hidden,), act="gelu")
            x = torch.randn(n, channels, requires_grad=True)  # [N, C]
            grad = torch.randn(n, channels)
            conv(x, g.edge_index, g.edge_attr).backward(grad)  # warm-up: edge plan, kernels
            fwd, bwd, wall = [], [], []
            for _ in range(repeats):
                x.grad = None
                conv.zero_grad(set_to_none=True)
                w0, t0 = time.perf_counter(), time.process_time()
                out = conv(x, g.edge_index, g.edge_attr)
                t1 = time.process_time()
                out.backward(grad)
                t2 = time.process_time()
                wall.append(time.perf_counter() - w0)
                fwd.append(t1 - t0)
                bwd.append(t2 - t1)
            total = [a + b for a, b in zip(fwd, bwd)]
            rows.append({"nodes": n, "neighbors": k, "edges": g.num_edges, "forward_s": min(fwd),
                         "backward_s": min(bwd), "step_s": min(total), "step_median_s": float(np.median(total)),
                         "wall_min_s": min(wall), "wall_median_s": float(np.median(wall))})
            if echo:
                echo(f"  ECConv N={n:>6} edges={g.num_edges:>8}: CPU time forward {min(fwd):.4f} s, backward "
                     f"{min(bwd):.4f} s (wall, fwd + bwd: {min(wall):.4f} s)")
    finally:
        torch.set_num_threads(old)
    return rows


def mpnn_parameters(channels: int, kernel_hidden: int, layers: int, in_channels: int = 3, out_channels: int = 2,
                    edge_dim: int = 3) -> int:
    """Trainable values of the MPNN of :func:`measure_mpnn_step` (what the gradient all-reduce moves)."""
    from dsmpnn.nn import MPNN  # noqa: PLC0415

    model = MPNN(in_channels, out_channels, edge_dim, hidden=channels, layers=layers, kernel_hidden=(kernel_hidden,))
    return sum(p.numel() for p in model.parameters())


def measure_mpnn_step(nodes: Sequence[int] = (10_000, 30_000, 60_000), neighbors: float = 16, channels: int = 32,
                      kernel_hidden: int = 32, layers: int = 4, repeats: int = 3, threads: int = 1,
                      echo: Callable[[str], None] | None = print) -> list[dict]:
    """Seconds of one whole training step of the MPNN of ``benchmarks/bench_scaling.py`` (3 inputs, 2 outputs,
    ``layers`` x ``channels``, kernel MLP [``kernel_hidden``]; forward, mean squared error, backward, Adam) in
    one process, min over ``repeats`` after one warm-up step, for every N; CPU time as in :func:`measure_ecconv`."""
    import torch  # noqa: PLC0415

    from dsmpnn.nn import MPNN  # noqa: PLC0415

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows = []
    try:
        for n in nodes:
            pos, g = _uniform_graph(n, neighbors)
            torch.manual_seed(0)
            model = MPNN(3, 2, 3, hidden=channels, layers=layers, kernel_hidden=(kernel_hidden,))
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            x = torch.as_tensor(np.column_stack([pos, np.sin(4 * pos[:, 0])]), dtype=torch.float32)  # [N, 3]
            y = torch.as_tensor(np.column_stack([np.cos(3 * pos.sum(1)), pos[:, 0] * pos[:, 1]]),
                                dtype=torch.float32)  # [N, 2]
            times, wall = [], []
            for step in range(repeats + 1):
                w0, t0 = time.perf_counter(), time.process_time()
                opt.zero_grad(set_to_none=True)
                (model(x, g.edge_index, g.edge_attr) - y).square().mean().backward()
                opt.step()
                if step:
                    times.append(time.process_time() - t0)
                    wall.append(time.perf_counter() - w0)
            rows.append({"nodes": n, "edges": g.num_edges, "step_s": min(times),
                         "step_median_s": float(np.median(times)), "wall_min_s": min(wall),
                         "wall_median_s": float(np.median(wall))})
            if echo:
                echo(f"  MPNN step N={n:>6} edges={g.num_edges:>8}: CPU time {min(times):.4f} s "
                     f"(wall {min(wall):.4f} s)")
    finally:
        torch.set_num_threads(old)
    return rows


def fit_cpu_costs(conv_rows: Sequence[dict], mpnn_rows: Sequence[dict], layers: int) -> tuple[ComputeCosts, dict]:
    r"""The CPU's :class:`ComputeCosts` from the measurements, and the fit's quality.

    Layer: :math:`t = t_0 + t_n N + t_e E` through the ECConv points (weighted NNLS). Rest of the step:
    :math:`T - L (t_0 + t_n N + t_e E) = t_s + t_r N` through the MPNN points, weighted by the whole step time.
    The forward fraction f is the median of forward / (forward + backward) over the ECConv points.
    """
    n = np.array([r["nodes"] for r in conv_rows], dtype=float)
    e = np.array([r["edges"] for r in conv_rows], dtype=float)
    t = np.array([r["step_s"] for r in conv_rows])
    t0, tn, te = fit_linear_costs(np.column_stack([np.ones_like(n), n, e]), t)
    layer = t0 + tn * n + te * e
    nm = np.array([r["nodes"] for r in mpnn_rows], dtype=float)
    em = np.array([r["edges"] for r in mpnn_rows], dtype=float)
    tm = np.array([r["step_s"] for r in mpnn_rows])
    resid = tm - layers * (t0 + tn * nm + te * em)
    from scipy.optimize import nnls  # noqa: PLC0415

    (ts, tr), _ = nnls(np.column_stack([np.ones_like(nm), nm]) / tm[:, None], resid / tm)
    f = float(np.median([r["forward_s"] / r["step_s"] for r in conv_rows]))
    costs = ComputeCosts(edge_s=float(te), node_s=float(tn), layer_s=float(t0), rest_node_s=float(tr),
                         step_s=float(ts), forward_fraction=min(max(f, 0.05), 0.95))
    pred_m = layers * (t0 + tn * nm + te * em) + ts + tr * nm
    quality = {"layer_rel_error_max": float(np.max(np.abs(layer / t - 1))),
               "step_rel_error_max": float(np.max(np.abs(pred_m / tm - 1)))}
    return costs, quality


def cpu_machine(costs: ComputeCosts, link: Link, dense: bool, name: str, allreduce: Link | None = None) -> Machine:
    """This machine as a cluster of one-core ranks: the measured per-core costs, every pair of ranks linked like
    the two gloo processes measured here (one node); ring all-reduce with the steps of ``allreduce`` (default:
    ``link``)."""
    net = Network(intra=link, dense_messages=dense, allreduce="ring", collective=allreduce)
    return Machine(name=name, compute=costs, network=net,
                   notes="hypothetical: P single-thread ranks, each as fast as one core here, every pair of ranks "
                         "linked like two gloo processes on this VM (loopback TCP)")


def model_flops(channels: int, kernel_hidden: int, edge_dim: int = 3, in_channels: int = 3, out_channels: int = 2,
                encoder_hidden: int = 64, decoder_hidden: int = 64) -> dict:
    """FLOPs of one training step, per edge and per node of a layer (forward + backward + what backward recomputes,
    :func:`dsmpnn.bench.conv.ecconv_flops`) and per node of the encoder and decoder MLPs (3 x forward)."""
    from dsmpnn.bench.conv import ecconv_flops  # noqa: PLC0415

    sizes = [edge_dim, kernel_hidden]
    per_edge = sum(ecconv_flops(0, 1, 0, channels, channels, sizes).values())
    per_node = sum(ecconv_flops(1, 0, 1, channels, channels, sizes).values())
    mlp = 2 * (in_channels * encoder_hidden + encoder_hidden * channels
               + channels * decoder_hidden + decoder_hidden * out_channels)
    return {"layer_per_edge": per_edge, "layer_per_node": per_node, "rest_per_node": 3 * mlp}


def gpu_machine(flops: dict, forward_fraction: float, flops_per_s: float | None = None) -> Machine:
    """The assumed GPU rank (:data:`GPU_ASSUMPTIONS`): costs = FLOPs / effective throughput + fixed overheads;
    NVLink within 8-GPU nodes, InfiniBand between them, NCCL latencies; tree all-reduce; messages to peers only."""
    a = {k: v["value"] for k, v in GPU_ASSUMPTIONS.items()}
    rate = a["flops_per_s"] if flops_per_s is None else flops_per_s
    costs = ComputeCosts(edge_s=flops["layer_per_edge"] / rate, node_s=flops["layer_per_node"] / rate,
                         layer_s=a["layer_overhead_s"], rest_node_s=flops["rest_per_node"] / rate,
                         step_s=a["step_overhead_s"], forward_fraction=forward_fraction)
    net = Network(intra=Link(a["nvlink_alpha_s"], a["nvlink_bytes_per_s"]),
                  inter=Link(a["ib_alpha_s"], a["ib_bytes_per_s"]), ranks_per_node=int(a["ranks_per_node"]),
                  call_s=a["call_s"], dense_messages=False, allreduce="tree")
    return Machine(name=f"gpu-h200-{rate / 1e12:g}tf", compute=costs, network=net,
                   notes=f"assumed H200 ranks at {rate / 1e12:g} TFLOP/s effective, 8 per node")


# ---------------------------------------------------------------------------------------------------------------
# halo volumes of real partitions
# ---------------------------------------------------------------------------------------------------------------

def survey_partitions(meshes: Sequence[MeshSpec], neighbors: dict[int, float] | None = None, seed: int = 0,
                      echo: Callable[[str], None] | None = print) -> dict[tuple[int, str, int, int], RankLoads]:
    """Loads of every (dim, N, methods, parts) mesh of ``meshes`` split into every P of parts (P <= N / 8).

    Mesh: N uniform random points in the unit square (dim 2) or cube (dim 3), radius graph with
    ``neighbors[dim]`` neighbours per node on average (default 16 in 2-D, 24 in 3-D), its undirected pairs from
    one ``cKDTree.query_pairs`` (int32). Partitions: :func:`dsmpnn.graph.partition` (METIS gets the pairs as its
    graph). Returns ``{(dim, method, P, N): RankLoads}``; each load's summary also records the partition seconds.
    """
    from scipy.spatial import cKDTree  # noqa: PLC0415

    from dsmpnn.bench.scale import scale_radius  # noqa: PLC0415
    from dsmpnn.graph import partition  # noqa: PLC0415

    neighbors = NEIGHBORS if neighbors is None else neighbors
    out: dict[tuple[int, str, int, int], RankLoads] = {}
    for dim, n, methods, parts in meshes:
        parts = [P for P in parts if 2 <= P <= n // 8]
        if not parts or not methods:
            continue
        t0 = time.perf_counter()
        pos = np.random.default_rng(seed).random((n, dim))
        pairs = cKDTree(pos).query_pairs(scale_radius(n, dim, neighbors[dim]), output_type="ndarray")
        pairs = pairs.astype(np.int32)
        if echo:
            echo(f"  mesh {dim}-D N={n:,}: {2 * len(pairs):,} edges ({2 * len(pairs) / n:.1f} per node), "
                 f"{time.perf_counter() - t0:.1f} s")
        edge_index = pairs.T.astype(np.int64) if "metis" in methods else None
        for method in methods:
            t_method = time.perf_counter()
            for P in parts:
                t1 = time.perf_counter()
                owner = partition(pos, P, method, edge_index)
                t2 = time.perf_counter()
                loads = rank_loads(owner, pairs, P, dim, method)
                loads._derived["partition_s"] = t2 - t1
                loads._derived["count_s"] = time.perf_counter() - t2
                out[(dim, method, P, n)] = loads
            if echo:
                last = out[(dim, method, parts[-1], n)]
                echo(f"    {method}: P={','.join(map(str, parts))} in {time.perf_counter() - t_method:.1f} s; at "
                     f"P={last.nparts} max halo {last.halo.max():,} rows, max peers {last.peers.max()}")
        del edge_index, pairs
    return out


_LOAD_ARRAYS = ("owned", "halo", "edges", "cut_edges", "pair_recv", "pair_send", "pair_rows")


def save_survey(survey: dict[tuple[int, str, int, int], RankLoads], path: str | Path, neighbors: dict[int, float],
                seed: int) -> Path:
    """The survey's per-rank arrays (and partition timings) as one ``.npz``, with the mesh settings, so a rerun
    of the deterministic survey can be skipped (:func:`load_survey`)."""
    arrays = {"meta": np.array([seed, neighbors[2], neighbors[3]], dtype=float)}
    for (dim, method, P, n), loads in survey.items():
        key = f"{dim}|{method}|{P}|{n}"
        for name in _LOAD_ARRAYS:
            arrays[f"{key}|{name}"] = np.asarray(getattr(loads, name))
        arrays[f"{key}|timing"] = np.array([loads._derived.get("partition_s", np.nan),
                                            loads._derived.get("count_s", np.nan)])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def load_survey(path: str | Path, neighbors: dict[int, float], seed: int) -> dict[tuple[int, str, int, int], RankLoads]:
    """The survey saved by :func:`save_survey`; empty when the file is missing or was made with other settings."""
    if not Path(path).exists():
        return {}
    with np.load(path) as data:
        if not np.array_equal(data["meta"], [seed, neighbors[2], neighbors[3]]):
            return {}
        out = {}
        for key in {k.rsplit("|", 1)[0] for k in data.files if k != "meta"}:
            dim, method, P, n = key.split("|")
            loads = RankLoads(nodes=int(n), dim=int(dim), method=method,
                              **{name: data[f"{key}|{name}"] for name in _LOAD_ARRAYS})
            loads._derived["partition_s"], loads._derived["count_s"] = data[f"{key}|timing"].tolist()
            out[(int(dim), method, int(P), int(n))] = loads
    return out


def law_fits(survey: dict[tuple[int, str, int, int], RankLoads]) -> dict:
    r"""The surface-to-volume law :math:`h_{max} = c\,(N/P)^{(d-1)/d}` fitted to the largest halo of every
    partition surveyed, per (dim, method): c with the exponent fixed, and (c, e) with the exponent free
    (P >= 16 only, where most subdomains are interior). Plus the check of the extrapolation used: for each P
    surveyed at two or more N, the loads of the largest N predicted from the next smaller one by
    :func:`extrapolate_loads`, relative error of the max halo, max send rows and max cut edges."""
    fits: dict = {}
    for dim, method in sorted({(k[0], k[1]) for k in survey}):
        keys = [k for k in survey if k[:2] == (dim, method)]
        x = np.array([k[3] / k[2] for k in keys], dtype=float)
        y = np.array([survey[k].halo.max() for k in keys], dtype=float)
        c_fixed, _ = fit_power_law(x, y, surface_exponent(dim))
        interior = np.array([k[2] >= 16 for k in keys])
        c_free, e_free = fit_power_law(x[interior], y[interior]) if interior.sum() >= 2 else (float("nan"),) * 2
        checks = []
        for P in sorted({k[2] for k in keys}):
            ns = sorted(k[3] for k in keys if k[2] == P)
            if len(ns) < 2:
                continue
            small, large = survey[(dim, method, P, ns[-2])], survey[(dim, method, P, ns[-1])]
            guess = extrapolate_loads(small, ns[-1])
            checks.append({"P": P, "from_N": ns[-2], "to_N": ns[-1],
                           "halo_max_rel_error": float(guess.halo.max() / large.halo.max() - 1),
                           "send_rows_max_rel_error": float(guess.send_rows.max() / large.send_rows.max() - 1),
                           "cut_edges_max_rel_error": float(guess.cut_edges.max() / large.cut_edges.max() - 1),
                           "peers_max": [int(small.peers.max()), int(large.peers.max())]})
        fits[f"{dim}d/{method}"] = {"c_fixed_exponent": c_fixed, "exponent": surface_exponent(dim),
                                    "c_free": c_free, "exponent_free": e_free, "extrapolation_checks": checks}
    return fits


def loads_for(survey: dict[tuple[int, str, int, int], RankLoads], dim: int, method: str, P: int,
              nodes: int) -> RankLoads | None:
    """Loads of (dim, method) at P ranks on ``nodes`` nodes: surveyed if that mesh was partitioned, else
    extrapolated from the surveyed N closest in log N at the same P (None when P was never surveyed)."""
    ns = [k[3] for k in survey if k[:3] == (dim, method, P)]
    if not ns:
        return None
    n0 = min(ns, key=lambda n: abs(math.log(nodes / n)))
    return extrapolate_loads(survey[(dim, method, P, n0)], nodes)


def _mean_degree(survey: dict[tuple[int, str, int, int], RankLoads], dim: int, nodes: int) -> float:
    """Edges per node of the surveyed mesh of ``dim`` closest in N (boundary effects shrink it at small N)."""
    keys = [k for k in survey if k[0] == dim]
    k = min(keys, key=lambda k: abs(math.log(nodes / k[3])))
    return float(survey[k].edges.sum() / survey[k].nodes)


# ---------------------------------------------------------------------------------------------------------------
# predictions
# ---------------------------------------------------------------------------------------------------------------

def predict_scenarios(survey: dict[tuple[int, str, int, int], RankLoads], machines: Sequence[Machine],
                      layers: int, channels: int, parameters: int, strong_nodes: Sequence[int] = (10**6, 10**7, 10**8),
                      weak_nodes: Sequence[int] = (10**5, 10**6), parts: Sequence[int] = POWERS_OF_TWO) -> list[dict]:
    """Strong scaling (fixed N) and weak scaling (fixed N / P) for every machine and every (dim, method) surveyed:
    one dict per curve with the per-P predictions, efficiencies (with and without overlap), the crossover P
    (:func:`~dsmpnn.bench.scaling_model.crossover`) and which P used extrapolated halo volumes."""
    curves = []
    combos = sorted({(k[0], k[1]) for k in survey})
    for machine in machines:
        for dim, method in combos:
            for kind, sizes in (("strong", strong_nodes), ("weak", weak_nodes)):
                for size in sizes:
                    preds: list[StepPrediction] = []
                    extrapolated = []
                    for P in parts:
                        n = size if kind == "strong" else size * P
                        if P == 1:  # the degree of the mesh the P = 2 loads come from: same graph, same work
                            ref = loads_for(survey, dim, method, 2, n)
                            degree = ref.edges.sum() / ref.nodes if ref is not None else _mean_degree(survey, dim, n)
                            loads = single_rank_loads(n, n * degree, dim)
                        else:
                            loads = loads_for(survey, dim, method, P, n)
                            if loads is None:
                                continue
                            if loads.extrapolated_from is not None:
                                extrapolated.append(P)
                        preds.append(predict_step(loads, machine, layers, channels, parameters))
                    t1, t1o = preds[0].step_s, preds[0].step_overlap_s
                    strong = kind == "strong"
                    curves.append(_rounded({
                        "machine": machine.name, "dim": dim, "method": method, "scaling": kind,
                        ("nodes" if strong else "nodes_per_rank"): size,
                        "P": [p.nparts for p in preds],
                        "step_s": [p.step_s for p in preds], "step_overlap_s": [p.step_overlap_s for p in preds],
                        "efficiency": [efficiency(t1, p.step_s, p.nparts, strong) for p in preds],
                        "efficiency_overlap": [efficiency(t1o, p.step_overlap_s, p.nparts, strong) for p in preds],
                        "exchange_over_compute": [p.exchange_layer_s / p.compute_layer_s for p in preds],
                        "crossover_P": crossover(preds), "crossover_P_overlap": crossover(preds, overlap=True),
                        "extrapolated_P": extrapolated,
                        "breakdown": {k: [getattr(p, k) for p in preds] for k in BREAKDOWN}}))
    return curves


BREAKDOWN = ("compute_layer_s", "interior_layer_s", "exchange_s", "exchange_layer_s", "rest_s", "allreduce_s")
"""Per-P columns of a curve's ``breakdown`` (:class:`StepPrediction`'s terms besides the step times)."""


def _rounded(obj: Any, digits: int = 5) -> Any:
    """``obj`` with every float rounded to ``digits`` significant digits: a model's predictions carry no more
    (its constants are fitted to within percents), and the saved curves stay a readable size."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}")
    if isinstance(obj, dict):
        return {k: _rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v, digits) for v in obj]
    return obj


def _problem_loads(nodes: int, neighbors: float, P: int, method: str) -> RankLoads:
    """Loads of the mesh of ``benchmarks/bench_scaling.py`` (``problem``: 2-D uniform, ``default_rng(0)``)."""
    from scipy.spatial import cKDTree  # noqa: PLC0415

    from dsmpnn.graph import partition  # noqa: PLC0415

    pos = np.random.default_rng(0).random((nodes, 2))
    pairs = cKDTree(pos).query_pairs(float(np.sqrt(neighbors / (np.pi * nodes))), output_type="ndarray")
    if P == 1:
        return single_rank_loads(nodes, 2 * len(pairs), 2)
    owner = partition(pos, P, method, pairs.T)
    return rank_loads(owner, pairs, P, 2, method)


def compare_measured(measured: dict, machine: Machine, parameters: int) -> list[dict]:
    """Predicted against measured step, compute and exchange seconds for every row of a
    ``benchmarks/bench_scaling.py --json`` output (its mesh rebuilt and partitioned exactly as it was).

    Measured step: the slowest rank's fastest step (``step_min_s``; the median where the file has no min), the
    statistic the model's costs were fitted with. The measured "exchange" is the time a rank spends inside the
    exchange calls, which includes waiting for a slower peer to arrive; the model puts that wait in the compute of
    the slowest rank, so only the step times compare like with like. ``measured_cpu_s``: the slowest rank's CPU
    seconds per step (its fastest step), to compare with ``predicted_compute_s`` (layers and the rest of the step on
    a core of its own; the CPU time also holds the exchanges' copies and gloo's work).
    ``predicted_shared_cores_step_s``: the compute stretched by P / cores when the ranks outnumber the cores (P = 4
    on this 2-core machine)."""
    args = measured["args"]
    layers, channels, neighbors = args["layers"], args["hidden"], args["neighbors"]
    cores = os.cpu_count() or 1
    rows = []
    for r in measured["rows"]:
        if r["halo_hops"] != 1:
            continue
        loads = _problem_loads(r["nodes"], neighbors, r["P"], r["method"])
        pred = predict_step(loads, machine, layers, channels, parameters)
        exchange = layers * pred.exchange_layer_s
        share = max(1.0, r["P"] * args.get("threads", 1) / cores)  # ranks per core when they outnumber the cores
        measured_step = r.get("step_min_s", r["step_s"])
        rows.append({"scaling": r["scaling"], "P": r["P"], "nodes": r["nodes"], "method": r["method"] if r["P"] > 1
                     else "-", "measured_step_s": measured_step, "measured_step_median_s": r["step_s"],
                     "predicted_step_s": pred.step_s,
                     "predicted_shared_cores_step_s": (pred.step_s - exchange) * share + exchange,
                     "measured_exchange_s": r["exchange_s"], "predicted_exchange_s": exchange,
                     "measured_compute_s": r["compute_s"],
                     "predicted_compute_s": layers * pred.compute_layer_s + pred.rest_s,
                     "measured_cpu_s": r.get("cpu_min_s"), "measured_cpu_median_s": r.get("cpu_s"),
                     "ratio": pred.step_s / measured_step, "oversubscribed": share > 1})
    return rows


# ---------------------------------------------------------------------------------------------------------------
# the whole run
# ---------------------------------------------------------------------------------------------------------------

def run_scaling_model(meshes: Sequence[MeshSpec], measured: dict | None = None,
                      channels: int = 32, kernel_hidden: int = 32, layers: int = 4,
                      conv_points: Sequence[tuple[int, float]] | None = None,
                      mpnn_nodes: Sequence[int] = (10_000, 30_000, 60_000),
                      exchange_sizes: Sequence[int] = EXCHANGE_SIZES, exchange_rounds: int = 7,
                      sensitivity: Sequence[float] = (3e12, 30e12), survey_cache: str | Path | None = None,
                      echo: Callable[[str], None] | None = print) -> dict:
    """Measure, fit, survey, predict; returns everything as one JSON-able dict (see :func:`format_report`).

    ``meshes``: the (dim, N, methods, P values) to partition; ``measured``: a ``benchmarks/bench_scaling.py
    --json`` output to compare with (None: no comparison); ``sensitivity``: other GPU throughputs [FLOP/s] to
    re-predict with;
    ``survey_cache``: an ``.npz`` of partition loads (:func:`save_survey`) read when it exists (only the partitions
    it lacks are computed) and written after the survey.
    """
    from dsmpnn.bench.conv import machine_info  # noqa: PLC0415

    say = echo or (lambda s: None)
    t_start = time.perf_counter()
    info = machine_info("cpu")
    info["load_average_start"] = list(os.getloadavg())
    meas = _measure_costs(channels, kernel_hidden, layers, conv_points, mpnn_nodes, exchange_sizes, exchange_rounds,
                          say)
    costs, flops = meas["costs"], meas["flops"]
    say("# 3. halo volumes of real partitions")
    t_survey = time.perf_counter()
    survey = _survey(meshes, survey_cache, echo)
    t_survey = time.perf_counter() - t_survey
    parameters = mpnn_parameters(channels, kernel_hidden, layers)
    links = {mode: Link(r["alpha_s"], r["beta_bytes_per_s"]) for mode, r in meas["exchange"].items()}
    machines = [cpu_machine(costs, links["all_to_all"], True, "cpu-gloo-all_to_all", links["all_reduce"]),
                cpu_machine(costs, links["p2p"], False, "cpu-gloo-p2p", links["all_reduce"]),
                gpu_machine(flops, costs.forward_fraction)]
    say("# 4. predictions")
    curves = predict_scenarios(survey, machines, layers, channels, parameters)
    gpu_sens = [gpu_machine(flops, costs.forward_fraction, rate) for rate in sensitivity]
    sens_curves = predict_scenarios(survey, gpu_sens, layers, channels, parameters)
    comparison = None
    if measured is not None:
        say("# 5. predicted vs measured (benchmarks/bench_scaling.py)")
        comparison = compare_measured(measured, machines[0], parameters)
    info["load_average_end"] = list(os.getloadavg())
    return {
        "machine": info,
        "settings": {"channels": channels, "kernel_hidden": kernel_hidden, "layers": layers, "halo_hops": 1,
                     "parameters": parameters, "dtype": "float32",
                     "neighbors": {str(d): k for d, k in NEIGHBORS.items()},
                     "meshes": [[d, n, list(m), list(p)] for d, n, m, p in meshes]},
        "exchange": meas["exchange"], "ecconv": meas["conv_rows"], "mpnn_step": meas["mpnn_rows"],
        "cpu_costs": vars(costs), "cpu_fit_quality": meas["quality"], "flops": flops,
        "cpu_gflops_per_edge_work": meas["cpu_rate"] / 1e9,
        "gpu_assumptions": GPU_ASSUMPTIONS,
        "machines": [_machine_json(mach) for mach in machines],
        "survey": [dict(loads.summary(), partition_s=loads._derived.get("partition_s"),
                        count_s=loads._derived.get("count_s")) for loads in survey.values()],
        "survey_seconds": t_survey, "law_fits": law_fits(survey),
        "curves": curves, "gpu_sensitivity": sens_curves,
        "measured_vs_predicted": comparison, "measured_raw": measured,
        "wall_s": time.perf_counter() - t_start,
    }


def _measure_costs(channels: int, kernel_hidden: int, layers: int, conv_points: Sequence[tuple[int, float]] | None,
                   mpnn_nodes: Sequence[int], exchange_sizes: Sequence[int], exchange_rounds: int,
                   say: Callable[[str], None]) -> dict:
    """Steps 1 and 2: the gloo exchange's latency and bandwidth, the ECConv layer and MPNN step times on one
    thread and the CPU cost terms fitted to them, the FLOPs per edge and node."""
    say("# 1. gloo halo exchange between 2 processes (HaloExchange.apply_forward)")
    exchange = measure_exchange(exchange_sizes, channels, rounds=exchange_rounds)
    for mode, r in exchange.items():
        say(f"  {mode}: alpha {r['alpha_s'] * 1e6:.1f} us, beta {r['beta_bytes_per_s'] / 1e9:.2f} GB/s "
            f"(max fit error {100 * r['fit_rel_error_max']:.0f} %)")
    say("# 2. ECConv layer and MPNN step, 1 thread")
    conv_rows = measure_ecconv(**({} if conv_points is None else {"points": conv_points}), channels=channels,
                               kernel_hidden=kernel_hidden)
    mpnn_rows = measure_mpnn_step(mpnn_nodes, channels=channels, kernel_hidden=kernel_hidden, layers=layers)
    costs, quality = fit_cpu_costs(conv_rows, mpnn_rows, layers)
    say(f"  t_e {costs.edge_s * 1e9:.1f} ns/edge, t_n {costs.node_s * 1e9:.1f} ns/node, t_0 {costs.layer_s * 1e3:.2f} "
        f"ms/layer, t_r {costs.rest_node_s * 1e9:.1f} ns/node, t_s {costs.step_s * 1e3:.1f} ms/step, forward share "
        f"{costs.forward_fraction:.2f}; fit errors {quality}")
    flops = model_flops(channels, kernel_hidden)
    cpu_rate = flops["layer_per_edge"] / costs.edge_s
    say(f"  FLOPs per layer: {flops['layer_per_edge']} per edge, {flops['layer_per_node']} per node -> this core "
        f"runs the per-edge work at {cpu_rate / 1e9:.1f} GFLOP/s")
    return {"exchange": exchange, "conv_rows": conv_rows, "mpnn_rows": mpnn_rows, "costs": costs,
            "quality": quality, "flops": flops, "cpu_rate": cpu_rate}


def _survey(meshes: Sequence[MeshSpec], survey_cache: str | Path | None,
            echo: Callable[[str], None] | None) -> dict:
    """Step 3: the partition loads of ``meshes``, read from ``survey_cache`` where it has them, the rest computed;
    the cache rewritten with exactly the partitions of ``meshes``."""
    survey = load_survey(survey_cache, NEIGHBORS, 0) if survey_cache else {}
    if survey and echo:
        echo(f"  {len(survey)} partitions read from {survey_cache}")
    missing = [(d, n, [m for m in ms if any((d, m, P, n) not in survey for P in ps if 2 <= P <= n // 8)], ps)
               for d, n, ms, ps in meshes]
    survey = {k: v for k, v in survey.items()
              if any(k[0] == d and k[3] == n and k[1] in ms and k[2] in ps for d, n, ms, ps in meshes)}
    survey.update(survey_partitions(missing, echo=echo))
    if survey_cache:
        save_survey(survey, survey_cache, NEIGHBORS, 0)
    return survey


def _machine_json(m: Machine) -> dict:
    """A modelled machine as JSON: its compute and network terms."""
    net = m.network
    return {"name": m.name, "notes": m.notes, "compute": vars(m.compute),
            "network": {"intra": vars(net.intra), "collective": vars(net.collective) if net.collective else None,
                        "inter": vars(net.inter) if net.inter else None, "ranks_per_node": net.ranks_per_node,
                        "call_s": net.call_s, "dense_messages": net.dense_messages, "allreduce": net.allreduce}}
