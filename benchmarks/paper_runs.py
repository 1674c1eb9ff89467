"""Running one train + evaluate pair through the CLI and reading back what the paper table needs.

Used by ``benchmarks/paper_table.py``. A run is one ``dsmpnn train`` command (one process or ``--nproc P``)
followed by ``dsmpnn evaluate --split test`` on the full mesh graph. Measured per run:

- test metrics in physical units (``metrics.json`` of the run): mean relative L2 over samples, RMSE per field;
- the paper-style single RMSE: ``rmse_pooled = sqrt(mean_t RMSE_t^2)`` (all target fields pooled, physical units)
  and ``rmse_normalised = sqrt(mean_t (RMSE_t / sigma_t)^2)``, sigma_t the training split's standard deviation
  of field t (the dataset manifest's ``stats``);
- seconds per epoch: mean of the logged ``epoch_seconds`` of epochs 2..E (validation and checkpoints excluded);
- peak memory: the ``dsmpnn train`` process tree is polled every 0.1 s with psutil; ``peak_rss_mib`` is the
  largest resident set of any one process (with ``--nproc`` a rank or the launcher), ``peak_rss_sum_mib`` the
  largest sum over the tree;
- learning curves: the training loss of every epoch and the validation rel. L2 of every evaluated epoch.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
DSMPNN = [sys.executable, "-m", "dsmpnn.cli"]


def run_tree(cmd: list[str], log: Path) -> dict:
    """Run ``cmd`` (output appended to ``log``); wall seconds and peak RSS (MiB) of its process tree."""
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        root = psutil.Process(proc.pid)
        peak_sum = peak_max = 0
        while proc.poll() is None:
            rss = []
            try:
                for p in [root, *root.children(recursive=True)]:
                    try:
                        rss.append(p.memory_info().rss)
                    except psutil.Error:
                        pass
            except psutil.Error:
                pass
            peak_sum, peak_max = max(peak_sum, sum(rss)), max(peak_max, max(rss, default=0))
            time.sleep(0.1)
    if proc.returncode != 0:
        raise RuntimeError(f"command failed (exit {proc.returncode}), see {log}: {' '.join(cmd)}")
    return {"wall_s": time.perf_counter() - t0, "peak_rss_mib": peak_max / 2**20, "peak_rss_sum_mib": peak_sum / 2**20}


def curves(run_dir: Path) -> dict:
    """Learning curves from the run's metrics.jsonl: epochs, train loss, and (epoch, val rel. L2) pairs."""
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    recs = [r for r in recs if "epoch_seconds" in r]
    secs = [r["epoch_seconds"] for r in recs]
    return {"epoch": [r["epoch"] for r in recs], "train_loss": [r["train_loss"] for r in recs],
            "val": [[r["epoch"], r["val_rel_l2"]] for r in recs if r.get("val_rel_l2") is not None],
            "seconds_per_epoch": sum(secs[1:]) / len(secs[1:]) if len(secs) > 1 else secs[0]}


def dataset_facts(data: Path) -> dict:
    """Training mesh count, mean nodes per mesh, and the target fields' training standard deviations."""
    import numpy as np

    m = json.loads((data / "manifest.json").read_text())
    train = m["splits"]["train"]
    nodes = [int(np.load(data / f, allow_pickle=False)["pos"].shape[0]) for f in train[:20]]
    names = [f["name"] for f in m["target_fields"]]
    return {"train_meshes": len(train), "nodes_per_mesh": round(sum(nodes) / len(nodes)),
            "target_std": dict(zip(names, m["stats"]["y"]["std"]))}


def paper_rmse(rmse: dict, std: dict) -> dict:
    """Pooled RMSE over the target fields, in physical units and normalised by the training std per field."""
    return {"pooled": math.sqrt(sum(v * v for v in rmse.values()) / len(rmse)),
            "normalised": math.sqrt(sum((v / std[k]) ** 2 for k, v in rmse.items()) / len(rmse))}


