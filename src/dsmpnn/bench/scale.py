r"""How time and memory grow with the mesh: radius graph, forward and backward of an MPNN on N random points.

For each N: N uniform random points in the unit square (``dim=2``) or cube (``dim=3``), the radius that gives about
``neighbors`` neighbours per node away from the boundary (:func:`scale_radius`), the radius graph with its edge
attributes (:func:`dsmpnn.graph.build_graph`, float32), and an MPNN of ``layers`` ECConv layers of ``channels``
channels (inputs: the positions; one output) -- the defaults of ``dsmpnn train``. Measured:

- ``graph_s``: building the radius graph and its edge attributes;
- ``forward_s``: the training forward (grad enabled), the first call, edge plan included; with ``mode="predict"``
  the inference forward (``torch.no_grad``) instead, and no backward;
- ``backward_s``: ``loss.backward()`` of the mean squared output (None with ``mode="predict"``);
- ``peak_mib``: on CPU the process's peak resident memory (VmHWM) above its resident memory before the points were
  made, over graph + forward + backward; ``graph_peak_mib`` the same after the graph alone. On CUDA
  (``device="cuda"``) the graph is built on the CPU as always and copied to the GPU (``transfer_s``), and
  ``peak_mib`` is the CUDA caching allocator's peak above its level before the copy (tensor bytes: graph, model
  activations, gradients); the process's RSS peak is kept as ``rss_peak_mib``.

One forward + backward on a graph of min(N, 2,000) nodes runs first (not counted): one-time costs stay out of
the timings.

Each N runs in a fresh Python process (``python -m dsmpnn.bench.scale --point ...``), so a peak of one N cannot
hide that of the next and every N starts from the same baseline. The slopes of log(time) and log(memory) against
log(N) (least squares, :func:`fit_slopes`) say how they grow: 1 is linear.

Usage: ``dsmpnn bench scale --nodes 1e4,1e5,1e6 --out scale.json --plot scale.png`` or :func:`bench_scale`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

__all__ = ["scale_radius", "run_point", "scale_bytes", "bench_scale", "fit_slopes", "format_scale_table", "plot_scale",
           "write_json", "write_text"]

MIB = 2**20


def scale_radius(nodes: int, dim: int, neighbors: float) -> float:
    """Radius with ``neighbors`` expected neighbours per interior node for ``nodes`` uniform points in the unit
    square (pi r^2 N = k) or cube (4/3 pi r^3 N = k)."""
    if dim == 2:
        return math.sqrt(neighbors / (math.pi * nodes))
    if dim == 3:
        return (3 * neighbors / (4 * math.pi * nodes)) ** (1 / 3)
    raise ValueError(f"dim must be 2 or 3, got {dim}")


def _rss(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


def _reset_peak() -> int:
    """Give freed memory back, reset VmHWM to the current RSS and return that RSS (bytes)."""
    from dsmpnn.bench.measure import _glibc  # noqa: PLC0415

    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _rss("VmRSS:")


MODES = ("train", "predict")
"""What :func:`run_point` times: forward + backward ("train") or the inference forward alone ("predict")."""


def run_point(nodes: int, dim: int = 2, neighbors: float = 25, channels: int = 32, layers: int = 4,
              seed: int = 0, threads: int | None = None, device: str = "cpu", mode: str = "train",
              edge_chunk: int | None = None) -> dict:
    """One N, measured in this process (Linux: peak memory from /proc/self/status; on CUDA the allocator's peak).
    ``edge_chunk``: every ECConv's edges per chunk (None: the library's default, sized for CPU caches; a GPU
    wants far larger chunks, e.g. 2**18, so that kernel launches do not dominate). Returns a JSON-able dict."""
    import torch  # noqa: PLC0415

    from dsmpnn.bench.measure import synchronize  # noqa: PLC0415
    from dsmpnn.graph import build_graph  # noqa: PLC0415
    from dsmpnn.nn import MPNN, ECConv  # noqa: PLC0415
    from dsmpnn.nn.kernels.edge_plan import DEFAULT_EDGE_CHUNK  # noqa: PLC0415

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    radius = scale_radius(nodes, dim, neighbors)
    model = MPNN(dim, 1, dim + 1, hidden=channels, layers=layers).to(dev)
    edge_chunk = DEFAULT_EDGE_CHUNK if edge_chunk is None else int(edge_chunk)
    for conv in model.modules():
        if isinstance(conv, ECConv):
            conv.edge_chunk = edge_chunk
    _warm_up(model, dim, neighbors, seed, min(nodes, 2000), dev, mode)
    base = _reset_peak()
    pos = np.random.default_rng(seed).random((nodes, dim))
    t0 = time.perf_counter()
    graph = build_graph(pos, radius, warn_isolated=False)
    t1 = time.perf_counter()
    graph_peak = _rss("VmHWM:") - base
    if cuda:
        synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        gpu_base = torch.cuda.memory_allocated(dev)
    tc = time.perf_counter()
    x = torch.from_numpy(pos).float().to(dev)  # [N, d]
    edge_index, edge_attr = graph.edge_index.to(dev), graph.edge_attr.to(dev)
    synchronize(dev)
    t2 = time.perf_counter()
    backward_s = None
    if mode == "train":
        out = model(x, edge_index, edge_attr)  # [N, 1]
        loss = out.square().mean()
        synchronize(dev)
        t3 = time.perf_counter()
        loss.backward()
        synchronize(dev)
        backward_s = time.perf_counter() - t3
    else:
        with torch.no_grad():
            out = model(x, edge_index, edge_attr)  # [N, 1]
        synchronize(dev)
        t3 = time.perf_counter()
    finite = bool(torch.isfinite(out).all())
    rss_peak = _rss("VmHWM:") - base
    point = {"nodes": nodes, "dim": dim, "radius": radius, "edges": graph.num_edges,
             "mean_degree": graph.num_edges / nodes, "channels": channels, "layers": layers,
             "threads": torch.get_num_threads(), "device": str(dev), "mode": mode, "edge_chunk": edge_chunk,
             "graph_s": t1 - t0,
             "forward_s": t3 - t2, "backward_s": backward_s, "graph_peak_mib": graph_peak / MIB,
             "peak_mib": rss_peak / MIB, "baseline_mib": base / MIB, "output_finite": finite}
    if cuda:
        point.update(transfer_s=t2 - tc, rss_peak_mib=rss_peak / MIB,
                     peak_mib=(torch.cuda.max_memory_allocated(dev) - gpu_base) / MIB,
                     gpu=torch.cuda.get_device_name(dev))
    return point


def _warm_up(model, dim: int, neighbors: float, seed: int, nodes: int = 2000, device=None,
             mode: str = "train") -> None:
    """One forward (+ backward) on a small graph, so that one-time costs (thread pools, lazy initialisation,
    about 2 s on the test machine; CUDA context, kernel loading and ``torch.compile`` on a GPU) are not counted in
    the first N's times; the gradients are dropped."""
    import torch  # noqa: PLC0415

    from dsmpnn.bench.measure import synchronize  # noqa: PLC0415
    from dsmpnn.graph import build_graph  # noqa: PLC0415

    device = torch.device("cpu") if device is None else device
    pos = np.random.default_rng(seed + 1).random((nodes, dim))
    g = build_graph(pos, scale_radius(nodes, dim, neighbors), warn_isolated=False)
    args = torch.from_numpy(pos).float().to(device), g.edge_index.to(device), g.edge_attr.to(device)
    if mode == "train":
        model(*args).square().mean().backward()
    with torch.no_grad():
        model(*args)
    synchronize(device)
    model.zero_grad(set_to_none=True)


