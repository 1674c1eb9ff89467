"""Run directories through the command line: ownership (a non-run --out, a run in use), what a --resume may change,
unreadable run files, divergence, a full disk and resuming a complete run.

Bad input exits 2 with one line and leaves the run directory as it was (:func:`run_case`); divergence and a failed
write exit 1 with one line and keep the last good checkpoint; resuming a complete run exits 0 and writes nothing.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from dsmpnn.cli import main
from dsmpnn.train.checkpoint import list_checkpoints
from tests.helpers.cli_cases import (NEW, RESUME, TINY, TRAIN, Case, World, edit_run_config, first_train_file,
                                     rewrite_npz, run_case, snapshot, with_value)

HOLD_LOCK = "import sys, time; from dsmpnn.train.rundir import RunLock; RunLock(sys.argv[1]).acquire(); " \
            "print('held', flush=True); time.sleep(600)"


def hold_lock(run: Path) -> subprocess.Popen:
    """Another process holding the lock of ``run`` (as a running `dsmpnn train` would)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def user_dir(**files: str) -> Callable[[World], dict]:
    """--out is a directory of someone else's files."""
    def setup(w: World) -> dict:
        (w.tmp / "new").mkdir()
        for name, text in files.items():
            (w.tmp / "new" / name.replace("_", ".")).write_text(text)
        return {}
    return setup


def run_in_use(w: World) -> dict:
    w.copy_run()
    w.holder = hold_lock(w.tmp / "run")
    return {"pid": str(w.holder.pid)}


def moved_data_with(change: Callable[[dict], None]) -> Callable[[World], dict]:
    """The shared dataset copied, its manifest changed by ``change``."""
    def setup(w: World) -> dict:
        w.copy_run()
        path = w.copy_data() / "manifest.json"
        manifest = json.loads(path.read_text())
        change(manifest)
        path.write_text(json.dumps(manifest))
        return {}
    return setup


def run_file(name: str, content: bytes) -> Callable[[World], dict]:
    """A copy of the shared run whose ``name`` holds ``content``."""
    def setup(w: World) -> dict:
        (w.copy_run() / name).write_bytes(content)
        return {}
    return setup


def with_copy(w: World) -> dict:
    w.copy_run()
    return {}


RESUME_COPY = [*RESUME[:4], "{tmp}/data", *RESUME[5:]]
MORE = [*RESUME, "train.epochs=2"]  # the shared run is complete after 1 epoch

