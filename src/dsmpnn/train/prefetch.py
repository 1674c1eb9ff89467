"""Building the next step's graphs while this step computes: a one-ahead background worker.

``prefetched(fn, items)`` yields ``fn(items[0]), fn(items[1]), ...`` in order, computing ``fn(items[k + 1])`` in
one background thread while the caller consumes ``fn(items[k])``. For the training loop ``fn`` is
:meth:`~dsmpnn.train.strategy.SingleProcess.prepare` (sampled radius graph, halo plan and local rows): NumPy, the
k-d tree and PyTorch's tensor kernels release the GIL, so the build runs beside the model's forward and
backward (and beside the halo exchange's waits), off the step's critical path. ``fn`` must be a pure function of
its item (no collective, no RNG draw): results are then those of the plain loop, in the same order.

Whether it pays: the builder needs a core of its own. On a GPU the step's compute is on the device and the
host's cores are mostly idle, so it always does; on a CPU whose cores all run the model's threads the builder
takes time from them (and the GIL from the Python between kernels). ``train.prefetch: auto`` (the default)
turns it on for CUDA, and on CPU when this process's share of the cores exceeds its compute threads
(:func:`use_prefetch`).

An exception raised by ``fn`` is raised by the generator where its result would have been yielded; closing the
generator early (an interrupted epoch) waits for the one build in flight and discards it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import torch

from dsmpnn.distributed import local_ranks

__all__ = ["prefetched", "use_prefetch"]

T = TypeVar("T")
R = TypeVar("R")


def prefetched(fn: Callable[[T], R], items: Sequence[T], enabled: bool = True) -> Iterator[R]:
    """``fn(item)`` for every item, in order, each computed while the previous one is being used
    (``enabled=False``: computed when asked for, in this thread)."""
    if not enabled or len(items) < 2:
        yield from (fn(item) for item in items)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dsmpnn-prefetch") as pool:
        ahead: Future[R] = pool.submit(fn, items[0])
        try:
            for k in range(len(items)):
                current = ahead.result()
                if k + 1 < len(items):
                    ahead = pool.submit(fn, items[k + 1])
                yield current
        finally:
            ahead.cancel()


def use_prefetch(setting: bool | str, device: torch.device, ranks: int | None = None,
                 threads: int | None = None) -> bool:
    """``train.prefetch`` resolved: True/False as given; "auto": on for CUDA, and on CPU when the cores this
    process may use, shared among the ``ranks`` ranks of this host (default
    :func:`dsmpnn.distributed.local_ranks`), exceed its ``threads`` compute threads (default
    ``torch.get_num_threads()``), so the builder runs on a core of its own."""
    if setting != "auto":
        return bool(setting)
    if device.type == "cuda":
        return True
    ranks = local_ranks() if ranks is None else ranks
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores // max(ranks, 1) > (threads or torch.get_num_threads())