def _run_isolated(nodes: int, dim: int, neighbors: float, channels: int, layers: int, seed: int,
                  threads: int | None, timeout_s: float | None, device: str = "cpu", mode: str = "train",
                  edge_chunk: int | None = None) -> dict:
    """:func:`run_point` in a fresh interpreter; its last stdout line is the JSON result."""
    args = [sys.executable, "-m", "dsmpnn.bench.scale", "--point", str(nodes), "--dim", str(dim), "--neighbors",
            str(neighbors), "--channels", str(channels), "--layers", str(layers), "--seed", str(seed),
            "--device", str(device), "--mode", mode]
    if edge_chunk is not None:
        args += ["--edge-chunk", str(edge_chunk)]
    if threads is not None:
        args += ["--threads", str(threads)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"scale point N={nodes} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def scale_bytes(nodes: int, dim: int, neighbors: float, channels: int, layers: int) -> int:
    """A lower estimate of the peak memory of one point: building its radius graph (:func:`graph_bytes`) plus
    the float32 node activations forward keeps for backward (about 4 per channel, node and layer)."""
    from dsmpnn.graph.radius import graph_bytes  # noqa: PLC0415

    return graph_bytes(int(nodes * neighbors), dim, nodes) + 16 * layers * nodes * channels


def bench_scale(nodes: Sequence[int], dim: int = 2, neighbors: float = 25, channels: int = 32, layers: int = 4,
                seed: int = 0, threads: int | None = None, isolate: bool = True,
                echo: Callable[[str], None] | None = print, timeout_s: float | None = None, device: str = "cpu",
                mode: str = "train", edge_chunk: int | None = None) -> dict:
    """Measure every N of ``nodes`` (each in a fresh process unless ``isolate`` is False) on ``device``, timing
    ``mode`` ("train": forward + backward, "predict": inference forward); returns
    ``{"points": [...], "slopes": {...}, "machine": {...}, "settings": {...}}``."""
    from dsmpnn.bench.conv import machine_info  # noqa: PLC0415
    from dsmpnn.resources import check_resources  # noqa: PLC0415

    largest = max(int(n) for n in nodes)
    check_resources(f"--nodes {largest:,}", scale_bytes(largest, dim, neighbors, channels, layers))
    points = []
    for n in nodes:
        if isolate:
            point = _run_isolated(int(n), dim, neighbors, channels, layers, seed, threads, timeout_s, device, mode,
                                  edge_chunk)
        else:
            point = run_point(int(n), dim, neighbors, channels, layers, seed, threads, device, mode, edge_chunk)
        points.append(point)
        if echo is not None:
            backward = "" if point["backward_s"] is None else f", backward {point['backward_s']:.2f} s"
            echo(f"N={point['nodes']:,}: {point['edges']:,} edges, graph {point['graph_s']:.2f} s, forward "
                 f"{point['forward_s']:.2f} s{backward}, peak {point['peak_mib']:.0f} MiB")
    machine = machine_info(str(device))
    if threads is not None:
        machine["torch_threads"] = threads
    try:
        machine["load_average"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    return {"points": points, "slopes": fit_slopes(points), "machine": machine,
            "settings": {"dim": dim, "neighbors": neighbors, "channels": channels, "layers": layers, "seed": seed,
                         "isolated": isolate, "device": str(device), "mode": mode,
                         "edge_chunk": edge_chunk}}


def fit_slopes(points: Sequence[dict]) -> dict[str, float]:
    """Least-squares slope of log(quantity) against log(N) for each timing and memory column (needs two N)."""
    out: dict[str, float] = {}
    if len({p["nodes"] for p in points}) < 2:
        return out
    logn = np.log([p["nodes"] for p in points])
    for key in ("graph_s", "forward_s", "backward_s", "peak_mib", "edges"):
        if any(p.get(key) is None for p in points):  # e.g. no backward in predict mode
            continue
        vals = np.array([p[key] for p in points], dtype=float)
        if np.all(vals > 0):
            out[key] = float(np.polyfit(logn, np.log(vals), 1)[0])
    return out


def format_scale_table(result: dict) -> str:
    """A Markdown table of the points plus a line with the fitted slopes."""
    s, m = result["settings"], result["machine"]
    where = f"{m['gpu']} (CUDA allocator peak)" if "gpu" in m else f"{m['cpu']}, {m['torch_threads']} threads"
    mode = " (predict: inference forward only)" if s.get("mode") == "predict" else ""
    lines = [f"{s['dim']}D, ~{s['neighbors']:g} neighbours/node, MPNN {s['layers']} layers x {s['channels']} channels, "
             f"float32{mode}; {where}, torch {m['torch']}",
             "| N | edges | graph [s] | forward [s] | backward [s] | peak memory [MiB] |",
             "|---|---|---|---|---|---|"]
    for p in result["points"]:
        backward = "-" if p["backward_s"] is None else f"{p['backward_s']:.2f}"
        lines.append(f"| {p['nodes']:,} | {p['edges']:,} | {p['graph_s']:.2f} | {p['forward_s']:.2f} | "
                     f"{backward} | {p['peak_mib']:.0f} |")
    if result["slopes"]:
        names = {"graph_s": "graph", "forward_s": "forward", "backward_s": "backward", "peak_mib": "memory",
                 "edges": "edges"}
        lines.append("slopes of log(.) vs log(N) (1 = linear): " + ", ".join(
            f"{names[k]} {v:.2f}" for k, v in result["slopes"].items()))
    return "\n".join(lines)


def plot_scale(result: dict, path: str | Path) -> Path:
    """Log-log plot of the times and the peak memory against N, with the fitted slopes; PNG written atomically."""
    import io  # noqa: PLC0415

    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    pts = result["points"]
    n = [p["nodes"] for p in pts]
    slopes = result["slopes"]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("graph_s", "graph"), ("forward_s", "forward"), ("backward_s", "backward")):
        if any(p.get(key) is None for p in pts):
            continue
        extra = f" (slope {slopes[key]:.2f})" if key in slopes else ""
        ax_t.loglog(n, [p[key] for p in pts], "o-", label=label + extra)
    ax_t.set(xlabel="nodes N", ylabel="time [s]", title="time")
    ax_t.legend()
    extra = f" (slope {slopes['peak_mib']:.2f})" if "peak_mib" in slopes else ""
    what = "peak CUDA allocator bytes" if pts and str(pts[0].get("device", "cpu")).startswith("cuda") \
        else "peak RSS above baseline"
    ax_m.loglog(n, [p["peak_mib"] for p in pts], "o-", color="C3", label=what + extra)
    ax_m.set(xlabel="nodes N", ylabel="memory [MiB]", title="peak memory")
    ax_m.legend()
    for ax in (ax_t, ax_m):
        ax.grid(True, which="both", alpha=0.3)
    s = result["settings"]
    fig.suptitle(f"MPNN {s['layers']}x{s['channels']}, {s['dim']}D, ~{s['neighbors']:g} neighbours/node")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return _atomic_write(Path(path), buf.getvalue())


def write_json(result: dict, path: str | Path) -> Path:
    """``result`` as indented JSON with each list of plain values on one line (curves stay one line per
    quantity), written atomically (temporary file, fsync, rename)."""
    text = _FLAT_LIST.sub(lambda m: "[" + re.sub(r"\s*\n\s*", " ", m.group(1)) + "]", json.dumps(result, indent=1))
    return _atomic_write(Path(path), (text + "\n").encode())


_FLAT_LIST = re.compile(r'\[\s+((?:[^\[\]{}"]|"(?:[^"\\]|\\.)*")*?)\s+\]')
"""A JSON list of scalars as json.dumps(indent=...) lays it out (strings may hold any character)."""


def write_text(text: str, path: str | Path) -> Path:
    """``text`` as UTF-8, written atomically (temporary file, fsync, rename)."""
    return _atomic_write(Path(path), text.encode())


def _atomic_write(path: Path, data: bytes) -> Path:
    """``data`` written to ``path`` atomically (:func:`dsmpnn.train.checkpoint.atomic_write_bytes`: temporary file,
    fsync, rename; an OS error becomes a :class:`~dsmpnn.errors.WriteError` naming the file)."""
    from dsmpnn.train.checkpoint import atomic_write_bytes  # noqa: PLC0415 - imports torch, which results need not

    atomic_write_bytes(path, data)
    return path


def _main(argv: list[str] | None = None) -> None:
    """The per-N worker: ``python -m dsmpnn.bench.scale --point N ...`` prints one JSON line."""
    p = argparse.ArgumentParser(description="one point of dsmpnn bench scale (prints JSON)")
    p.add_argument("--point", type=int, required=True)
    p.add_argument("--dim", type=int, default=2)
    p.add_argument("--neighbors", type=float, default=25)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--mode", choices=MODES, default="train")
    p.add_argument("--edge-chunk", type=int, default=None)
    a = p.parse_args(argv)
    print(json.dumps(run_point(a.point, a.dim, a.neighbors, a.channels, a.layers, a.seed, a.threads, a.device,
                               a.mode, a.edge_chunk)))


if __name__ == "__main__":
    _main()
