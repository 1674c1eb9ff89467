"""benchmarks/bench_predict.py end to end on a small mesh: one process and two ranks predict the same values, and
every rank's peak memory comes back from ``dsmpnn predict``'s own report."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_predict_reports_time_memory_per_rank_and_equal_predictions(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_predict.py"), "--nodes", "8000", "--nproc", "1,2",
                    "--work", str(tmp_path / "work"), "--json", str(out)], check=True, capture_output=True, timeout=300)
    rows = json.loads(out.read_text())
    assert [r["nproc"] for r in rows] == [1, 2] and all(r["nodes"] == 8000 for r in rows)
    assert [len(r["peak_gib_per_rank"]) for r in rows] == [1, 2]
    assert all(0 < p < 64 for r in rows for p in r["peak_gib_per_rank"]) and all(r["wall_s"] > 0 for r in rows)
    assert all(set(r["phase_s"]) == {"read", "graph_and_model", "write"} for r in rows)
    assert all(sum(r["phase_s"].values()) < r["wall_s"] for r in rows)  # the command's phases, within its wall time
    assert rows[0]["max_abs_diff_vs_first"] == 0.0 and rows[1]["max_abs_diff_vs_first"] < 1e-5
    assert not list((tmp_path / "work").glob("pred_*.npz"))  # outputs removed unless --keep
