"""Helpers of benchmarks/gpu_check.sh (issue 15): the training-step throughput comparison, and the merging of
per-step results into the one summary the device machine sends back.

    python benchmarks/gpu_check.py train --devices cuda,cpu --nodes 20000 --steps 10 --out train.json
    python benchmarks/gpu_check.py merge-scale --out scale.json part1.json part2.json ...
    python benchmarks/gpu_check.py summary --dir OUT --steps steps.tsv --out OUT/summary.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def train_throughput(device: str, nodes: int, steps: int, warmup: int, edge_chunk: int | None, seed: int = 0) -> dict:
    """Adam steps of the `dsmpnn train` default MPNN (4 layers x 32 channels, kernel MLP 64) on one fixed radius
    graph of ``nodes`` random points (~25 neighbours), float32, MSE against a smooth target: seconds per step
    (median and min of ``steps`` timed steps after ``warmup``), and the losses (the same start on every device)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from dsmpnn.bench.measure import synchronize
    from dsmpnn.bench.scale import scale_radius
    from dsmpnn.graph import build_graph
    from dsmpnn.nn import MPNN, ECConv

    dev = torch.device(device)
    pos = np.random.default_rng(seed).random((nodes, 2))
    graph = build_graph(pos, scale_radius(nodes, 2, 25), warn_isolated=False)
    x = torch.from_numpy(pos).float()
    y = torch.stack([torch.sin(3 * x[:, 0]) * torch.cos(2 * x[:, 1]), x.square().sum(1)], 1)
    torch.manual_seed(seed)
    model = MPNN(2, 2, 3, hidden=32, layers=4, kernel_hidden=(64,))
    if edge_chunk is not None:
        for m in model.modules():
            if isinstance(m, ECConv):
                m.edge_chunk = edge_chunk
    model = model.to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y, ei, ea = x.to(dev), y.to(dev), graph.edge_index.to(dev), graph.edge_attr.to(dev)
    times, losses = [], []
    for i in range(warmup + steps):
        synchronize(dev)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(x, ei, ea), y)
        loss.backward()
        opt.step()
        synchronize(dev)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        losses.append(float(loss))
    out = {"device": str(dev), "nodes": nodes, "edges": graph.num_edges, "steps": steps, "warmup": warmup,
           "edge_chunk": edge_chunk, "step_s_median": float(np.median(times)), "step_s_min": min(times),
           "losses": losses, "threads": torch.get_num_threads()}
    if dev.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(dev)
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return out


def cmd_train(a: argparse.Namespace) -> int:
    import torch

    result: dict = {"runs": [], "skipped": []}
    for spec in a.devices.split(","):
        name, _, chunk = spec.partition("@")  # "cuda@262144": that edge chunk
        if name.startswith("cuda") and not torch.cuda.is_available():
            result["skipped"].append(f"{spec}: skipped: no CUDA")
            print(f"train throughput {spec}: skipped: no CUDA", flush=True)
            continue
        run = train_throughput(name, a.nodes, a.steps, a.warmup, int(chunk) if chunk else None)
        print(f"train throughput {spec}: {run['step_s_median'] * 1e3:.1f} ms/step (median of {a.steps}; "
              f"{run['nodes']:,} nodes, {run['edges']:,} edges), first loss {run['losses'][0]:.6f}", flush=True)
        run["spec"] = spec
        result["runs"].append(run)
    cpu = [r for r in result["runs"] if r["device"] == "cpu"]
    for r in result["runs"]:
        if r["device"] != "cpu" and cpu:
            r["speedup_vs_cpu"] = cpu[0]["step_s_median"] / r["step_s_median"]
            r["first_loss_rel_diff_vs_cpu"] = abs(r["losses"][0] - cpu[0]["losses"][0]) / abs(cpu[0]["losses"][0])
            print(f"  {r['spec']}: {r['speedup_vs_cpu']:.1f}x the CPU's steps/s; first loss differs by "
                  f"{r['first_loss_rel_diff_vs_cpu']:.1e} (relative)", flush=True)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


