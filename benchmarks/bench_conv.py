"""ECConv vs PyG NNConv on the issue-5 reference case: prints a table and writes the full result as JSON.

    python benchmarks/bench_conv.py                       # 20,000 nodes, r = 0.02, C = 32, H = 64, mean
    python benchmarks/bench_conv.py --threads 1 --repeats 5 --out benchmarks/bench_conv_1thread.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dsmpnn.bench import bench_conv, format_table


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=20_000, help="random nodes in the unit square (default 20000)")
    p.add_argument("--radius", type=float, default=0.02, help="graph radius (default 0.02)")
    p.add_argument("--channels", type=int, default=32, help="input = output channels (default 32)")
    p.add_argument("--hidden", type=int, default=64, help="kernel MLP hidden width H (default 64)")
    p.add_argument("--aggr", choices=["mean", "sum"], default="mean")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (default 3)")
    p.add_argument("--edge-chunk", type=int, default=None, help="ECConv edges per chunk (default: the library's)")
    p.add_argument("--dense-size", type=int, default=4096, help="size of the reference dense matmul")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's setting)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-nnconv", action="store_true", help="skip PyG NNConv (no ratios)")
    p.add_argument("--with-bmm", action="store_true", help="also time ECConv with the fused kernels off")
    p.add_argument("--out", type=Path, default=Path("benchmarks/bench_conv.json"), help="JSON output file")
    a = p.parse_args(argv)
    kwargs = {} if a.edge_chunk is None else {"edge_chunk": a.edge_chunk}
    result = bench_conv(a.nodes, a.radius, a.channels, a.hidden, a.repeats, a.device, aggr=a.aggr,
                        dtype=getattr(torch, a.dtype), dense_size=a.dense_size, nnconv=not a.no_nnconv,
                        threads=a.threads, with_bmm=a.with_bmm, **kwargs)
    print(format_table(result))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
