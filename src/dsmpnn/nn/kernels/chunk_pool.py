"""Chunks of the edge aggregation run side by side on CPU threads, each with one intra-op thread.

One chunk of the aggregation is a few dozen small operations (a gather, a matmul, a batched matmul per
out-degree, a scatter). Left to PyTorch's intra-op parallelism, every one of them forks and joins all threads;
when the cores are shared with other processes a join waits for a descheduled thread, and two threads were
measured slower than one. Splitting the chunks between threads instead (thread t takes chunks t, t + T, ...,
each thread running its operations single-threaded) has one join per pass and no idle waits in between.

Which chunks form each part is fixed (part t of P takes chunks t, t + P, ...), so results are deterministic for a
given number of workers; each part returns its own partial sums, which the caller adds in part order. With more
parts than workers (``parts_per_worker``), a worker that finishes early takes the next part. Workers inherit the
caller's grad and inference modes.
``CHUNK_WORKERS`` sets the number of workers (None: ``torch.get_num_threads()``); 1 runs everything in the
calling thread, with PyTorch's usual intra-op parallelism. Non-CPU devices, and PyTorch builds whose intra-op
backend is not OpenMP (where a thread cannot switch to one intra-op thread), always use the calling thread.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

__all__ = ["run_chunks", "run_single_threaded", "CHUNK_WORKERS", "num_workers"]

CHUNK_WORKERS: int | None = None
"""Threads that share the chunks of one pass on CPU; None: ``torch.get_num_threads()``."""

T = TypeVar("T")
C = TypeVar("C")

_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_LOCK = threading.Lock()
_IN_WORKER = threading.local()  # set on pool threads: a nested call runs inline instead of waiting on the pool


@functools.cache
def _openmp() -> bool:
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


def num_workers(num_chunks: int, device: torch.device) -> int:
    if device.type != "cpu" or not _openmp():
        return 1
    want = CHUNK_WORKERS if CHUNK_WORKERS is not None else torch.get_num_threads()
    return max(1, min(int(want), num_chunks))


def _forget_pool() -> None:
    """In a forked child the pool's threads do not exist: start a new pool there when one is needed."""
    global _POOL, _POOL_SIZE, _LOCK
    _POOL, _POOL_SIZE, _LOCK = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _pool(size: int) -> ThreadPoolExecutor:
    global _POOL, _POOL_SIZE
    with _LOCK:
        if _POOL is None or _POOL_SIZE < size:
            if _POOL is not None:
                _POOL.shutdown(wait=False)
            _POOL, _POOL_SIZE = ThreadPoolExecutor(size, thread_name_prefix="dsmpnn-chunks"), size
        return _POOL


def run_chunks(fn: Callable[[Sequence[C]], T], chunks: Sequence[C], device: torch.device,
               workers: int | None = None, parts_per_worker: int = 1) -> list[T]:
    """``[fn(part) for part in parts]`` with ``parts[t] = chunks[t::P]``, P = ``workers * parts_per_worker``
    parts run by ``workers`` pool threads (``workers`` defaults to :func:`num_workers`; with one worker and no
    explicit request, everything in the calling thread).

    With more parts than workers a thread that finishes early takes the next part, so a worker slowed down by
    the machine's other load does not hold the others up; which chunks make up a part, and the order of the
    returned results, stay fixed, so sums taken over them are deterministic. Each part's result is kept until
    all are done: use several parts per worker only where a result is small."""
    if getattr(_IN_WORKER, "active", False):
        return [fn(chunks)]
    if workers is None:
        workers = num_workers(len(chunks), device)
        if workers == 1:
            return [fn(chunks)]
    num_parts = max(1, min(len(chunks), workers * parts_per_worker))
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    threads = torch.get_num_threads()

    parts = [chunks[t::num_parts] for t in range(num_parts)]
    results: list = [None] * num_parts
    next_part = iter(range(num_parts))  # shared by the workers, under the lock
    lock = threading.Lock()

    def worker() -> None:
        torch.set_num_threads(1)  # this pool thread only does single-threaded work
        _IN_WORKER.active = True
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            while True:
                with lock:
                    t = next(next_part, None)
                if t is None:
                    return
                results[t] = fn(parts[t])

    try:
        for future in [_pool(workers).submit(worker) for _ in range(workers)]:
            future.result()  # re-raises a worker's exception
        return results
    finally:
        torch.set_num_threads(threads)  # set_num_threads also writes a process-wide default: restore it


def run_single_threaded(fn: Callable[[], T], device: torch.device) -> T:
    """``fn()`` on one pool thread with one intra-op thread (CPU, several threads): for a sequence of small
    operations, such as building an edge plan, that forking and joining threads per operation slows down."""
    if num_workers(2, device) == 1:
        return fn()
    return run_chunks(lambda part: fn(), [None], device, workers=1)[0]