def cmd_merge_scale(a: argparse.Namespace) -> int:
    """One scale.json from several one-N results of `dsmpnn bench scale` (the script runs each N on its own
    timeout, so a too-large N costs only its own step)."""
    from dsmpnn.bench.scale import fit_slopes, format_scale_table

    parts = [json.loads(Path(p).read_text()) for p in a.parts if Path(p).is_file() and Path(p).stat().st_size]
    merged: dict = {"points": [], "runs": []}
    for part in parts:
        merged["points"] += [dict(p, settings_mode=part["settings"]["mode"]) for p in part["points"]]
        merged["runs"].append({"settings": part["settings"], "machine": part["machine"]})
    for mode in ("train", "predict"):
        pts = [p for p in merged["points"] if p["mode"] == mode]
        if pts:
            merged[f"slopes_{mode}"] = fit_slopes(pts)
            merged[f"largest_{mode}"] = max(p["nodes"] for p in pts)
            print(format_scale_table({"points": pts, "slopes": merged[f"slopes_{mode}"],
                                      "settings": parts[0]["settings"] | {"mode": mode},
                                      "machine": parts[0]["machine"]}), flush=True)
    Path(a.out).write_text(json.dumps(merged, indent=1) + "\n")
    return 0


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def cmd_summary(a: argparse.Namespace) -> int:
    """summary.json: every step's status and time (from the script's steps.tsv) and the key numbers."""
    out = Path(a.dir)
    steps = []
    for line in Path(a.steps).read_text().splitlines():
        name, status, seconds, note = (line.split("\t") + ["", "", "", ""])[:4]
        steps.append({"step": name, "status": status, "seconds": float(seconds or 0), "note": note})
    summary: dict = {"steps": steps, "device": os.environ.get("GPU_CHECK_DEVICE"),
                     "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for name in ("conv", "conv_large"):
        r = _read(out / f"{name}.json")
        if r:
            summary[name] = {"config": r["config"], "gpu": r["machine"].get("gpu"), "ratios": r.get("ratios"),
                             "targets": r.get("targets"), "max_abs_diff": r.get("max_abs_diff"),
                             "ecconv_total_s": r["ecconv"]["total_s"], "ecconv_peak_mib": r["ecconv"]["peak_bytes"] / 2**20,
                             "nnconv_total_s": (r.get("nnconv") or {}).get("total_s"),
                             "nnconv_peak_mib": (r.get("nnconv") or {}).get("peak_bytes", 0) / 2**20}
    r = _read(out / "scale.json")
    if r:
        summary["scale"] = {k: v for k, v in r.items() if k.startswith(("largest", "slopes"))}
        summary["scale"]["points"] = [{k: p.get(k) for k in ("nodes", "edges", "mode", "device", "graph_s",
                                                             "forward_s", "backward_s", "peak_mib", "output_finite")}
                                      for p in r["points"]]
    r = _read(Path(a.train)) if a.train else None
    if r:
        summary["train"] = {"skipped": r["skipped"], "runs": [{k: v for k, v in run.items() if k != "losses"}
                                                              | {"first_loss": run["losses"][0]} for run in r["runs"]]}
    tests = out / "tests.txt"
    if tests.is_file():
        lines = [ln for ln in tests.read_text().splitlines() if ln.strip()]
        summary["tests"] = {"result_lines": [ln for ln in lines if " passed" in ln or " failed" in ln or " error" in ln
                                             or " skipped" in ln][-4:],
                            "nccl": [ln for ln in lines if "nccl" in ln.lower()][-6:]}
    Path(a.out).write_text(json.dumps(summary, indent=1) + "\n")
    bad = [s["step"] for s in steps if s["status"] not in ("ok", "skipped")]
    print(f"summary: {len(steps)} steps, not ok: {bad or 'none'}; wrote {a.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--devices", default="cuda,cpu", help="comma-separated; cuda@CHUNK sets the ECConv edge chunk")
    t.add_argument("--nodes", type=int, default=20_000)
    t.add_argument("--steps", type=int, default=10)
    t.add_argument("--warmup", type=int, default=2)
    t.add_argument("--out", required=True)
    t.set_defaults(fn=cmd_train)
    m = sub.add_parser("merge-scale")
    m.add_argument("--out", required=True)
    m.add_argument("parts", nargs="*")
    m.set_defaults(fn=cmd_merge_scale)
    s = sub.add_parser("summary")
    s.add_argument("--dir", required=True)
    s.add_argument("--steps", required=True)
    s.add_argument("--train", default=None)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_summary)
    a = p.parse_args(argv)
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
