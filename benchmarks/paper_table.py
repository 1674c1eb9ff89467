"""The DS-MPNN paper's results table at small scale: S-MPNN, DS-MPNN (P ranks) and GCN on every dataset.

For each dataset (Darcy, airfoil low / high fidelity, 3D step) this script generates a small dataset into
``--work`` when it is missing, then trains and evaluates through the CLI, one subprocess per run:

- S-MPNN: ``dsmpnn train`` (one process);
- DS-MPNN P: ``dsmpnn train --nproc P`` and ``dsmpnn evaluate --nproc P`` (exact graph halo, METIS partition);
- GCN: ``dsmpnn train ... model.kind=gcn`` (one process; width matched to the MPNN's parameter count).

and an overlap-length ablation on the low-fidelity airfoils: DS-MPNN P=2 with the paper's geometric overlap
l = 0.5 r, r, 2 r (``distributed.overlap``). It writes ``WORK/paper_table.md`` (Markdown) and
``WORK/paper_table.json`` (every number).

Measured per run: RMSE per target field and mean relative L2 on the test split (physical units, full graph),
training time per epoch (mean of the logged ``epoch_seconds`` of epochs 2..E, i.e. without validation and
checkpointing), and peak memory: the process tree of the ``dsmpnn train`` command is polled every 0.1 s with
psutil; "max/rank" is the largest RSS of any one process, "sum" the largest sum of RSS over the tree (with
``--nproc`` the tree is the launcher plus P ranks). Threads: a one-process run gets ``--threads`` torch threads,
each of P ranks ``max(1, threads // P)``.

    python benchmarks/paper_table.py --work /tmp/ptable --epochs 6
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
DSMPNN = [sys.executable, "-m", "dsmpnn.cli"]


def run(cmd: list[str], log: Path) -> dict:
    """Run ``cmd``, appending its output to ``log``; returns wall seconds and peak RSS (MiB) of its tree."""
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        root = psutil.Process(proc.pid)
        peak_sum = peak_max = 0
        while proc.poll() is None:
            try:
                procs = [root] + root.children(recursive=True)
                rss = []
                for p in procs:
                    try:
                        rss.append(p.memory_info().rss)
                    except psutil.Error:
                        pass
                peak_sum, peak_max = max(peak_sum, sum(rss)), max(peak_max, max(rss, default=0))
            except psutil.Error:
                pass
            time.sleep(0.1)
    if proc.returncode != 0:
        raise SystemExit(f"command failed (exit {proc.returncode}), see {log}: {' '.join(cmd)}")
    return {"wall_s": time.perf_counter() - t0, "rss_sum_mib": peak_sum / 2**20, "rss_max_mib": peak_max / 2**20}


def datasets(args: argparse.Namespace) -> list[dict]:
    """Name, generate command, config and overrides of each dataset."""
    small = [f"train.epochs={args.epochs}", f"train.eval_every={args.epochs}",
             f"train.checkpoint_every={args.epochs}", f"graph.samples_per_mesh={args.samples_per_mesh}",
             "eval.plot_samples=2"]
    return [
        {"name": "darcy", "title": f"Darcy {args.darcy_res}x{args.darcy_res}",
         "gen": ["generate", "darcy", "--n", str(args.darcy_n), "--resolution", str(args.darcy_res)],
         "config": "configs/darcy_demo.yaml", "overrides": small},
        {"name": "airfoil_low", "title": "Airfoil (low fidelity)",
         "gen": ["generate", "airfoil", "--fidelity", "low", "--n", str(args.airfoil_low_n)],
         "config": "configs/airfoil_low.yaml", "overrides": small},
        {"name": "airfoil_high", "title": "Airfoil (high fidelity)",
         "gen": ["generate", "airfoil", "--fidelity", "high", "--n", str(args.airfoil_high_n)],
         "config": "configs/airfoil_high.yaml", "overrides": small},
        {"name": "step3d", "title": "3D step",
         "gen": ["generate", "step3d", "--n", str(args.step3d_n)],
         "config": "configs/step3d.yaml", "overrides": small},
    ]


def epoch_seconds(run_dir: Path) -> float:
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    secs = [r["epoch_seconds"] for r in recs if "epoch_seconds" in r]
    return sum(secs[1:]) / len(secs[1:]) if len(secs) > 1 else secs[0]


def train_eval(ds: dict, label: str, data: Path, runs: Path, log: Path, nproc: int, threads: int,
               extra: list[str], plots: bool) -> dict:
    out = runs / f"{ds['name']}_{label}"
    if out.exists():
        shutil.rmtree(out)
    per_rank = threads if nproc == 1 else max(1, threads // nproc)
    ds_opts = ["--nproc", str(nproc)] if nproc > 1 else []
    cmd = DSMPNN + ["train", "--config", ds["config"], "--data", str(data), "--out", str(out), "--no-progress",
                    *ds_opts, *ds["overrides"], f"train.threads={per_rank}", *extra]
    print(f"[{time.strftime('%H:%M:%S')}] {ds['name']} {label}: train", flush=True)
    t = run(cmd, log)
    ev = run(DSMPNN + ["evaluate", str(out), "--split", "test", *ds_opts] + ([] if plots else ["--no-plots"]), log)
    m = json.loads((out / "metrics.json").read_text())
    params = None
    for line in log.read_text().splitlines()[::-1]:
        if line.startswith("training ") and " parameters " in line:
            params = int(line.split()[1].replace(",", ""))
            break
    res = {"dataset": ds["name"], "model": label, "nproc": nproc, "threads_per_rank": per_rank,
           "rmse": m["rmse"], "rel_l2": m["rel_l2"], "epoch_s": epoch_seconds(out), "train_wall_s": t["wall_s"],
           "eval_wall_s": ev["wall_s"], "rss_max_mib": t["rss_max_mib"], "rss_sum_mib": t["rss_sum_mib"],
           "params": params, "run": str(out)}
    print(f"    rel L2 {res['rel_l2']:.4f}, {res['epoch_s']:.2f} s/epoch, peak RSS max/rank "
          f"{res['rss_max_mib']:.0f} MiB, sum {res['rss_sum_mib']:.0f} MiB, train {t['wall_s']:.0f} s", flush=True)
    return res


def halo_size(data: Path, config: str, overlap: float | None, nproc: int) -> dict:
    """Halo rows (summed over ranks) of test mesh 0 on its full radius graph, METIS partition."""
    import numpy as np

    from dsmpnn.data.dataset import Dataset
    from dsmpnn.graph import build_halo_plans, build_overlap_plans, partition, radius_graph
    from dsmpnn.train.config import load_config

    cfg = load_config(ROOT / config)
    d = Dataset(data)
    s = d.load(d.split("test")[0])
    ei = radius_graph(s.pos, cfg.graph.radius, cfg.graph.max_neighbors, warn_isolated=False)
    owner = partition(s.pos, nproc, "metis", ei)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plans = (build_halo_plans(owner, ei, 1, nproc) if overlap is None
                 else build_overlap_plans(owner, ei, s.pos, overlap, cfg.graph.radius, nproc))
    full = int(ei.shape[1])
    kept = int(np.sum([p.num_edges for p in plans]))
    return {"halo_rows": int(sum(p.num_halo for p in plans)), "nodes": s.num_nodes, "edges_kept": kept,
            "edges": full}


def fmt_table(results: list[dict], titles: dict[str, str]) -> str:
    lines = ["| dataset | model | params | RMSE per field | mean rel. L2 | s / epoch | peak RSS max/rank (MiB) "
             "| peak RSS sum (MiB) |", "|---|---|---:|---|---:|---:|---:|---:|"]
    for r in results:
        rmse = ", ".join(f"{k} {v:.4g}" for k, v in r["rmse"].items())
        lines.append(f"| {titles[r['dataset']]} | {r['model']} | {r['params'] or ''} | {rmse} | {r['rel_l2']:.6f} "
                     f"| {r['epoch_s']:.2f} | {r['rss_max_mib']:.0f} | {r['rss_sum_mib']:.0f} |")
    return "\n".join(lines)


def fmt_ablation(rows: list[dict]) -> str:
    lines = ["| overlap l | l / r | halo rows (test mesh 0, P=2) | edges into owned nodes kept | mean rel. L2 | "
             "RMSE per field | s / epoch |", "|---|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        rmse = ", ".join(f"{k} {v:.4g}" for k, v in r["rmse"].items())
        h = r["halo"]
        lines.append(f"| {r['overlap']:g} | {r['ratio']:g} | {h['halo_rows']} | {h['edges_kept']} / {h['edges']} "
                     f"| {r['rel_l2']:.4f} | {rmse} | {r['epoch_s']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("bench_paper"), help="data/, runs/, log and table go here")
    ap.add_argument("--epochs", type=int, default=6, help="training epochs of every run")
    ap.add_argument("--samples-per-mesh", type=int, default=1, help="Nystrom samples per mesh per epoch")
    ap.add_argument("--darcy-n", type=int, default=60)
    ap.add_argument("--darcy-res", type=int, default=32)
    ap.add_argument("--airfoil-low-n", type=int, default=30)
    ap.add_argument("--airfoil-high-n", type=int, default=16)
    ap.add_argument("--step3d-n", type=int, default=16)
    ap.add_argument("--nprocs", default="2,4", help="DS-MPNN rank counts")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of a one-process run (split over ranks)")
    ap.add_argument("--only", default=None, help="comma-separated dataset names (darcy,airfoil_low,...)")
    ap.add_argument("--no-ablation", action="store_true", help="skip the overlap-length ablation")
    ap.add_argument("--table-only", action="store_true",
                    help="only re-render WORK/paper_table.md from WORK/paper_table.json (e.g. of a partial run)")
    args = ap.parse_args()
    work = args.work.resolve()
    if args.table_only:
        saved = json.loads((work / "paper_table.json").read_text())
        titles = {d["name"]: d["title"] for d in datasets(args)}
        md = [fmt_table(saved["results"], titles)]
        if saved.get("ablation"):
            md += ["", fmt_ablation(saved["ablation"])]
        print("\n".join(md))
        return
    (work / "data").mkdir(parents=True, exist_ok=True)
    (work / "runs").mkdir(parents=True, exist_ok=True)
    log = work / "paper_table.log"
    nprocs = [int(p) for p in args.nprocs.split(",") if p]
    env_note = f"{os.cpu_count()} CPUs visible"
    t_start = time.perf_counter()
    results, ablation = [], []
    all_ds = datasets(args)
    titles = {d["name"]: d["title"] for d in all_ds}
    wanted = set(args.only.split(",")) if args.only else None
    for ds in all_ds:
        if wanted and ds["name"] not in wanted:
            continue
        data = work / "data" / ds["name"]
        if not (data / "manifest.json").is_file():
            print(f"[{time.strftime('%H:%M:%S')}] generating {ds['name']}", flush=True)
            if data.exists():
                shutil.rmtree(data)
            run(DSMPNN + ds["gen"] + ["--out", str(data), "--no-progress"], log)
        results.append(train_eval(ds, "S-MPNN", data, work / "runs", log, 1, args.threads, [], plots=True))
        for P in nprocs:
            results.append(train_eval(ds, f"DS-MPNN P={P}", data, work / "runs", log, P, args.threads, [],
                                      plots=False))
        results.append(train_eval(ds, "GCN", data, work / "runs", log, 1, args.threads, ["model.kind=gcn"],
                                  plots=True))
        (work / "paper_table.json").write_text(json.dumps({"results": results}, indent=1))
        if ds["name"] == "airfoil_low" and not args.no_ablation:
            from dsmpnn.train.config import load_config

            r = load_config(ROOT / ds["config"]).graph.radius
            for ratio in (0.5, 1.0, 2.0):
                row = train_eval(ds, f"DS-MPNN P=2 overlap {ratio:g}r", data, work / "runs", log, 2, args.threads,
                                 [f"distributed.overlap={ratio * r}"], plots=False)
                row.update(overlap=ratio * r, ratio=ratio, halo=halo_size(data, ds["config"], ratio * r, 2))
                ablation.append(row)
    total = time.perf_counter() - t_start
    (work / "paper_table.json").write_text(json.dumps({"results": results, "ablation": ablation,
                                                       "total_s": total, "args": vars(args) | {"work": str(work)}},
                                                      indent=1, default=str))
    md = [f"Command: `{' '.join(sys.argv)}`; {env_note}; total {total / 60:.1f} min.", "", fmt_table(results, titles)]
    if ablation:
        md += ["", "Overlap-length ablation (airfoil, low fidelity, DS-MPNN P=2, geometric overlap l, radius "
               f"r = {ablation[0]['overlap'] / ablation[0]['ratio']:g}):", "", fmt_ablation(ablation)]
    (work / "paper_table.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
