r"""ECConv (factorised, chunked) against PyG's NNConv: time, peak memory and throughput on one radius graph.

The reference case of issue 5: N random nodes in the unit square, radius r (about N pi r^2 neighbours per node),
edge attributes [dx, dy, |d|] / r, C input = output channels, a kernel MLP D -> H -> C^2 with ReLU, mean
aggregation, float32. Both convolutions hold the same weights (:meth:`ECConv.from_pyg`).

What is measured (after one warm-up call each; ``repeats`` interleaved rounds of a few ECConv calls, one NNConv
call and one dense matmul, so that all see the same machine load; min and median reported):

- forward: ``out = conv(x, edge_index, edge_attr)`` with x requiring grad (a training forward);
- backward: ``out.backward(g)``, gradients of x and of every parameter (edge attributes need none);
- forward without grad (inference);
- peak memory of forward + backward and of the inference forward, above the level at the start (on Linux CPU
  the process's peak resident memory, see :mod:`dsmpnn.bench.measure`);
- the throughput of one dense [S, S] x [S, S] matmul in the same run, and the FLOPs of the factorised algorithm
  (:func:`ecconv_flops`; the recomputation in backward is counted apart and not in the achieved GFLOP/s), from
  which "time / dense-equivalent time" = measured time / (FLOPs / dense GFLOP/s): over the whole run (the
  fastest ECConv call against the fastest matmul, and medians against medians) and paired per round (each
  ECConv call against the matmul of its own round, right after it; min and median over the calls), which
  follows the load of a shared host more closely.

Timings on a shared machine are noisy: the min is the better estimate of what the code costs, the spread says
how noisy the run was, and the load average at the start and end of the run is recorded.

Usage: ``python benchmarks/bench_conv.py`` (table + JSON) or :func:`bench_conv` from Python.
"""

from __future__ import annotations

import datetime
import os
import platform
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from dsmpnn.bench.measure import peak_memory, synchronize, time_calls
from dsmpnn.graph import build_graph
from dsmpnn.nn.kernels import backend
from dsmpnn.nn.ecconv import ECConv
from dsmpnn.nn.kernels.edge_plan import DEFAULT_EDGE_CHUNK, EdgePlan, cached_edge_plan
from dsmpnn.optional import PYG_INSTALL, require

__all__ = ["bench_conv", "ecconv_flops", "format_table", "machine_info"]


def ecconv_flops(num_nodes: int, num_edges: int, num_sources: int, in_channels: int, out_channels: int,
                 kernel_sizes: Sequence[int], root: bool = True) -> dict[str, int]:
    """FLOPs (2 per multiply-add) of the factorised ECConv with a kernel MLP of sizes ``[D, ..., H]``.

    forward: kernel MLP on E edges, Q = x W on the S sources with out-degree > 0 (2 S C_in (H+1) C_out), the
    per-edge products (2 E H C_out), the root Linear. backward: weight and input gradients of the dense parts,
    both per-edge adjoints (dQ, dh), the MLP's weight gradients and its input gradients except the first
    layer's. recompute: what backward evaluates again instead of storing (Q and the kernel MLP).
    """
    hdim, cin, cout = kernel_sizes[-1], in_channels, out_channels
    mlp = sum(2 * num_edges * a * b for a, b in zip(kernel_sizes[:-1], kernel_sizes[1:]))
    mlp_first = 2 * num_edges * kernel_sizes[0] * kernel_sizes[1]
    q = 2 * num_sources * cin * (hdim + 1) * cout
    msg = 2 * num_edges * hdim * cout
    rt = 2 * num_nodes * cin * cout if root else 0
    forward = mlp + q + msg + rt
    backward = (mlp + (mlp - mlp_first)) + 2 * q + 2 * msg + 2 * rt
    return {"forward": forward, "backward": backward, "recompute": q + mlp}


def machine_info(device: str) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "device": device,
            "date": datetime.datetime.now().isoformat(timespec="seconds")}
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _nnconv(cin: int, cout: int, edge_dim: int, hidden: int, aggr: str) -> nn.Module:
    """PyG's NNConv (torch_geometric is optional: a MissingDependency naming the install command without it)."""
    nnconv = require("torch_geometric.nn", "the NNConv comparison of bench conv", PYG_INSTALL,
                     "(or pass --no-nnconv / nnconv=False)").NNConv
    kernel = nn.Sequential(nn.Linear(edge_dim, hidden), nn.ReLU(), nn.Linear(hidden, cin * cout))
    return nnconv(cin, cout, kernel, aggr=aggr)


