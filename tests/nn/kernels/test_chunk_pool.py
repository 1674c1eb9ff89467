"""The chunk pool: parts made of fixed chunks, results in part order, at most `workers` threads at once."""

import threading

import pytest
import torch

from dsmpnn.nn.kernels import chunk_pool

cpu = torch.device("cpu")


@pytest.mark.parametrize("workers,per_worker", [(2, 1), (2, 4), (3, 2)])
def test_parts_are_fixed_and_every_chunk_runs_once(workers, per_worker):
    chunks = list(range(23))
    parts = chunk_pool.run_chunks(lambda part: list(part), chunks, cpu, workers=workers,
                                  parts_per_worker=per_worker)
    num_parts = workers * per_worker
    assert parts == [chunks[t::num_parts] for t in range(num_parts)]


def test_free_workers_take_the_next_part_and_no_more_run_at_once():
    """One slow part does not hold up the rest: the other worker runs all the others meanwhile."""
    running, peak, lock, threads = [0], [0], threading.Lock(), {}
    others_done = threading.Event()

    def fn(part):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        threads[part[0]] = threading.get_ident()
        if part[0] == 0:
            others_done.wait(timeout=10)  # slow until every other part has run
        elif len(threads) == 8:
            others_done.set()
        with lock:
            running[0] -= 1
        return part[0]

    assert chunk_pool.run_chunks(fn, list(range(8)), cpu, workers=2, parts_per_worker=4) == list(range(8))
    assert others_done.is_set() and peak[0] <= 2
    assert threads[0] not in {threads[t] for t in range(1, 8)}


def test_a_worker_error_reaches_the_caller():
    def fn(part):
        if part[0] == 3:
            raise ValueError("chunk 3 is bad")
        return part

    with pytest.raises(ValueError, match="chunk 3 is bad"):
        chunk_pool.run_chunks(fn, list(range(6)), cpu, workers=2, parts_per_worker=3)


def test_backward_gradients_do_not_depend_on_which_thread_ran_a_part(monkeypatch):
    """Backward sums per part, in part order: repeated runs give bitwise equal gradients."""
    from dsmpnn.nn import ECConv

    monkeypatch.setattr(chunk_pool, "CHUNK_WORKERS", 2)
    gen = torch.Generator().manual_seed(0)
    pos = torch.rand(300, 2, generator=gen)
    ei = torch.cdist(pos, pos).lt(0.15).nonzero().T
    ei = ei[:, ei[0] != ei[1]]
    ea = pos[ei[1]] - pos[ei[0]]
    conv = ECConv(8, 8, 2)
    conv.edge_chunk = 64
    x = torch.randn(300, 8, generator=gen, requires_grad=True)
    grads = []
    for _ in range(3):
        conv.zero_grad()
        x.grad = None
        conv(x, ei, ea).square().sum().backward()
        grads.append([x.grad.clone()] + [p.grad.clone() for p in conv.parameters()])
    for other in grads[1:]:
        assert all(torch.equal(a, b) for a, b in zip(grads[0], other))
