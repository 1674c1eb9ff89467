"""Neighbour caps on Nyström samples: does the cap's reach explain the GCN beating the MPNN on graded airfoil meshes?

With ``graph.max_neighbors = k`` a graph on m of a mesh's n nodes keeps its k nearest sampled neighbours, which
reach about sqrt(n / m) farther than the k nearest on the full mesh used at inference (``graph.sampled_cap:
fixed``); ``scaled`` keeps k m / n of them. This trains the MPNN and the GCN (matched parameter budget) with each,
and the MPNN without a cap, through the CLI, one process each, and writes ``OUT/cap_ablation.json`` and a Markdown
table (test split, full-mesh evaluation):

    dsmpnn generate airfoil --n 100 --fidelity low --out DATA --seed 0
    python benchmarks/sampled_cap_ablation.py --data DATA --out OUT [--epochs 15] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DSMPNN = [sys.executable, "-m", "dsmpnn.cli"]
VARIANTS = {  # name: overrides on configs/airfoil_low.yaml
    "MPNN, cap fixed": ["graph.sampled_cap=fixed"],
    "MPNN, cap scaled": ["graph.sampled_cap=scaled"],
    "MPNN, no cap": ["graph.max_neighbors=null"],
    "GCN, cap fixed": ["model.kind=gcn", "graph.sampled_cap=fixed"],
    "GCN, cap scaled": ["model.kind=gcn", "graph.sampled_cap=scaled"],
}


def run_variant(name: str, overrides: list[str], data: Path, out: Path, epochs: int, seed: int,
                threads: int) -> dict:
    run = out / f"{name.replace(', ', '_').replace(' ', '-')}_seed{seed}"
    common = ["--config", str(ROOT / "configs/airfoil_low.yaml"), f"train.epochs={epochs}", f"train.seed={seed}",
              f"train.threads={threads}", f"train.eval_every={epochs}", f"train.checkpoint_every={epochs}",
              "eval.plot_samples=0", *overrides]
    t0 = time.perf_counter()
    subprocess.run([*DSMPNN, "train", "--no-progress", "--data", str(data), "--out", str(run), *common],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    subprocess.run([*DSMPNN, "evaluate", str(run), "--split", "test", "--no-plots"], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    metrics = json.loads((run / "metrics.json").read_text())
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"variant": name, "seed": seed, "epochs": epochs, "rel_l2": metrics["rel_l2"], "rmse": metrics["rmse"],
            "train_loss": log[-1]["train_loss"], "val_rel_l2": log[-1].get("val_rel_l2"),
            "train_seconds": round(seconds, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="NAME")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        for name in args.variants:
            rows.append(run_variant(name, VARIANTS[name], args.data, args.out, args.epochs, seed, args.threads))
            print(json.dumps(rows[-1]), flush=True)
            (args.out / "cap_ablation.json").write_text(json.dumps({"rows": rows, "command": sys.argv}, indent=1))
    lines = ["| variant | seed | epochs | test rel. L2 | RMSE u / v / p | final train loss | train s |",
             "|---|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        rmse = " / ".join(f"{r['rmse'][f]:.4g}" for f in ("u", "v", "p"))
        lines.append(f"| {r['variant']} | {r['seed']} | {r['epochs']} | {r['rel_l2']:.4f} | {rmse} | "
                     f"{r['train_loss']:.4g} | {r['train_seconds']} |")
    (args.out / "cap_ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