@contextmanager
def _native_switch(enabled: bool | None) -> Iterator[None]:
    """``backend.FUSED = enabled`` for the duration (None: leave it as it is)."""
    if enabled is None:
        yield
        return
    old, backend.FUSED = backend.FUSED, enabled
    try:
        yield
    finally:
        backend.FUSED = old


class _Runner:
    """Timed training steps and inference calls of one convolution, collected across interleaved rounds.
    ``native``: :data:`dsmpnn.nn.kernels.backend.FUSED` during its calls (None: unchanged)."""

    def __init__(self, conv: nn.Module, x: torch.Tensor, ei: torch.Tensor, ea: torch.Tensor, g: torch.Tensor,
                 device: str, native: bool | None = None) -> None:
        self.conv, self.x, self.ei, self.ea, self.g, self.device = conv, x, ei, ea, g, device
        self.native = native
        self.fwd: list[float] = []
        self.bwd: list[float] = []
        self.inference: list[float] = []

    def zero_grads(self) -> None:
        self.x.grad = None
        for p in self.conv.parameters():
            p.grad = None

    def step(self) -> None:
        """One timed forward + backward (gradients of x and of every parameter)."""
        self.zero_grads()
        with _native_switch(self.native):
            synchronize(self.device)
            t0 = time.perf_counter()
            out = self.conv(self.x, self.ei, self.ea)
            synchronize(self.device)
            t1 = time.perf_counter()
            out.backward(self.g)
            synchronize(self.device)
        self.fwd.append(t1 - t0)
        self.bwd.append(time.perf_counter() - t1)

    def infer(self) -> torch.Tensor:
        with torch.no_grad(), _native_switch(self.native):
            return self.conv(self.x, self.ei, self.ea)

    def timed_infer(self) -> None:
        self.inference.append(time_calls(self.infer, 1, self.device).min)

    def result(self) -> dict:
        self.zero_grads()
        peak, method = peak_memory(self.step, self.device)
        self.fwd.pop(), self.bwd.pop()  # that step ran under the memory measurement: not timed
        self.zero_grads()
        peak_infer, _ = peak_memory(self.infer, self.device)
        fwd, bwd = self.fwd, self.bwd
        total = [a + b for a, b in zip(fwd, bwd)]
        return {"forward_s": min(fwd), "backward_s": min(bwd), "total_s": min(total),
                "forward_median_s": float(np.median(fwd)), "backward_median_s": float(np.median(bwd)),
                "total_median_s": float(np.median(total)), "forward_times_s": fwd, "backward_times_s": bwd,
                "inference_s": min(self.inference), "inference_median_s": float(np.median(self.inference)),
                "peak_bytes": peak, "peak_bytes_inference": peak_infer, "memory_method": method}


def bench_conv(nodes: int = 20_000, radius: float = 0.02, channels: int = 32, hidden: int = 64, repeats: int = 3,
               device: str = "cpu", *, seed: int = 0, aggr: str = "mean", dtype: torch.dtype = torch.float32,
               edge_chunk: int = DEFAULT_EDGE_CHUNK, dense_size: int = 4096, nnconv: bool = True,
               threads: int | None = None, ecconv_calls: int = 3, with_bmm: bool = False) -> dict:
    """Benchmark ECConv against PyG NNConv on the issue-5 reference case; returns a JSON-serialisable dict.

    Args:
        nodes, radius: the random radius graph (unit square, seeded by ``seed``).
        channels, hidden: C_in = C_out and the kernel MLP's hidden width H.
        repeats: rounds; each round times ``ecconv_calls`` ECConv steps, one NNConv step and one dense matmul
            in a row (then the same for inference), so that both convolutions see the same machine load.
        ecconv_calls: ECConv calls per round (it is short: more samples of it cost little).
        device: "cpu" or a CUDA device.
        aggr: "mean" or "sum".
        dtype: floating point type of features and weights.
        edge_chunk: ECConv's chunk size (edges).
        dense_size: S of the reference S x S x S matmul.
        nnconv: also run PyG's NNConv (needs torch_geometric) and report the ratios.
        threads: ``torch.set_num_threads`` for the run (restored afterwards); None keeps the current setting.
        with_bmm: also time ECConv on its pure-PyTorch ``bmm`` path (fused kernels off, degree-ordered plan,
            same chunk size) in the same rounds: ``result["ecconv_bmm"]`` and ``result["fused_speedup"]``.
    """
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _bench(nodes, radius, channels, hidden, repeats, device, seed, aggr, dtype, edge_chunk, dense_size,
                      nnconv, ecconv_calls, with_bmm)
    finally:
        torch.set_num_threads(old_threads)


