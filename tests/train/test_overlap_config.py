import pytest

from dsmpnn.errors import ConfigError
from dsmpnn.train.config import load_config


def test_overlap_option():
    assert load_config(None, []).distributed.overlap is None
    assert load_config(None, ["graph.radius=0.1", "distributed.overlap=0.2"]).distributed.overlap == 0.2
    with pytest.warns(UserWarning, match="differs from one process"):
        load_config(None, ["graph.radius=0.1", "distributed.overlap=0.05"])
    with pytest.raises(ConfigError, match="exclude each other"):
        load_config(None, ["distributed.overlap=0.2", "distributed.halo_hops=2"])
    with pytest.raises(ConfigError, match="distributed.overlap"):
        load_config(None, ["distributed.overlap=-1"])


def test_overlap_comm_option():
    """distributed.overlap_comm: the halo exchange overlapped with the layers' work; off by default (measured slower
    with gloo on a shared 2-core machine, benchmarks/bench_overlap.py); a flag, nothing else."""
    assert load_config(None, []).distributed.overlap_comm is False
    assert load_config(None, ["distributed.overlap_comm=true"]).distributed.overlap_comm is True
    with pytest.raises(ConfigError, match="distributed.overlap_comm"):
        load_config(None, ["distributed.overlap_comm=sometimes"])
