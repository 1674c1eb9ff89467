"""The DS-MPNN paper's results table, trained: S-MPNN, DS-MPNN (P ranks) and GCN on every dataset (issue 16).

Stages (each resumable: rows already in the JSON are kept and skipped unless ``--redo``):

- ``sweep``: the same small tuning grid for the MPNN and the GCN (learning rate, depth, LayerNorm, residual) on
  one dataset, scored by the final validation rel. L2 (never the test split);
- ``table``: per dataset, S-MPNN (one process), DS-MPNN ``--nproc P`` (exact graph halo, METIS), the GCN with the
  MPNN's parameter budget, and the variants named in ``VARIANTS``; configs in ``configs/paper/``;
- ``capacity``: the paper's "larger number of nodes" claim: a fixed sample of m nodes per rank, P = 1, 2, 4
  ranks, i.e. P m nodes per sampled graph; test accuracy and peak resident memory per rank;
- ``render``: Markdown tables and learning-curve plots from the JSON.

Every row's metrics are defined in ``benchmarks/paper_runs.py``. Data are generated into ``WORK/data`` when
missing (commands in ``DATASETS``). Results: ``--json`` (default ``benchmarks/paper_table.json``), written
atomically after every run, and ``WORK/paper_table.md`` + ``benchmarks/results/paper_*.png``.

    python benchmarks/paper_table.py --work /tmp/paper --stage sweep --only airfoil_low
    python benchmarks/paper_table.py --work /tmp/paper --stage table --only darcy64
    python benchmarks/paper_table.py --work /tmp/paper --stage capacity
    python benchmarks/paper_table.py --work /tmp/paper --stage render
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import json
import os
import platform
import sys
import time
from pathlib import Path

from paper_runs import DSMPNN, ROOT, run_tree, train_and_evaluate

DATASETS = {  # name: (title, generate arguments, MPNN config, GCN config)
    "darcy64": ("Darcy 64x64", ["darcy", "--resolution", "64", "--n", "1000", "--seed", "0"],
                "configs/paper/darcy64.yaml", "configs/paper/darcy64_gcn.yaml"),
    "airfoil_low": ("Airfoil, low fidelity", ["airfoil", "--fidelity", "low", "--n", "250", "--seed", "0"],
                    "configs/paper/airfoil_low.yaml", "configs/paper/airfoil_low_gcn.yaml"),
    "airfoil_high": ("Airfoil, high fidelity", ["airfoil", "--fidelity", "high", "--n", "130", "--seed", "0"],
                     "configs/paper/airfoil_high.yaml", "configs/paper/airfoil_high_gcn.yaml"),
    "step3d": ("3D step", ["step3d", "--n", "64", "--seed", "0"],
               "configs/paper/step3d.yaml", "configs/paper/step3d_gcn.yaml"),
    # the 3D step's GCN-wins-on-pressure question: 3.2x finer meshes, and twice the meshes at the default resolution
    "step3d_r10": ("3D step, resolution 10", ["step3d", "--n", "64", "--seed", "0", "--resolution", "10"],
                   "configs/paper/step3d_fine.yaml", "configs/paper/step3d_fine_gcn.yaml"),
    "step3d_n128": ("3D step, 128 meshes", ["step3d", "--n", "128", "--seed", "0"],
                    "configs/paper/step3d.yaml", "configs/paper/step3d_gcn.yaml"),
}
BASE3 = ["train.lr=0.005", "graph.edge_features=inputs"]
VARIANTS = {  # dataset: [(variant, overrides on the MPNN config)]: the Darcy levers towards 0.02; the 3D step's GCN
    "darcy64": [("edge features a_i, a_j", ["graph.edge_features=inputs"]),
                ("lr 5e-3", ["train.lr=0.005"]),
                ("lr 5e-3 + edge features, 60 epochs", ["train.lr=0.005", "graph.edge_features=inputs",
                                                        "train.epochs=60"]),
                ("width 64 + lr 5e-3 + edge features, 40 epochs", ["model.hidden=64", "train.lr=0.005",
                                                                   "graph.edge_features=inputs", "train.epochs=40"]),
                # round 3, 30 epochs each against the same base: receptive field (depth, radius) or sample size
                ("lr 5e-3 + edge features", BASE3),
                ("8 layers + lr 5e-3 + edge features", ["model.layers=8", *BASE3]),
                ("radius 0.2 + lr 5e-3 + edge features", ["graph.radius=0.2", *BASE3]),
                ("m=1024 + lr 5e-3 + edge features", ["graph.sample_nodes=1024", *BASE3]),
                # round 4: both receptive-field levers of round 3 together
                ("radius 0.2 + 8 layers + lr 5e-3 + edge features", ["graph.radius=0.2", "model.layers=8", *BASE3]),
                ("radius 0.2 + lr 5e-3 + edge features, seed 1", ["graph.radius=0.2", *BASE3, "train.seed=1"])],
    # question (with the one-layer GCN of GCN_VARIANTS): does depth help there, or latent width (64: the 4-layer
    # budget)? And four layers with the budget moved from the kernel MLPs (H 32 -> 13) to the latent (32 -> 48).
    # The same rows on the other 3D step sets and, as the control, airfoil low fidelity.
    "step3d": [("1 layer", ["model.layers=1"]), ("1 layer, width 64", ["model.layers=1", "model.hidden=64"]),
               ("width 48, kernel MLP 13", ["model.hidden=48", "model.kernel_hidden=[13]"])],
}
VARIANTS["step3d_n128"] = VARIANTS["step3d_r10"] = VARIANTS["airfoil_low"] = VARIANTS["step3d"]
GCN_VARIANTS = {  # dataset: [(variant, overrides on the GCN config)]: the MPNN's best lever, for the GCN too
    "darcy64": [("radius 0.2 + lr 5e-3", ["graph.radius=0.2", "train.lr=0.005"])],
    # is the GCN's pressure on the 3D step message passing, or its width (174 against the MPNN's 32) applied
    # node by node? One layer at the same width
    "step3d": [("1 layer, width 174", ["model.layers=1", "model.gcn_hidden=174"])],
}
GCN_VARIANTS["step3d_n128"] = GCN_VARIANTS["step3d_r10"] = GCN_VARIANTS["airfoil_low"] = GCN_VARIANTS["step3d"]
SWEEP = [("lr 1e-3", ["train.lr=0.001"]), ("lr 2e-3", ["train.lr=0.002"]), ("lr 5e-3", ["train.lr=0.005"]),
         ("6 layers", ["model.layers=6"]), ("LayerNorm", ["model.layer_norm=true"]),
         ("no residual", ["model.residual=false"]),
         # round 2: the best learning rate with the options that helped either model in round 1
         ("lr 5e-3 + LayerNorm", ["train.lr=0.005", "model.layer_norm=true"])]
CAPACITY = {"dataset": "darcy128", "gen": ["darcy", "--resolution", "128", "--n", "120", "--seed", "0"],
            "config": "configs/paper/capacity_darcy128.yaml", "per_rank": 2048, "nprocs": [1, 2, 4]}


def save(path: Path, doc: dict) -> None:
    """Write ``doc`` as JSON atomically (temporary file + rename); not through dsmpnn's writer, since this
    long-running driver imports no dsmpnn code (see ``paper_runs.parameter_count``)."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    os.replace(tmp, path)


