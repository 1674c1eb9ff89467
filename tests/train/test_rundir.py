"""The run directory: its lock (a real second process), ownership of --out and what a --resume may change."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from dsmpnn.cli import main
from dsmpnn.data import Dataset
from dsmpnn.errors import CheckpointError
from dsmpnn.train import load_config
from dsmpnn.train.rundir import LOCK_NAME, RunDir, RunLock, check_out_dir, resume_changes
from tests.helpers.cli_cases import TINY

HOLDER = """import sys, time
from dsmpnn.train.rundir import RunLock
RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path):
    """A separate process that takes the lock of ``tmp_path/run`` and keeps it until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.stdout.readline().strip() == "held"
    yield proc
    proc.kill()
    proc.wait()


def test_a_second_process_is_refused_at_once_naming_the_holder(tmp_path, holder):
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match=rf"run: run directory in use by `dsmpnn train` PID {holder.pid} on "
                                              rf"host {os.uname().nodename}"):
        RunLock(tmp_path / "run").acquire()
    assert time.perf_counter() - t0 < 10  # refused, not waiting for the holder (which never lets go)


def test_the_lock_of_a_killed_process_is_free(tmp_path, holder):
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / "run" / LOCK_NAME).read_text().split()[0] == str(holder.pid)  # stale content stays
    with RunLock(tmp_path / "run"):
        assert (tmp_path / "run" / LOCK_NAME).read_text().split() == [str(os.getpid()), os.uname().nodename]


def test_a_child_of_the_holder_goes_on_without_locking(tmp_path):
    """What rank 0 of `train --nproc P` does: its parent, the launcher, holds the lock."""
    child = f"from dsmpnn.train.rundir import RunLock; RunLock({str(tmp_path / 'run')!r}).acquire(); print('ok')"
    with RunLock(tmp_path / "run"):
        out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_release_leaves_no_trace_of_a_start_that_wrote_nothing(tmp_path):
    with RunLock(tmp_path / "new" / "run"):
        assert (tmp_path / "new" / "run" / LOCK_NAME).is_file()
    assert not (tmp_path / "new" / "run").exists() and (tmp_path / "new").is_dir()
    (tmp_path / "run").mkdir()
    with RunLock(tmp_path / "run"):
        (tmp_path / "run" / "config.yaml").write_text("x")
    assert (tmp_path / "run" / LOCK_NAME).read_text() == ""  # kept, empty: the run's own file


def test_train_nproc_into_a_run_in_use_fails_before_starting_ranks(shared, tmp_path, holder, capfd):
    data, _ = shared
    t0 = time.perf_counter()
    code = main(["train", "--no-progress", "--data", str(data), "--out", str(tmp_path / "run"), "--nproc", "2",
                 *TINY])
    err = capfd.readouterr().err
    assert code == 2 and time.perf_counter() - t0 < 10
    assert err.count("\n") == 1 and f"in use by `dsmpnn train` PID {holder.pid}" in err


def test_out_may_be_new_empty_or_a_run(shared, tmp_path):
    _, run = shared
    check_out_dir(tmp_path / "missing")
    check_out_dir(tmp_path)
    check_out_dir(run)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not a dsmpnn run"):
        check_out_dir(tmp_path)


def test_resume_changes_lists_resumable_keys_and_refuses_others(shared):
    data, run = shared
    manifest = Dataset(data).manifest
    same = load_config(run / "config.yaml")
    assert resume_changes(RunDir(run), same, data, manifest) == []
    longer = load_config(run / "config.yaml", ["train.epochs=5", "train.threads=1"])
    assert resume_changes(RunDir(run), longer, data, manifest) == ["train.epochs 1 -> 5", "train.threads None -> 1"]
    with pytest.raises(CheckpointError, match=r"--resume changes model.act from 'gelu' .* to 'relu'"):
        resume_changes(RunDir(run), load_config(run / "config.yaml", ["model.act=relu"]), data, manifest)