def _bench(nodes, radius, channels, hidden, repeats, device, seed, aggr, dtype, edge_chunk, dense_size, nnconv,
           ecconv_calls, with_bmm):
    load_start = _load()
    pos = np.random.default_rng(seed).random((nodes, 2))
    graph = build_graph(pos, radius, dtype=dtype, warn_isolated=False)
    ei, ea = graph.edge_index.to(device), graph.edge_attr.to(device)
    conv, ref = _convolutions(channels, hidden, ea.shape[1], aggr, nnconv, edge_chunk, seed, device, dtype)
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(nodes, channels, generator=gen, device=device, dtype=dtype).requires_grad_()
    g = torch.randn(nodes, channels, generator=gen, device=device, dtype=dtype)

    plan_time = time_calls(lambda: EdgePlan.build(ei, nodes, chunk=edge_chunk), repeats, device)
    plan = cached_edge_plan(ei, nodes, chunk=edge_chunk)
    flops = ecconv_flops(nodes, graph.num_edges, int(plan.sources.shape[0]), channels, channels,
                         [ea.shape[1], hidden])
    runners = {"ecconv": _Runner(conv, x, ei, ea, g, device)}
    if with_bmm:  # its own edge_index tensor: the plan cache keeps one plan (order) per tensor
        runners["ecconv_bmm"] = _Runner(conv, x, ei.clone(), ea, g, device, native=False)
    if ref is not None:  # PyG's scatter wants int64 ids (radius graphs hold int32 ones): NNConv's own copy
        ei_long = ei.long()
        runners["nnconv"] = _Runner(ref, x, ei_long, ea, g, device)
    dense_times = _timed_rounds(runners, {"ecconv": ecconv_calls, "ecconv_bmm": ecconv_calls, "nnconv": 1},
                                repeats, dense_size, device, dtype)

    result = {
        "config": {"nodes": nodes, "radius": radius, "channels": channels, "hidden": hidden, "aggr": aggr,
                   "dtype": str(dtype).replace("torch.", ""), "edge_chunk": edge_chunk, "repeats": repeats,
                   "ecconv_calls": ecconv_calls, "seed": seed,
                   "ecconv_path": backend.choose_backend(torch.device(device), dtype)},
        "machine": machine_info(device),
        "graph": {"edges": graph.num_edges, "mean_degree": graph.num_edges / nodes,
                  "max_in_degree": int(plan.in_degree.max()) if graph.num_edges else 0,
                  "plan_s": plan_time.min, "chunks": len(plan.chunks)},
        "flops": flops,
        "dense": {"size": dense_size, "gflops": 2.0 * dense_size**3 / min(dense_times) / 1e9,
                  "gflops_median": 2.0 * dense_size**3 / float(np.median(dense_times)) / 1e9,
                  "round_times_s": dense_times},
        "ecconv": runners["ecconv"].result(),
    }
    _add_efficiency(result, ecconv_calls)
    if with_bmm:
        bm = result["ecconv_bmm"] = runners["ecconv_bmm"].result()
        ec = result["ecconv"]
        result["fused_speedup"] = {key: bm[f"{key}_s"] / ec[f"{key}_s"] for key in
                                   ("forward", "backward", "total", "total_median", "inference")}
        diff_paths = runners["ecconv"].infer() - runners["ecconv_bmm"].infer()
        result["fused_vs_bmm_max_abs_diff"] = diff_paths.abs().max().item()
    if ref is not None:
        with torch.no_grad():
            result["max_abs_diff"] = (conv(x, ei, ea) - ref(x, ei_long, ea)).abs().max().item()
        _add_nnconv_ratios(result, runners["nnconv"].result())
    result["machine"]["load_average_start"] = load_start
    result["machine"]["load_average_end"] = _load()
    return result


