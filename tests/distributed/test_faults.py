"""Faults on 2 gloo ranks, and determinism.

- A rank killed with SIGKILL mid-run: ``dsmpnn train --nproc 2 --max-restarts 2`` restarts the group, which resumes
  from the newest checkpoint and ends with the parameters and the metrics log of an uninterrupted run.
- A rank that stops answering: its peer fails within ``distributed.timeout_s`` with a message naming the rank.
- The same seed, config and P give bit-identical metrics (P = 1 and P = 2).

The uninterrupted P = 2 run is made once (module fixture) and serves as the reference of the first and last test.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dsmpnn.cli import main
from dsmpnn.data import generate_darcy
from dsmpnn.distributed import run_processes
from dsmpnn.train import load_config, load_run, train
from dsmpnn.train.logger import read_jsonl
from tests.distributed import fault_workers as W

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

EPOCHS = 5
ARGS = ["--no-progress", "model.hidden=8", "model.layers=2", "model.kernel_hidden=[8]", "model.encoder_hidden=[8]",
        "model.decoder_hidden=[8]", "graph.radius=0.25", "graph.sample_nodes=48", "graph.samples_per_mesh=2",
        "train.batch_graphs=2", "train.eval_every=2", "train.checkpoint_every=1", "eval.plot_samples=0",
        f"train.epochs={EPOCHS}", "train.seed=3"]


@pytest.fixture(scope="module")
def darcy(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("d") / "darcy"
    generate_darcy(out, n=6, resolution=10, seed=0, progress=False)
    return out


@pytest.fixture(scope="module")
def reference(darcy, tmp_path_factory) -> Path:
    """An uninterrupted run on 2 ranks."""
    run = tmp_path_factory.mktemp("ref") / "run"
    assert main(["train", "--data", str(darcy), "--out", str(run), "--nproc", "2", *ARGS]) == 0
    return run


def logged(run: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock times."""
    return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in read_jsonl(run / "metrics.jsonl")]


def rank_pids(parent: int) -> dict[int, int]:
    """{rank: pid} of the torchrun workers among the descendants of process ``parent`` (from /proc): a rank forked
    from the launcher's fork server is named ``dsmpnn rank R`` (/proc/PID/comm), one started as a subprocess has
    RANK=R in its environment."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # exited meanwhile
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = {}, list(children.get(parent, []))
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ranks = [int(comm.rsplit(" ", 1)[1])] if comm.startswith("dsmpnn rank ") else \
            [int(v.split(b"=", 1)[1]) for v in env if v.startswith(b"RANK=")]
        if ranks:
            out[ranks[0]] = pid
    return out


def test_killed_rank_restarts_and_resumes_exactly(darcy, reference, tmp_path, capfd):
    """SIGKILL to a rank (seeded choice) at a seeded moment after a checkpoint exists; the launcher restarts both
    ranks, which resume; the final parameters and every metrics line equal the uninterrupted run's."""
    rng = np.random.default_rng(11)
    after_epoch, delay, victim = int(rng.integers(1, 3)), float(rng.uniform(0.0, 0.2)), int(rng.integers(0, 2))
    run = tmp_path / "run"
    killed: dict = {}

    def killer() -> None:  # the launcher runs in this process's main thread; its workers are our descendants
        checkpoint = run / "checkpoints" / f"ckpt_epoch_{after_epoch:06d}.pt"
        deadline = time.monotonic() + 300
        while not checkpoint.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(delay)
        pids = rank_pids(os.getpid())
        if victim in pids:
            os.kill(pids[victim], signal.SIGKILL)
            killed["pid"] = pids[victim]

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    code = main(["train", "--data", str(darcy), "--out", str(run), "--nproc", "2", "--max-restarts", "2", *ARGS])
    thread.join(timeout=10)
    out, err = capfd.readouterr()
    assert code == 0, err
    assert killed, f"rank {victim} was not found running after epoch {after_epoch}"
    assert "resuming from" in out and out.count(f"done: epoch {EPOCHS}") == 1, out

    records = logged(run)
    assert [r["epoch"] for r in records] == list(range(1, EPOCHS + 1))  # no line lost or duplicated
    assert records == logged(reference)  # bit-for-bit: losses, learning rates, validation errors
    a, b = load_run(run).model, load_run(reference).model
    assert max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters())) <= 1e-6


@pytest.mark.parametrize("overlapped", [False, True], ids=["blocking", "overlapped"])
def test_hung_rank_makes_its_peer_fail_within_the_timeout_naming_it(overlapped):
    """Rank 1 sleeps before a halo exchange; rank 0 gives up after distributed.timeout_s (3 s), saying who."""
    timeout = 3.0
    result = run_processes(W.hang_before_exchange, 2, (timeout + 1.5, overlapped), timeout_s=timeout)[0]
    assert result["message"] is not None, "the exchange completed although rank 1 was asleep"
    assert timeout - 0.5 <= result["seconds"] <= timeout + 5
    msg = result["message"]
    assert msg.startswith("rank 0 of 2: halo exchange (all_to_all) got no answer from rank 1 within "
                          "distributed.timeout_s = 3 s"), msg
    assert "raise distributed.timeout_s in the config" in msg and result["exit_code"] == 1


def test_same_seed_config_and_ranks_give_identical_metrics(darcy, reference, tmp_path):
    """P = 1 twice and P = 2 twice: bit-identical metrics. Across P only the summation order differs (round-off)."""
    cfg = load_config(None, ARGS[1:])
    for name in ("one_a", "one_b"):
        train(cfg, darcy, tmp_path / name, progress=False, echo=lambda s: None)
    assert logged(tmp_path / "one_a") == logged(tmp_path / "one_b")

    assert main(["train", "--data", str(darcy), "--out", str(tmp_path / "two"), "--nproc", "2", *ARGS]) == 0
    two, one = logged(tmp_path / "two"), logged(tmp_path / "one_a")
    assert two == logged(reference)
    np.testing.assert_allclose([r["train_loss"] for r in two], [r["train_loss"] for r in one], rtol=1e-4)
