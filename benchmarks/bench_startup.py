"""Start-up cost of ``--nproc``: wall time of ``dsmpnn predict`` and ``dsmpnn train`` (1 epoch) with and without
``--nproc P`` on a tiny dataset, and where the time goes.

Makes a tiny Darcy dataset (8 meshes of 16 x 16 nodes) and a tiny run (1 epoch, a 1.6k-parameter model) in a
temporary directory, then runs, as a user would (``python -m dsmpnn.cli`` in a fresh process each time, wall time
from start to exit), ``--rounds`` interleaved rounds of

    predict RUN --input MESH --out OUT            predict ... --nproc P
    train --data D --out NEW ... train.epochs=1   train ... --nproc P

and prints min and median per command and the difference ``--nproc P`` minus one process. With ``--phases`` every
run also sets ``DSMPNN_TRACE_STARTUP=1`` (see :mod:`dsmpnn.startup_trace`) and the table gets, per command, the
median time at which each phase ended (seconds from the start of the command) over the rounds.

    .venv/bin/python benchmarks/bench_startup.py                  # 5 rounds, P = 2; about 2 minutes on 2 cores
    .venv/bin/python benchmarks/bench_startup.py --rounds 3 --phases --json startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY = ["model.hidden=8", "model.layers=2", "model.kernel_hidden=[8]", "model.encoder_hidden=[8]",
        "model.decoder_hidden=[8]", "graph.radius=0.3", "graph.sample_nodes=48", "train.batch_graphs=2",
        "eval.plot_samples=0", "train.epochs=1"]
PHASE = re.compile(r"^\[dsmpnn startup\] ([+-]\d+\.\d+) s ([^:]+): (.*)$")


def cli(*argv: str, env: dict | None = None) -> tuple[float, str]:
    """Run ``python -m dsmpnn.cli ARGV``; (wall seconds, stderr). Raises when it fails."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "dsmpnn.cli", *argv], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"dsmpnn {' '.join(argv)} exited with {done.returncode}:\n{done.stderr}")
    return seconds, done.stderr


def phases(stderr: str) -> dict[str, float]:
    """{"who: phase": seconds} from the DSMPNN_TRACE_STARTUP lines (the latest time when a phase repeats)."""
    out: dict[str, float] = {}
    for line in stderr.splitlines():
        m = PHASE.match(line)
        if m:
            key = f"{m.group(2)}: {m.group(3)}"
            out[key] = max(out.get(key, float("-inf")), float(m.group(1)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the four commands")
    p.add_argument("--nproc", type=int, default=2, help="ranks of the --nproc runs")
    p.add_argument("--phases", action="store_true", help="trace the start-up phases (DSMPNN_TRACE_STARTUP=1)")
    p.add_argument("--json", default=None, metavar="FILE", help="write the raw times as JSON")
    a = p.parse_args()

    env = dict(os.environ)
    env.pop("DSMPNN_TRACE_T0", None)
    if a.phases:
        env["DSMPNN_TRACE_STARTUP"] = "1"
    with tempfile.TemporaryDirectory(prefix="dsmpnn-startup-") as tmp:
        root = Path(tmp)
        cli("generate", "darcy", "--n", "8", "--resolution", "16", "--out", str(root / "d"), "--no-progress")
        cli("train", "--data", str(root / "d"), "--out", str(root / "run"), "--no-progress", *TINY)
        mesh = next((root / "d" / "samples").glob("*.npz"))
        nproc = ["--nproc", str(a.nproc)]
        commands = {
            "predict": lambda k, extra: ["predict", str(root / "run"), "--input", str(mesh), "--out",
                                         str(root / f"out{k}.npz"), *extra],
            "train 1 epoch": lambda k, extra: ["train", "--data", str(root / "d"), "--out", str(root / f"r{k}"),
                                               "--no-progress", *TINY, *extra],
        }
        times: dict[str, list[float]] = {}
        traced: dict[str, list[dict[str, float]]] = {}
        k = 0
        for _ in range(a.rounds):
            for name, argv in commands.items():
                for label, extra in ((name, []), (f"{name} --nproc {a.nproc}", nproc)):
                    k += 1
                    seconds, err = cli(*argv(k, extra), env=env)
                    times.setdefault(label, []).append(seconds)
                    traced.setdefault(label, []).append(phases(err))

    print(f"dsmpnn start-up, {a.rounds} interleaved rounds, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{'command':<28} {'min s':>7} {'median s':>9}")
    for label, ts in times.items():
        print(f"{label:<28} {min(ts):7.2f} {statistics.median(ts):9.2f}")
    for name in commands:
        one, many = times[name], times[f"{name} --nproc {a.nproc}"]
        print(f"--nproc {a.nproc} adds to {name}: min {min(many) - min(one):+.2f} s, "
              f"median {statistics.median(many) - statistics.median(one):+.2f} s")
    if a.phases:
        for label, runs in traced.items():
            keys = sorted({key for r in runs for key in r}, key=lambda key: statistics.median(
                [r[key] for r in runs if key in r]))
            print(f"\n{label}: phase ends, seconds from the start (median over {len(runs)} rounds)")
            for key in keys:
                print(f"  {statistics.median([r[key] for r in runs if key in r]):7.3f}  {key}")
    if a.json:
        Path(a.json).write_text(json.dumps({"rounds": a.rounds, "nproc": a.nproc, "times": times,
                                            "phases": traced}, indent=1))


if __name__ == "__main__":
    main()