def parameter_count(run_dir: Path) -> int:
    """Trainable parameters of the run's model, through the public API in a fresh interpreter (this long-running
    script must not import dsmpnn: code changed while it runs would read newer run directories)."""
    code = ("import sys, dsmpnn; m = dsmpnn.load_run(sys.argv[1]).model; "
            "print(sum(p.numel() for p in m.parameters() if p.requires_grad))")
    return int(subprocess.run([sys.executable, "-c", code, str(run_dir)], check=True, capture_output=True,
                              text=True, cwd=ROOT).stdout.split()[-1])


def peak_so_far(out: Path, measured: dict) -> dict:
    """Peak RSS over every train command of the run (a resumed run keeps the larger peaks), kept in
    ``RUN.peak.json`` beside the run."""
    path = out.with_suffix(".peak.json")
    old = json.loads(path.read_text()) if path.is_file() else {}
    peak = {k: max(measured[k], old.get(k, 0.0)) for k in ("peak_rss_mib", "peak_rss_sum_mib")}
    path.write_text(json.dumps(peak))
    return peak


def train_and_evaluate(spec: dict, data: Path, runs: Path, threads: int, plots: bool, redo: bool = False) -> dict:
    """Train and evaluate one row of the table; ``spec``: dataset, model, nproc, config, overrides, name. A run
    directory left by an interrupted run is resumed (``dsmpnn train --resume``; ``redo``: start again)."""
    out, log = runs / spec["name"], runs / f"{spec['name']}.log"
    if redo:
        shutil.rmtree(out, ignore_errors=True)
        for stale in (log, out.with_suffix(".peak.json")):
            stale.unlink(missing_ok=True)
    resume = ["--resume"] if (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()) else []
    if not resume:
        shutil.rmtree(out, ignore_errors=True)
    nproc = spec["nproc"]
    ds_opts = ["--nproc", str(nproc)] if nproc > 1 else []
    per_rank = threads if nproc == 1 else max(1, threads // nproc)
    cmd = [*DSMPNN, "train", "--config", spec["config"], "--data", str(data), "--out", str(out), "--no-progress",
           *resume, *ds_opts, f"train.threads={per_rank}", *spec["overrides"]]
    print(f"[{time.strftime('%H:%M:%S')}] {spec['name']}: {' '.join(cmd[3:])}", flush=True)
    t = run_tree(cmd, log)
    t.update(peak_so_far(out, t))
    ev = run_tree([*DSMPNN, "evaluate", str(out), "--split", "test", *ds_opts,
                   *([] if plots else ["--no-plots"])], log)
    m = json.loads((out / "metrics.json").read_text())
    facts = dataset_facts(data)
    c = curves(out)
    row = {"dataset": spec["dataset"], "model": spec["model"], "variant": spec.get("variant", ""), "nproc": nproc,
           "threads_per_rank": per_rank, "epochs": c["epoch"][-1], "train_meshes": facts["train_meshes"],
           "nodes_per_mesh": facts["nodes_per_mesh"], "params": parameter_count(out), "rel_l2": m["rel_l2"],
           "rmse": m["rmse"], "paper_rmse": paper_rmse(m["rmse"], facts["target_std"]),
           "seconds_per_epoch": c["seconds_per_epoch"], "peak_rss_mib": t["peak_rss_mib"],
           "peak_rss_sum_mib": t["peak_rss_sum_mib"], "train_wall_s": t["wall_s"], "eval_wall_s": ev["wall_s"],
           "config": spec["config"], "overrides": spec["overrides"], "tuning": spec.get("tuning", ""), "curves": c,
           "run": str(out)}
    print(f"    test rel. L2 {row['rel_l2']:.4f}, final val {c['val'][-1][1] if c['val'] else float('nan'):.4f}, "
          f"{row['seconds_per_epoch']:.2f} s/epoch, peak RSS {row['peak_rss_mib']:.0f} MiB/process, "
          f"train {t['wall_s']:.0f} s", flush=True)
    return row
