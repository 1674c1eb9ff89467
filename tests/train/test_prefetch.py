"""The one-ahead graph builder: same results in the same order, errors where they belong, training unchanged."""

import threading

import pytest
import torch

from dsmpnn.train import load_config, load_run, train
from dsmpnn.train.prefetch import prefetched, use_prefetch
from dsmpnn.train.logger import read_jsonl

from tests.train.test_end_to_end import TINY, darcy  # noqa: F401 - the module's tiny Darcy fixture


def test_results_in_order_and_built_one_ahead_in_another_thread():
    built, started = [], {k: threading.Event() for k in range(5)}

    def fn(k):
        built.append((k, threading.current_thread().name))
        started[k].set()
        return k * k

    gen = prefetched(fn, list(range(5)))
    assert next(gen) == 0
    assert started[1].wait(timeout=30)  # item 1 is built while item 0 is in use
    assert list(gen) == [1, 4, 9, 16] and [k for k, _ in built] == [0, 1, 2, 3, 4]
    assert all(name.startswith("dsmpnn-prefetch") for _, name in built)


def test_disabled_builds_in_this_thread_when_asked():
    built = []
    gen = prefetched(lambda k: built.append(threading.current_thread().name) or k, [1, 2, 3], enabled=False)
    assert next(gen) == 1 and len(built) == 1
    assert list(gen) == [2, 3] and set(built) == {threading.current_thread().name}


def test_an_error_is_raised_where_its_result_would_be_used():
    def fn(k):
        if k == 2:
            raise ValueError("mesh 2 is bad")
        return k

    gen = prefetched(fn, [0, 1, 2, 3])
    assert [next(gen), next(gen)] == [0, 1]
    with pytest.raises(ValueError, match="mesh 2 is bad"):
        next(gen)


def test_closing_early_builds_no_more():
    built = []
    gen = prefetched(lambda k: built.append(k) or k, list(range(10)))
    assert next(gen) == 0
    gen.close()
    assert len(built) <= 2


@pytest.mark.slow
def test_training_with_and_without_prefetch_is_identical(darcy, tmp_path):  # noqa: F811
    runs = {}
    for flag in ("true", "false"):
        cfg = load_config(None, ["train.epochs=2", f"train.prefetch={flag}", *TINY])
        train(cfg, darcy, tmp_path / flag, progress=False, echo=lambda s: None)
        runs[flag] = load_run(tmp_path / flag).model
    for (name, p), q in zip(runs["true"].named_parameters(), runs["false"].parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    assert ([r["train_loss"] for r in read_jsonl(tmp_path / "true" / "metrics.jsonl")]
            == [r["train_loss"] for r in read_jsonl(tmp_path / "false" / "metrics.jsonl")])


def test_auto_prefetches_on_cuda_and_where_a_core_is_free(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_prefetch(True, cpu, 8, 1) and not use_prefetch(False, cuda, 1, 1)
    assert use_prefetch("auto", cuda, 8, 8)  # the host's cores are free while the GPU computes
    assert use_prefetch("auto", cpu, 2, 3)  # 4 cores per rank, 3 compute threads
    assert not use_prefetch("auto", cpu, 2, 4)  # every core of the rank's share computes
    assert not use_prefetch("auto", cpu, 8, 1)