def ensure_data(work: Path, name: str, gen: list[str], log: Path) -> Path:
    data = work / "data" / name
    if not (data / "manifest.json").is_file():
        print(f"[{time.strftime('%H:%M:%S')}] generating {name}", flush=True)
        run_tree([*DSMPNN, "generate", *gen, "--out", str(data), "--no-progress"], log)
    return data


def row_key(r: dict) -> tuple:
    return r["dataset"], r["model"], r["nproc"], r.get("variant", "")


def add_row(path: Path, section: str, row: dict, facts: dict) -> None:
    """Add (or replace) ``row`` in the JSON at ``path``, re-read under a lock: several stages may run at once."""
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        doc = json.loads(path.read_text()) if path.is_file() else {}
        doc[section] = [r for r in doc.get(section, []) if row_key(r) != row_key(row)] + [row]
        save(path, doc | facts)


def done(doc: dict, section: str, key: tuple) -> bool:
    return any(row_key(r) == key for r in doc.get(section, []))


def tuned(doc: dict, dataset: str | None) -> dict[str, tuple[str, list[str]]]:
    """Per model ("S-MPNN", "GCN"): the sweep setting of ``dataset`` with the lowest final validation rel. L2,
    as (name, overrides); none without a sweep."""
    best: dict[str, tuple[float, str, list[str]]] = {}
    for r in doc.get("sweep", []):
        if r["dataset"] != dataset or not r["curves"]["val"]:
            continue
        val = r["curves"]["val"][-1][1]
        if r["model"] not in best or val < best[r["model"]][0]:
            best[r["model"]] = (val, r["variant"], dict(SWEEP)[r["variant"]])
    return {m: (v, o) for m, (_, v, o) in best.items()}


def table_specs(name: str, nprocs: list[int], variants: bool, tuning: dict) -> list[dict]:
    """The rows of ``name``; ``tuning``: per model, the sweep setting (name, overrides) applied to its rows."""
    _, _, mpnn_cfg, gcn_cfg = DATASETS[name]
    m_name, m_ov = tuning.get("S-MPNN", ("", []))
    g_name, g_ov = tuning.get("GCN", ("", []))
    specs = [{"dataset": name, "model": "S-MPNN", "nproc": 1, "config": mpnn_cfg, "overrides": m_ov,
              "tuning": m_name},
             {"dataset": name, "model": "GCN", "nproc": 1, "config": gcn_cfg, "overrides": g_ov, "tuning": g_name}]
    specs += [{"dataset": name, "model": "DS-MPNN", "nproc": p, "config": mpnn_cfg, "overrides": m_ov,
               "tuning": m_name} for p in nprocs]
    specs += [{"dataset": name, "model": "S-MPNN", "nproc": 1, "config": mpnn_cfg, "overrides": m_ov + o,
               "variant": v, "tuning": m_name} for v, o in (VARIANTS.get(name, []) if variants else [])]
    specs += [{"dataset": name, "model": "GCN", "nproc": 1, "config": gcn_cfg, "overrides": g_ov + o,
               "variant": v, "tuning": g_name} for v, o in (GCN_VARIANTS.get(name, []) if variants else [])]
    for s in specs:
        s["name"] = "_".join([name, s["model"], f"P{s['nproc']}", s.get("variant", "").replace(" ", "-")
                              .replace(",", "")]).rstrip("_")
    return specs


