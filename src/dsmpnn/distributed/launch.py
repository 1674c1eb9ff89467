"""Run a function on P local processes that form a process group (tests, ``dsmpnn check``, benchmarks).

``run_processes(fn, 4, args)`` spawns 4 processes (``torch.multiprocessing``, start method "spawn"), joins them
into a group through a rendezvous file in a fresh temporary directory (no port to pick), calls
``fn(ctx, *args)`` on each with its :class:`DistContext`, and returns the values in rank order. An exception on
any rank is raised in the caller. Production runs use torchrun and :func:`init_from_env` instead.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Callable
from typing import Any

import torch
import torch.multiprocessing as mp

from dsmpnn.distributed.process_group import (DEFAULT_TIMEOUT_S, destroy_process_group,
                                              init_process_group)
from dsmpnn.errors import DsmpnnError

__all__ = ["run_processes"]


def _worker(rank: int, fn: Callable, nprocs: int, workdir: str, backend: str, timeout_s: float, threads: int,
            args: tuple) -> None:
    torch.set_num_threads(threads)
    ctx = init_process_group(rank, nprocs, f"file://{os.path.join(workdir, 'rendezvous')}", backend, timeout_s)
    try:
        result = fn(ctx, *args)
    finally:
        destroy_process_group()
    with open(os.path.join(workdir, f"result{rank}.pkl"), "wb") as f:
        pickle.dump(result, f)


def run_processes(fn: Callable[..., Any], nprocs: int, args: tuple = (), backend: str = "gloo",
                  timeout_s: float = DEFAULT_TIMEOUT_S, threads: int = 1) -> list[Any]:
    """``[fn(ctx_0, *args), ..., fn(ctx_{P-1}, *args)]`` computed by P spawned ranks.

    ``fn`` must be importable (a module-level function) and its arguments and result picklable. ``threads``
    sets each rank's intra-op threads (keep P * threads <= cores).
    """
    if nprocs < 1:
        raise DsmpnnError(f"number of processes must be >= 1, got {nprocs}")
    with tempfile.TemporaryDirectory(prefix="dsmpnn-ranks-") as workdir:
        mp.spawn(_worker, args=(fn, nprocs, workdir, backend, timeout_s, threads, args), nprocs=nprocs, join=True)
        results = []
        for rank in range(nprocs):
            with open(os.path.join(workdir, f"result{rank}.pkl"), "rb") as f:
                results.append(pickle.load(f))
    return results
