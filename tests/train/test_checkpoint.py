import hashlib
import io
import random

import numpy as np
import pytest
import torch

from dsmpnn.errors import CheckpointError
from dsmpnn.train.checkpoint import (list_checkpoints, load_checkpoint, load_state, rng_state, save_checkpoint,
                                     set_rng_state)
from dsmpnn.train.logger import MetricsLogger, read_jsonl


def test_keep_last_k_and_load_newest(tmp_path):
    for epoch in range(1, 6):
        save_checkpoint(tmp_path, epoch, {"epoch": epoch, "w": torch.full((3,), float(epoch))}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_epoch_000004.pt", "ckpt_epoch_000005.pt"]
    state, path = load_checkpoint(tmp_path)
    assert state["epoch"] == 5 and torch.equal(state["w"], torch.full((3,), 5.0))
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_latest_falls_back_with_warning(tmp_path, damage):
    save_checkpoint(tmp_path, 1, {"epoch": 1}, keep=3)
    path = save_checkpoint(tmp_path, 2, {"epoch": 2, "w": torch.arange(1000.0)}, keep=3)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="falling back"):
        state, used = load_checkpoint(tmp_path)
    assert state["epoch"] == 1 and used.name == "ckpt_epoch_000001.pt"


def test_no_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        load_checkpoint(tmp_path)


def test_version_is_stored_and_another_major_version_is_refused(tmp_path):
    import dsmpnn

    save_checkpoint(tmp_path, 1, {"epoch": 1})
    state, _ = load_checkpoint(tmp_path)
    assert state["version"] == dsmpnn.__version__
    major = int(dsmpnn.__version__.split(".")[0])
    save_checkpoint(tmp_path, 2, {"epoch": 2})
    newest = list_checkpoints(tmp_path)[-1]
    payload = io.BytesIO()
    torch.save({"epoch": 2, "version": f"{major + 1}.0.0"}, payload)
    torch.save({"sha256": hashlib.sha256(payload.getvalue()).hexdigest(), "payload": payload.getvalue()}, newest)
    with pytest.raises(CheckpointError, match=rf"written by dsmpnn {major + 1}\.0\.0, this is dsmpnn"):
        load_checkpoint(tmp_path)  # refused, not silently replaced by the older checkpoint


def test_state_that_does_not_fit_is_a_checkpoint_error(tmp_path):
    path = save_checkpoint(tmp_path, 1, {"model": torch.nn.Linear(3, 2).state_dict()})
    state, _ = load_checkpoint(tmp_path)
    load_state(torch.nn.Linear(3, 2), state, "model", path, "cfg.yaml")
    with pytest.raises(CheckpointError, match=r"the checkpoint's model does not fit the model of cfg\.yaml.*size "
                                              r"mismatch for weight"):
        load_state(torch.nn.Linear(4, 2), state, "model", path, "cfg.yaml")
    with pytest.raises(CheckpointError, match=r"has no 'optimizer' state"):
        load_state(torch.optim.SGD(torch.nn.Linear(3, 2).parameters(), lr=1), state, "optimizer", path, "cfg.yaml")


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    save_checkpoint(tmp_path, 1, {"rng": rng_state()})
    first = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(load_checkpoint(tmp_path)[0]["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_temporary_file_of_a_killed_writer_is_removed(tmp_path):
    (tmp_path / ".ckpt_epoch_000002.pt.x1y2z3").write_bytes(b"half a checkpoint")
    save_checkpoint(tmp_path, 3, {"epoch": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_epoch_000003.pt"]


def test_metrics_log_resume_drops_later_epochs_and_a_line_cut_short(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "loss": 0.5}\n{"epoch": 2, "loss": 0.4}\n{"epoch": 3, "lo')
    logger = MetricsLogger(tmp_path, resume_epoch=2, tensorboard=False)
    logger.log({"epoch": 3, "loss": 0.3})
    assert [r["epoch"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    logger = MetricsLogger(tmp_path, resume_epoch=1, tensorboard=False)
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"epoch": 1, "loss": 0.5}]


def test_retention_counts_only_verified_checkpoints_and_keeps_the_one_just_written(tmp_path):
    """A corrupt file named like a later checkpoint is neither counted nor deleted (with a warning); the valid
    checkpoints beyond ``keep`` are deleted, the one just written never."""
    save_checkpoint(tmp_path, 1, {"epoch": 1}, keep=1)
    (tmp_path / "ckpt_epoch_000009.pt").write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match=r"ckpt_epoch_000009\.pt: not a valid checkpoint .* neither counted nor "
                                         r"deleted"):
        save_checkpoint(tmp_path, 2, {"epoch": 2}, keep=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_epoch_000002.pt", "ckpt_epoch_000009.pt"]
    with pytest.warns(UserWarning, match="falling back"):
        state, used = load_checkpoint(tmp_path)
    assert state["epoch"] == 2 and used.name == "ckpt_epoch_000002.pt"


def test_a_valid_foreign_checkpoint_sorting_last_does_not_push_out_the_one_just_written(tmp_path):
    save_checkpoint(tmp_path, 9, {"epoch": 9}, keep=1)
    save_checkpoint(tmp_path, 1, {"epoch": 1}, keep=1)
    save_checkpoint(tmp_path, 2, {"epoch": 2}, keep=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_epoch_000002.pt", "ckpt_epoch_000009.pt"]


def test_mid_epoch_checkpoint_has_its_own_name_and_sorts_between_epochs(tmp_path):
    save_checkpoint(tmp_path, 1, {"epoch": 1}, keep=5)
    save_checkpoint(tmp_path, 1, {"epoch": 1, "batch": 4}, keep=5, graphs=4)
    save_checkpoint(tmp_path, 1, {"epoch": 1, "batch": 12}, keep=5, graphs=12)
    save_checkpoint(tmp_path, 2, {"epoch": 2}, keep=5)
    (tmp_path / ".ckpt_epoch_000003_graphs_000002.pt.abc").write_bytes(b"half")  # a killed writer's
    save_checkpoint(tmp_path, 1000000, {"epoch": 1000000}, keep=4)
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "ckpt_epoch_000001_graphs_000004.pt", "ckpt_epoch_000001_graphs_000012.pt", "ckpt_epoch_000002.pt",
        "ckpt_epoch_1000000.pt"]
    assert load_checkpoint(tmp_path)[0]["epoch"] == 1000000
    assert not list(tmp_path.glob(".*"))


def test_failed_write_is_a_write_error_naming_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    import errno
    import os

    from dsmpnn.errors import WriteError

    path = save_checkpoint(tmp_path, 1, {"epoch": 1})
    old = path.read_bytes()

    def full(fd):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(WriteError, match=r"ckpt_epoch_000001\.pt: cannot write the file: Disk quota exceeded "
                                         r"\(EDQUOT\)") as info:
        save_checkpoint(tmp_path, 1, {"epoch": 1, "w": torch.ones(3)})
    assert info.value.errno == errno.EDQUOT and info.value.exit_code == 1
    assert path.read_bytes() == old and not list(tmp_path.glob(".*"))


def test_corrupt_metrics_line_is_a_checkpoint_error_naming_file_and_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epo\n{"epoch": 3}\n')
    with pytest.raises(CheckpointError, match=r"metrics\.jsonl: line 2 is not a JSON object"):
        MetricsLogger(tmp_path, resume_epoch=2, tensorboard=False)
