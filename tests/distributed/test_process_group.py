import socket

import pytest
import torch.distributed as dist

from dsmpnn.distributed import DistContext, destroy_process_group, init_from_env
from dsmpnn.errors import DsmpnnError

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def clean_env(monkeypatch):
    for var in TORCHRUN_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_without_torchrun_it_is_one_process(clean_env):
    ctx = init_from_env()
    assert ctx == DistContext() and ctx.world_size == 1 and ctx.is_main and not ctx.distributed
    assert not dist.is_initialized()


def test_missing_rendezvous_is_explained(clean_env):
    clean_env.setenv("RANK", "0")
    clean_env.setenv("WORLD_SIZE", "2")
    with pytest.raises(DsmpnnError, match="MASTER_ADDR is not set; launch with torchrun"):
        init_from_env()
    clean_env.setenv("RANK", "zero")
    with pytest.raises(DsmpnnError, match="must be integers"):
        init_from_env()


@pytest.mark.distributed
def test_torchrun_environment_of_one_rank(clean_env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for var, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)}.items():
        clean_env.setenv(var, value)
    ctx = init_from_env(backend="gloo", timeout_s=30)
    try:
        assert (ctx.rank, ctx.world_size, ctx.backend, ctx.distributed) == (0, 1, "gloo", True)
        assert dist.is_initialized() and dist.get_world_size() == 1
        assert init_from_env().rank == 0  # a second call joins the existing group
    finally:
        destroy_process_group()
    assert not dist.is_initialized()