def sweep_specs(name: str, epochs: int) -> list[dict]:
    _, _, mpnn_cfg, _ = DATASETS[name]
    specs = []
    for kind in ("mpnn", "gcn"):
        for variant, overrides in SWEEP:
            ov = [f"model.kind={kind}", f"train.epochs={epochs}", f"train.eval_every={epochs}",
                  f"train.checkpoint_every={epochs}", "eval.plot_samples=0", *overrides]
            specs.append({"dataset": name, "model": "S-MPNN" if kind == "mpnn" else "GCN", "nproc": 1,
                          "config": mpnn_cfg, "overrides": ov, "variant": variant,
                          "name": f"sweep_{name}_{kind}_{variant.replace(' ', '-')}"})
    return specs


def capacity_specs() -> list[dict]:
    c = CAPACITY
    return [{"dataset": c["dataset"], "model": "DS-MPNN" if p > 1 else "S-MPNN", "nproc": p, "config": c["config"],
             "overrides": [f"graph.sample_nodes={p * c['per_rank']}"], "variant": f"m={c['per_rank']} per rank",
             "name": f"capacity_P{p}"} for p in c["nprocs"]]


def run_stage(args: argparse.Namespace, doc: dict, facts: dict, log: Path) -> None:
    work = args.work
    names = args.only.split(",") if args.only else list(DATASETS)
    section, jobs = {"sweep": "sweep", "table": "rows", "capacity": "capacity"}[args.stage], []
    if args.stage == "capacity":
        data = ensure_data(work, CAPACITY["dataset"], CAPACITY["gen"], log)
        jobs = [(s, data) for s in capacity_specs()]
    for name in names if args.stage != "capacity" else []:
        data = ensure_data(work, name, DATASETS[name][1], log)
        tuning = tuned(doc, args.tuned_from) if args.tuned_from else {}
        specs = (sweep_specs(name, args.sweep_epochs) if args.stage == "sweep"
                 else table_specs(name, args.nprocs, not args.no_variants, tuning))
        jobs += [(s, data) for s in specs]
    for spec, data in jobs:
        key = (spec["dataset"], spec["model"], spec["nproc"], spec.get("variant", ""))
        if args.models and spec["model"] not in args.models.split(","):
            continue
        if args.variants is not None and spec.get("variant", "") not in args.variants.split(";"):
            continue
        if done(doc, section, key) and not args.redo:
            continue
        row = train_and_evaluate(spec, data, work / "runs", args.threads, args.stage == "table", args.redo)
        if args.stage == "capacity":
            row["sample_nodes"] = spec["nproc"] * CAPACITY["per_rank"]
            row["peak_rss_mib_per_rank"] = row["peak_rss_mib"]
        row["command"] = " ".join(sys.argv)
        add_row(args.json, section, row, facts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("bench_paper"), help="data/, runs/ and the log go here")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "paper_table.json")
    ap.add_argument("--stage", choices=("sweep", "table", "capacity", "render"), required=True)
    ap.add_argument("--only", default=None, help="comma-separated dataset names: " + ",".join(DATASETS))
    ap.add_argument("--models", default=None, help="comma-separated: S-MPNN,DS-MPNN,GCN (default all)")
    ap.add_argument("--nprocs", type=lambda s: [int(p) for p in s.split(",") if p], default=[2, 4])
    ap.add_argument("--threads", type=int, default=1, help="torch threads of a one-process run (split over ranks)")
    ap.add_argument("--sweep-epochs", type=int, default=10)
    ap.add_argument("--tuned-from", default=None,
                    help="table: apply each model's best sweep setting (by validation) of this dataset")
    ap.add_argument("--no-variants", action="store_true", help="table: skip the VARIANTS rows")
    ap.add_argument("--variants", default=None,
                    help="table: only these rows, by variant name, ';'-separated ('' is the plain row)")
    ap.add_argument("--redo", action="store_true", help="rerun rows already in the JSON")
    args = ap.parse_args()
    args.work = args.work.resolve()
    doc = json.loads(args.json.read_text()) if args.json.is_file() else {}
    facts = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
             "date": datetime.date.today().isoformat()}
    if args.stage == "render":
        from paper_render import render

        print(render(doc, {k: v[0] for k, v in DATASETS.items()}, ROOT / "benchmarks" / "results"))
        return
    (args.work / "runs").mkdir(parents=True, exist_ok=True)
    run_stage(args, doc, facts, args.work / "paper_table.log")


if __name__ == "__main__":
    main()
