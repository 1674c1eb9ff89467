"""A scaling model of DS-MPNN to P = 1024 ranks (issue 17 item 4): measure here, fit, predict, compare.

Measures this machine's ECConv layer and MPNN step costs (1 thread) and its gloo halo exchange (2 processes),
partitions uniform 2-D/3-D meshes of 1e5..1e7 nodes into P = 2..1024 with the library's partitioners, and
predicts strong (N = 1e6, 1e7, 1e8) and weak (N/P = 1e5, 1e6) scaling for this CPU's gloo and for assumed H200
GPUs (NVLink within 8-GPU nodes, InfiniBand NDR between them). Library: ``dsmpnn.bench.scaling_model`` (the
model) and ``dsmpnn.bench.scaling_measure`` (measurements, assumptions, report); ``dsmpnn bench model`` runs the
same without the P-rank check.

    python benchmarks/scaling_model.py --check                 # everything, ~12 min on 2 cores
    python benchmarks/scaling_model.py --measured scaling_check.json   # reuse a bench_scaling.py --json run
    python benchmarks/scaling_model.py --quick --out /tmp/m.json       # tiny smoke run (~1 min)

``--check`` first runs ``benchmarks/bench_scaling.py --procs 1 2 4 --methods rcb metis --hops 1`` (strong N =
``--check-nodes``, weak ``--check-per-rank`` per rank) and compares the model with its step times.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from dsmpnn.bench.scale import write_json, write_text
from dsmpnn.bench.scaling_measure import DEFAULT_MESHES, QUICK_RUN, run_scaling_model
from dsmpnn.bench.scaling_report import format_report, plot_scaling_model

HERE = Path(__file__).resolve().parent


def run_check(nodes: int, per_rank: int, steps: int) -> dict:
    """benchmarks/bench_scaling.py at P = 1, 2, 4 (rcb and metis, halo_hops 1); its JSON output."""
    sys.path.insert(0, str(HERE))
    import bench_scaling  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "check.json")
        bench_scaling.main(["--procs", "1", "2", "4", "--methods", "rcb", "metis", "--hops", "1", "--nodes",
                            str(nodes), "--per-rank", str(per_rank), "--steps", str(steps), "--volume-nodes", "0",
                            "--json", out])
        with open(out) as f:
            return json.load(f)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="run benchmarks/bench_scaling.py at P = 1, 2, 4 first")
    ap.add_argument("--check-nodes", type=int, default=50_000, help="strong-scaling mesh of the check (50000)")
    ap.add_argument("--check-per-rank", type=int, default=12_500, help="weak scaling nodes per rank (12500)")
    ap.add_argument("--check-steps", type=int, default=3, help="timed steps per configuration of the check (3)")
    ap.add_argument("--measured", help="a benchmarks/bench_scaling.py --json output to compare with instead")
    ap.add_argument("--quick", action="store_true", help="tiny meshes and measurements (a smoke run)")
    ap.add_argument("--out", default=str(HERE / "results" / "scaling_model.json"), help="JSON of everything")
    ap.add_argument("--plot", default=str(HERE / "scaling_model.png"), help="efficiency plot (PNG)")
    ap.add_argument("--report", default=None, help="also write the Markdown tables to this file")
    ap.add_argument("--survey-cache", default=None,
                    help="an .npz of partition loads, read when present and written after the survey (the survey is "
                         "deterministic; this skips ~7 min on a rerun)")
    ap.add_argument("--from-json", default=None, help="render the report and plot of an earlier --out file only")
    ap.add_argument("--save-check", default=None, help="also keep the --check measurements in this JSON file")
    args = ap.parse_args(argv)

    if args.from_json:  # only render the report and the plot again
        with open(args.from_json) as f:
            result = json.load(f)
        report = format_report(result, (2, 8, 64, 256, 1024))
        print(report)
        print(f"wrote {plot_scaling_model(result, args.plot)}")
        if args.report:
            written = write_text(report + "\n", args.report)
            print(f"wrote {written}")
        return
    measured = None
    if args.measured:
        with open(args.measured) as f:
            measured = json.load(f)
    elif args.check:
        measured = run_check(args.check_nodes, args.check_per_rank, args.check_steps)
        if args.save_check:
            print(f"wrote {write_json(measured, args.save_check)}")
    result = run_scaling_model(measured=measured, survey_cache=args.survey_cache,
                               **(QUICK_RUN if args.quick else {"meshes": DEFAULT_MESHES}))
    print(f"wrote {write_json(result, args.out)}")
    report = format_report(result, (2, 8, 64) if args.quick else (2, 8, 64, 256, 1024))
    print("\n" + report)
    print(f"wrote {plot_scaling_model(result, args.plot)}")
    if args.report:
        written = write_text(report + "\n", args.report)
        print(f"wrote {written}")
    print(f"# {result['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
