import pytest
import torch

from dsmpnn.errors import CheckpointError
from dsmpnn.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint


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