def _convolutions(channels: int, hidden: int, edge_dim: int, aggr: str, nnconv: bool, edge_chunk: int, seed: int,
                  device: str, dtype: torch.dtype) -> tuple[ECConv, nn.Module | None]:
    """ECConv and (with ``nnconv``) PyG's NNConv holding the same weights; without it, ECConv with NNConv's kernel
    MLP (Linear, ReLU, Linear), not needing torch_geometric."""
    torch.manual_seed(seed)
    ref = None
    if nnconv:
        ref = _nnconv(channels, channels, edge_dim, hidden, "add" if aggr == "sum" else aggr).to(device, dtype)
        conv = ECConv.from_pyg(ref).to(device, dtype)
    else:
        conv = ECConv(channels, channels, edge_dim, [hidden], aggr, act="relu").to(device, dtype)
    conv.edge_chunk = edge_chunk
    return conv, ref


def _timed_rounds(runners: dict[str, _Runner], calls: dict[str, int], repeats: int, dense_size: int, device: str,
                  dtype: torch.dtype) -> list[float]:
    """One warm-up step per runner, then ``repeats`` interleaved rounds of training steps (``calls[name]`` each)
    and one dense [S, S] x [S, S] matmul, then ``repeats`` rounds of inference calls: every method sees the same
    load. Returns the matmul's seconds per round."""
    a = torch.randn(dense_size, dense_size, device=device, dtype=dtype)
    b = torch.randn(dense_size, dense_size, device=device, dtype=dtype)
    a @ b
    for r in runners.values():
        r.step()  # warm-up (and the plan of ECConv, cached for the calls below)
        r.fwd.clear(), r.bwd.clear()
    dense_times = []
    for _ in range(repeats):
        for name, r in runners.items():
            for _ in range(calls[name]):
                r.step()
        dense_times.append(time_calls(lambda: a @ b, 1, device).min)
    for _ in range(repeats):
        for name, r in runners.items():
            for _ in range(calls[name]):
                r.timed_infer()
    return dense_times


