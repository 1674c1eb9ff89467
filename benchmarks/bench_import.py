"""Import speed of ``dsmpnn import mesh`` on a large ``.vtu``: files/s, nodes/s and peak memory.

Writes ``--files`` copies of a ``.vtu`` (meshio, binary, zlib-compressed: meshio's default) of a structured
``S x S`` grid on the unit square, ``S = round(sqrt(--nodes))``, cut into triangles, with point data ``U [N, 3]``,
``p``, ``T`` (z = 0, so the mesh imports as 2D); then runs ``dsmpnn import mesh`` on them (``--inputs U
--targets p,T``, one process, as a user would) and reports the wall time, files/s, nodes/s and the peak resident
memory above the level before the import (:func:`dsmpnn.bench.measure.peak_memory`, Linux: VmHWM). Writing the
input files is not timed.

    .venv/bin/python benchmarks/bench_import.py                       # 1e6 nodes, one file; about a minute
    .venv/bin/python benchmarks/bench_import.py --nodes 1e5 --files 10 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import meshio
import numpy as np

from dsmpnn.bench.measure import peak_memory
from dsmpnn.cli import main


def write_vtu(path: Path, side: int, seed: int) -> int:
    """A ``side x side`` triangulated grid with three point fields; returns the node count."""
    x, y = np.meshgrid(np.linspace(0, 1, side), np.linspace(0, 1, side))
    pts = np.column_stack([x.ravel(), y.ravel(), np.zeros(side * side)])
    node = np.arange(side * side).reshape(side, side)
    a, b, c, d = node[:-1, :-1].ravel(), node[:-1, 1:].ravel(), node[1:, 1:].ravel(), node[1:, :-1].ravel()
    tris = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    rng = np.random.default_rng(seed)
    n = len(pts)
    data = {"U": rng.standard_normal((n, 3)), "p": np.sin(3 * pts[:, 0]) * np.cos(2 * pts[:, 1]),
            "T": rng.random(n)}
    meshio.write(path, meshio.Mesh(pts, [("triangle", tris)], point_data=data))
    return n


def run(nodes: int, files: int, workdir: Path) -> dict:
    side = max(2, round(nodes ** 0.5))
    t0 = time.perf_counter()
    counts = [write_vtu(workdir / f"case{k:03d}.vtu", side, k) for k in range(files)]
    write_s = time.perf_counter() - t0
    size = sum((workdir / f"case{k:03d}.vtu").stat().st_size for k in range(files))
    argv = ["import", "mesh", str(workdir / "case*.vtu"), "--out", str(workdir / "ds"), "--inputs", "U",
            "--targets", "p,T", "--split", "1,0,0", "--no-progress"]
    result = {}

    def command() -> None:
        start = time.perf_counter()
        code = main(argv)
        result["seconds"] = time.perf_counter() - start
        if code != 0:
            raise SystemExit(f"dsmpnn import mesh exited {code}")

    peak, method = peak_memory(command)
    total = sum(counts)
    out_bytes = sum(p.stat().st_size for p in (workdir / "ds").rglob("*") if p.is_file())
    return {"files": files, "nodes_per_file": counts[0], "nodes": total, "triangles_per_file": 2 * (side - 1) ** 2,
            "vtu_bytes": size, "dataset_bytes": out_bytes, "write_inputs_s": write_s, "import_s": result["seconds"],
            "files_per_s": files / result["seconds"], "nodes_per_s": total / result["seconds"],
            "peak_bytes": peak, "peak_method": method, "peak_bytes_per_node": peak / counts[0],
            "cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
            "meshio": meshio.__version__}


def main_() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=float, default=1e6, help="nodes per file (a square grid, rounded)")
    ap.add_argument("--files", type=int, default=1, help="number of files")
    ap.add_argument("--json", default=None, help="write the result here as JSON")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench_import-"))
    try:
        r = run(int(args.nodes), args.files, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"dsmpnn import mesh: {r['files']} file(s) x {r['nodes_per_file']:,} nodes ({r['triangles_per_file']:,} "
          f"triangles, {r['vtu_bytes'] / 2**20:.1f} MiB of .vtu) on {r['cpus']} CPU(s)")
    print(f"  import {r['import_s']:.2f} s: {r['files_per_s']:.3g} files/s, {r['nodes_per_s']:.3g} nodes/s")
    print(f"  peak memory {r['peak_bytes'] / 2**20:.0f} MiB above the start ({r['peak_method']}), "
          f"{r['peak_bytes_per_node']:.0f} bytes/node; dataset {r['dataset_bytes'] / 2**20:.1f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main_()