CASES = {
    # ownership of --out
    "out holds a user's config": Case(TRAIN, ["{tmp}/new: --out is a non-empty directory that is not a dsmpnn run",
                                              "config.yaml"], NEW, user_dir(config_yaml="# my settings\nlr: 1\n")),
    "out holds a stray metrics file": Case(TRAIN, ["not a dsmpnn run (it holds metrics.jsonl)"], NEW,
                                           user_dir(metrics_jsonl='{"epoch": 1}\n')),
    "out holds many files": Case(TRAIN, ["(it holds a.txt, b.txt, c.txt and 1 more)"], NEW,
                                 user_dir(a_txt="1", b_txt="2", c_txt="3", d_txt="4")),
    "out of a run in use": Case([*TRAIN[:5], "{tmp}/run", *TRAIN[6:]],
                                ["{tmp}/run: run directory in use by `dsmpnn train` PID {pid} on host "],
                                ["{tmp}/run"], run_in_use),
    "resume of a run in use": Case(RESUME, ["run directory in use by `dsmpnn train` PID {pid}"], ["{tmp}/run"],
                                   run_in_use),
    "train into a finished run": Case([*TRAIN[:5], "{tmp}/run", *TRAIN[6:]],
                                      ["{tmp}/run: already holds a trained run; pass --resume"], ["{tmp}/run"],
                                      with_copy),
    # what a --resume may change
    "resume with another seed": Case([*RESUME, "train.seed=1"], ["--resume changes train.seed from 0", "to 1"],
                                     ["{tmp}/run"], with_copy),
    "resume with another dtype": Case([*RESUME, "train.dtype=float64"],
                                      ["--resume changes train.dtype from 'float32'", "to 'float64'"],
                                      ["{tmp}/run"], with_copy),
    "resume with another radius": Case([*RESUME, "graph.radius=0.4"], ["changes graph.radius from 0.3", "to 0.4"],
                                       ["{tmp}/run"], with_copy),
    "resume with another lr": Case([*RESUME, "train.lr=0.01"], ["changes train.lr from 0.001", "to 0.01"],
                                   ["{tmp}/run"], with_copy),
    "resume on data with other stats": Case(RESUME_COPY, ["--resume on another dataset: manifest 'stats.y.std' is",
                                                          "in {tmp}/data", "resume with --data "],
                                            ["{tmp}/run"],
                                            moved_data_with(lambda m: m["stats"]["y"].update(std=[2.0]))),
    "resume on data with other splits": Case(RESUME_COPY, ["manifest 'splits.train' is"], ["{tmp}/run"],
                                             moved_data_with(lambda m: m["splits"]["train"].pop())),
    "resume after config.yaml was edited": Case([*RESUME[:7], "train.epochs=2"],
                                                ["the checkpoint's model does not fit", "size mismatch"],
                                                ["{tmp}/run"], edit_run_config("model", "hidden", 16)),
    # unreadable run files
    "metrics.jsonl not UTF-8": Case(MORE, ["{tmp}/run/metrics.jsonl: metrics log", "is not valid UTF-8 text (byte 0xff at byte offset 1)"],
                                    ["{tmp}/run"], run_file("metrics.jsonl", b'{\xff"epoch": 1}\n')),
    "metrics.jsonl line not an object": Case(MORE, ["{tmp}/run/metrics.jsonl: line 2 is not a JSON object"],
                                             ["{tmp}/run"], run_file("metrics.jsonl", b'{"epoch": 1}\n[1, 2]\n')),
    "dataset.json not UTF-8": Case(["evaluate", "{tmp}/run"], ["{tmp}/run/dataset.json: run file", "is not valid UTF-8 text"],
                                   ["{tmp}/run"], run_file("dataset.json", b'{"path": "\xc3\x28"}')),
    "dataset.json nested too deeply": Case(["evaluate", "{tmp}/run"],
                                           ["{tmp}/run/dataset.json: run file", "nests JSON arrays/objects too deeply"],
                                           ["{tmp}/run"], run_file("dataset.json", b"[" * 100_000)),
    "config.yaml not UTF-8 on resume": Case(RESUME, ["{tmp}/run/config.yaml: config file is not valid UTF-8 text"], ["{tmp}/run"],
                                            run_file("config.yaml", b"train:\n  epochs: \xff\n")),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_run_directory_exits_2_with_one_line_and_changes_nothing(name, shared, tmp_path, capsys):
    world = World(*shared, tmp_path)
    try:
        run_case(CASES[name], world, capsys)
    finally:
        if hasattr(world, "holder"):
            world.holder.kill()
            world.holder.wait()


def resume(w: World, *overrides: str) -> list[str]:
    return [a.format(**w.subs()) for a in [*RESUME, *overrides]]


def test_resume_may_change_epochs_and_periods_and_records_them(shared, tmp_path, capsys):
    w = World(*shared, tmp_path)
    run = w.copy_run()
    assert main(resume(w, "train.epochs=2", "train.checkpoint_every=2", "distributed.timeout_s=60")) == 0
    out = capsys.readouterr().out
    assert "train.epochs 1 -> 2" in out and "distributed.timeout_s 300.0 -> 60" in out
    recorded = (run / "config.yaml").read_text()
    assert "epochs: 2" in recorded and "timeout_s: 60" in recorded
    assert [p.name for p in list_checkpoints(run / "checkpoints")][-1] == "ckpt_epoch_000002.pt"


def test_resuming_a_complete_run_says_so_and_writes_nothing(shared, tmp_path, capsys):
    w = World(*shared, tmp_path)
    run = w.copy_run()
    before = snapshot(run)
    assert main(resume(w)) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == (f"run {run} is complete: 1 of 1 epochs; raise train.epochs to continue "
                                    "(e.g. train.epochs=2), nothing was written")
    assert captured.err == "" and snapshot(run) == before


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and ": warning: " not in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_huge_lr_stops_at_the_step_that_diverges_exit_1_without_nan_anywhere(shared, tmp_path, capsys):
    """train.lr = 1000 (the largest the config accepts; inf is refused as a bad value) overflows the loss at the
    second step of the first epoch."""
    data, _ = shared
    run = tmp_path / "run"
    assert main(["train", "--no-progress", "--data", str(data), "--out", str(run), *TINY, "train.lr=1000"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line == ("dsmpnn train: error: training diverged at epoch 1, step 2 of 2: the loss is inf; stopped "
                    "without saving it, no checkpoint was written yet; likely cause: train.lr = 1000 is very large "
                    "(Adam usually needs 1e-4 to 1e-2)")
    assert not list_checkpoints(run / "checkpoints") and (run / "metrics.jsonl").read_text() == ""


def test_tiny_std_in_the_manifest_is_refused_before_training(shared, tmp_path, capsys):
    """A std of 1e-300 in the manifest's statistics makes the normalised targets overflow float32: bad input,
    found when the training split is read, before anything is written."""
    w = World(*shared, tmp_path)
    path = w.copy_data() / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["stats"]["y"]["std"] = [1e-300]
    path.write_text(json.dumps(manifest))
    argv = ["train", "--no-progress", "--data", str(path.parent), "--out", str(tmp_path / "run"), *TINY]
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "field 'y' column 0 at node 0 is" in line and "std 1e-300) beyond the torch.float32 range" in line, line
    assert not (tmp_path / "run").exists()


def test_divergence_after_a_checkpoint_keeps_it_and_logs_no_nan(shared, tmp_path, capsys):
    """A target of 1e30 in a training sample (the manifest and its stats unchanged) overflows the float32 loss in
    epoch 2 of a resumed run: exit 1, the epoch-1 checkpoint and metrics line are all that is kept."""
    w = World(*shared, tmp_path)
    run = w.copy_run()
    data = w.copy_data()
    rewrite_npz(first_train_file(data), y=with_value("y", (0, 0), 1e30))
    before = snapshot(run / "checkpoints")
    assert main(resume(w, "train.epochs=3")[:4] + [str(data)] + resume(w, "train.epochs=3")[5:]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "training diverged at epoch 2, step " in line and "the loss is inf" in line
    assert "the newest checkpoint, ckpt_epoch_000001.pt, is the last good state" in line
    assert "check the data for extreme values" in line
    assert snapshot(run / "checkpoints") == before
    assert [json.loads(r)["epoch"] for r in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    assert "epochs: 1" in (run / "config.yaml").read_text()  # no checkpoint of the change: not recorded


def test_disk_full_while_checkpointing_exits_1_with_one_line_and_keeps_earlier_checkpoints(shared, tmp_path,
                                                                                          capsys, monkeypatch):
    w = World(*shared, tmp_path)
    run = w.copy_run()
    before = snapshot(run / "checkpoints")

    fsync = os.fsync

    def full(fd: int) -> None:  # the disk fills up while a checkpoint is written
        if ".ckpt_epoch_" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    assert main(resume(w, "train.epochs=2")) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("dsmpnn train: error: ")
    assert f"{run}/" in line and ": cannot write the file: No space left on device (ENOSPC)" in line
    monkeypatch.undo()
    assert snapshot(run / "checkpoints") == before
    assert not [p for p in run.rglob(".*") if p.name != ".dsmpnn.lock"]  # no temporary file left


def test_a_lock_left_by_a_killed_run_is_free(shared, tmp_path, capsys):
    w = World(*shared, tmp_path)
    run = w.copy_run()
    holder = hold_lock(run)
    assert f"{holder.pid} " in (run / ".dsmpnn.lock").read_text()
    holder.kill()  # SIGKILL: the PID stays in the file, the kernel drops the lock
    holder.wait()
    assert main(resume(w, "train.epochs=2")) == 0
    assert "done: epoch 2" in capsys.readouterr().out
    assert (run / ".dsmpnn.lock").read_text() == ""