def _add_efficiency(result: dict, ecconv_calls: int) -> None:
    """ECConv's achieved GFLOP/s and its time against the dense-equivalent time (FLOPs / dense GFLOP/s): fastest
    against fastest, median against median, and paired per round (each call against its round's matmul)."""
    ec, flops, dense = result["ecconv"], result["flops"], result["dense"]
    essential = flops["forward"] + flops["backward"]
    ec["gflops"] = essential / ec["total_s"] / 1e9
    ec["gflops_forward"] = flops["forward"] / ec["forward_s"] / 1e9
    ec["dense_equivalent_s"] = essential / (dense["gflops"] * 1e9)
    ec["time_over_dense_equivalent"] = ec["total_s"] / ec["dense_equivalent_s"]
    ec["time_over_dense_equivalent_median"] = ec["total_median_s"] / (essential / (dense["gflops_median"] * 1e9))
    ec["fraction_of_dense"] = ec["gflops"] / dense["gflops"]
    matmul_flops = 2.0 * dense["size"]**3
    paired = [(f + b) * (matmul_flops / dense["round_times_s"][i // ecconv_calls]) / essential
              for i, (f, b) in enumerate(zip(ec["forward_times_s"], ec["backward_times_s"]))]
    ec["time_over_dense_equivalent_paired"] = min(paired)
    ec["time_over_dense_equivalent_paired_median"] = float(np.median(paired))


def _add_nnconv_ratios(result: dict, nn_res: dict) -> None:
    """NNConv's timings, its time and memory over ECConv's, and the issue-5 targets."""
    ec = result["ecconv"]
    result["nnconv"] = nn_res
    result["ratios"] = {
        "speedup_forward": nn_res["forward_s"] / ec["forward_s"],
        "speedup_backward": nn_res["backward_s"] / ec["backward_s"],
        "speedup_total": nn_res["total_s"] / ec["total_s"],
        "speedup_total_median": nn_res["total_median_s"] / ec["total_median_s"],
        "speedup_inference": nn_res["inference_s"] / ec["inference_s"],
        "memory_ratio": nn_res["peak_bytes"] / max(ec["peak_bytes"], 1),
        "memory_ratio_inference": nn_res["peak_bytes_inference"] / max(ec["peak_bytes_inference"], 1),
    }
    result["targets"] = {
        "speedup_total >= 10": result["ratios"]["speedup_total"] >= 10,
        "memory_ratio >= 10": result["ratios"]["memory_ratio"] >= 10,
        "time_over_dense_equivalent <= 3": ec["time_over_dense_equivalent"] <= 3,
    }


def format_table(result: dict) -> str:
    """A plain-text table of a :func:`bench_conv` result."""
    cfg, gr, ec = result["config"], result["graph"], result["ecconv"]
    nn_res = result.get("nnconv")
    mb = 1024.0**2
    lines = [
        f"N={cfg['nodes']:,} r={cfg['radius']} E={gr['edges']:,} (mean degree {gr['mean_degree']:.1f}) "
        f"C={cfg['channels']} H={cfg['hidden']} aggr={cfg['aggr']} {cfg['dtype']} chunk={cfg['edge_chunk']:,} "
        f"path={cfg.get('ecconv_path', '?')}",
        f"{result['machine']['cpu']}, {result['machine']['torch_threads']} threads, torch "
        f"{result['machine']['torch']}, load {result['machine']['load_average_start']} -> "
        f"{result['machine']['load_average_end']}",
        "",
        f"{'':24s}{'ECConv':>14s}{'NNConv':>14s}{'ratio':>10s}",
    ]

    def row(name, key, scale=1.0, fmt="{:14.3f}"):
        a = ec[key] * scale
        line = f"{name:24s}" + fmt.format(a)
        if nn_res is not None:
            b = nn_res[key] * scale
            line += fmt.format(b) + f"{b / a if a else float('inf'):9.1f}x"
        return line

    lines += [row("forward [s] (min)", "forward_s"), row("backward [s] (min)", "backward_s"),
              row("fwd+bwd [s] (min)", "total_s"), row("fwd+bwd [s] (median)", "total_median_s"),
              row("inference fwd [s]", "inference_s"),
              row("peak fwd+bwd [MiB]", "peak_bytes", 1 / mb, "{:14.1f}"),
              row("peak inference [MiB]", "peak_bytes_inference", 1 / mb, "{:14.1f}"), ""]
    fl = result["flops"]
    lines += [
        f"factorised FLOPs: forward {fl['forward'] / 1e9:.2f} G, backward {fl['backward'] / 1e9:.2f} G "
        f"(+ {fl['recompute'] / 1e9:.2f} G recomputed)",
        f"ECConv achieved {ec['gflops']:.1f} GFLOP/s (forward {ec['gflops_forward']:.1f}); dense "
        f"{result['dense']['size']}^3 matmul {result['dense']['gflops']:.1f} GFLOP/s -> "
        f"{100 * ec['fraction_of_dense']:.0f}% of dense, time = {ec['time_over_dense_equivalent']:.2f}x the "
        f"dense-equivalent {ec['dense_equivalent_s']:.3f} s (medians: "
        f"{ec['time_over_dense_equivalent_median']:.2f}x); paired with each round's matmul: "
        f"{ec['time_over_dense_equivalent_paired']:.2f}x (min), {ec['time_over_dense_equivalent_paired_median']:.2f}x "
        f"(median)",
        f"plan (sort + chunks, once per edge_index): {gr['plan_s']:.3f} s, {gr['chunks']} chunks",
    ]
    if "ecconv_bmm" in result:
        bm, sp = result["ecconv_bmm"], result["fused_speedup"]
        lines.append(f"ECConv on the PyTorch bmm path (fused kernels off), same rounds: fwd {bm['forward_s']:.3f} s, "
                     f"bwd {bm['backward_s']:.3f} s, fwd+bwd {bm['total_s']:.3f} s (median {bm['total_median_s']:.3f}),"
                     f" peak {bm['peak_bytes'] / mb:.1f} MiB -> {result['config']['ecconv_path']} path "
                     f"{sp['total']:.2f}x faster (medians {sp['total_median']:.2f}x; forward {sp['forward']:.2f}x, "
                     f"backward {sp['backward']:.2f}x); max |difference| {result['fused_vs_bmm_max_abs_diff']:.1e}")
    if "targets" in result:
        lines.append("targets: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}"
                                             for k, v in result["targets"].items()))
        lines.append(f"speed-up fwd+bwd: {result['ratios']['speedup_total']:.1f}x (mins), "
                     f"{result['ratios']['speedup_total_median']:.1f}x (medians); "
                     f"max |ECConv - NNConv| = {result['max_abs_diff']:.2e}")
    return "\n".join(lines)
