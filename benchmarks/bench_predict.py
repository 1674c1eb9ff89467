"""Time and peak memory per rank of ``dsmpnn predict`` on one large mesh, with one process and with ``--nproc P``.

    python benchmarks/bench_predict.py --nodes 1e7 --nproc 1,2,4 --work /tmp/bench_predict \
        [--partition rcb] [--json benchmarks/results/bench_predict.json]

The mesh: N uniform random points in the unit square, input field ``a = sin(2 pi x) cos(2 pi y)``, no targets,
written once as a dsmpnn sample ``.npz``. The radius gives about 25 neighbours per node (as ``dsmpnn bench
scale``), so the full radius graph has ~25 N edges. The model (4 layers of 32 channels, kernel MLP [32], the
demo's shape) is trained for one epoch on four 25,000-node patches (N / 4 for a small N) of the same point
density, so it sees the graphs it predicts on; its accuracy is not the point.

Each predict runs as its own command (``dsmpnn predict RUN --input MESH --out OUT [--nproc P --partition ...]``),
one after the other. Recorded per command: wall time (launch included), the peak resident memory of every rank as
the command itself reports it (``peak memory per rank``), and the largest difference of the prediction from the
one-process one.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

NEIGHBORS = 25.0
PATCH_NODES = 25_000


def radius_for(nodes: int) -> float:
    return math.sqrt(NEIGHBORS / (math.pi * nodes))


def field(pos: np.ndarray) -> np.ndarray:
    return (np.sin(2 * np.pi * pos[:, 0]) * np.cos(2 * np.pi * pos[:, 1]))[:, None]


def make_run(work: Path, nodes: int, dsmpnn: str) -> Path:
    """A run trained one epoch on 25,000-node patches with the point density of an N-node unit square."""
    from dsmpnn.data.dataset import Field, write_dataset
    from dsmpnn.data.sample import MeshSample

    run = work / f"run_{nodes}"
    if (run / "config.yaml").exists():
        return run
    rng = np.random.default_rng(1)
    size = min(PATCH_NODES, nodes // 4)
    side = math.sqrt(size / nodes)

    def patch(k: int) -> tuple[str, MeshSample]:
        pos = rng.random((size, 2)) * side + rng.random(2) * (1 - side)
        a = field(pos)
        return ("train" if k < 3 else "val"), MeshSample(pos, a, a**2 + pos[:, :1], name=f"patch{k}")

    data = work / f"data_{nodes}"
    if not data.exists():
        write_dataset(data, (patch(k) for k in range(4)), [Field("a")], [Field("u")], "bench_predict patches")
    overrides = [f"graph.radius={radius_for(nodes)}", f"graph.sample_nodes={min(5000, size)}",
                 "graph.samples_per_mesh=1", "train.epochs=1", "train.batch_graphs=1", "model.hidden=32",
                 "model.layers=4", "model.kernel_hidden=[32]", "distributed.partition=rcb"]
    subprocess.run([dsmpnn, "train", "--data", str(data), "--out", str(run), *overrides], check=True,
                   stdout=subprocess.DEVNULL)
    return run


def make_mesh(work: Path, nodes: int) -> Path:
    from dsmpnn.data.dataset import write_sample_file
    from dsmpnn.data.sample import MeshSample

    path = work / f"mesh_{nodes}.npz"
    if not path.exists():
        pos = np.random.default_rng(0).random((nodes, 2))
        tmp = path.with_name(path.stem + ".tmp.npz")
        write_sample_file(tmp, MeshSample(pos, field(pos), name=f"square{nodes}"))
        tmp.replace(path)
    return path


PEAK_LINE = re.compile(r"peak memory per rank \[GiB\]: ([0-9., ]+)")
PHASE_LINE = re.compile(r"seconds: read ([0-9.]+), graph \+ model ([0-9.]+), write ([0-9.]+)")


def predict(dsmpnn: str, run: Path, mesh: Path, out: Path, nproc: int, partition: str) -> dict:
    cmd = [dsmpnn, "predict", str(run), "--input", str(mesh), "--out", str(out)]
    if nproc > 1:
        cmd += ["--nproc", str(nproc), "--partition", partition]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    found = PEAK_LINE.search(proc.stdout)
    if found is None:
        raise SystemExit(f"{' '.join(cmd)}: no 'peak memory per rank' line in its output:\n{proc.stdout[-2000:]}")
    peaks = [float(v) for v in found.group(1).split(",")]
    phases = PHASE_LINE.search(proc.stdout)  # what predict says of its own phases (launch and start-up excluded)
    seconds = dict(zip(("read", "graph_and_model", "write"), map(float, phases.groups()))) if phases else None
    return {"nproc": nproc, "command": " ".join(cmd), "wall_s": wall, "phase_s": seconds, "peak_gib_per_rank": peaks}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=float, default=1e6)
    ap.add_argument("--nproc", default="1,2", help="comma-separated rank counts, 1 = one process")
    ap.add_argument("--partition", default="rcb", choices=["slab", "rcb", "metis"])
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_predict"))
    ap.add_argument("--json", type=Path, help="append the results to this JSON file (a list of runs)")
    ap.add_argument("--keep", action="store_true", help="keep the prediction files")
    args = ap.parse_args(argv)
    nodes = int(args.nodes)
    dsmpnn = str(Path(sys.executable).with_name("dsmpnn"))
    args.work.mkdir(parents=True, exist_ok=True)
    run, mesh = make_run(args.work, nodes, dsmpnn), make_mesh(args.work, nodes)
    results, reference = [], None
    for p in (int(v) for v in args.nproc.split(",")):
        out = args.work / f"pred_{nodes}_p{p}.npz"
        res = predict(dsmpnn, run, mesh, out, p, args.partition)
        with np.load(out) as z:
            pred = z["pred"]
        if reference is None:
            reference = pred
        res["max_abs_diff_vs_first"] = float(np.abs(pred - reference).max())
        res.update(nodes=nodes, partition=args.partition if p > 1 else None)
        print(json.dumps(res), flush=True)
        results.append(res)
        if not args.keep:
            out.unlink()
    if args.json:
        from dsmpnn.bench.scale import write_json

        old = json.loads(args.json.read_text()) if args.json.exists() else []
        write_json(old + [{**r, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())} for r in results],
                   args.json)


if __name__ == "__main__":
    main()
