"""Start P local processes that form a process group.

``run_processes(fn, 4, args)`` (tests, ``dsmpnn check``, benchmarks) spawns 4 processes (``torch.multiprocessing``,
start method "spawn"), joins them into a group through a rendezvous file in a fresh temporary directory (no port
to pick), calls ``fn(ctx, *args)`` on each with its :class:`DistContext`, and returns the values in rank order. An
exception on any rank is raised in the caller.

``launch_module("dsmpnn.cli", argv, 4)`` is what ``dsmpnn train --nproc 4`` does: it runs
``python -m dsmpnn.cli ARGV`` as 4 ranks through torch.distributed's elastic launcher (``elastic_launch``, what
``torchrun --standalone`` runs: a private rendezvous on a free local port), so the ranks are ordinary torchrun
workers that call :func:`init_from_env`.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.multiprocessing as mp

from dsmpnn.distributed.process_group import (DEFAULT_TIMEOUT_S, destroy_process_group,
                                              init_process_group)
from dsmpnn.errors import DsmpnnError

__all__ = ["run_processes", "launch_module", "SHUTDOWN_TIMEOUT_S"]

SHUTDOWN_TIMEOUT_S = 300
"""After Ctrl-C/SIGTERM the launcher forwards the signal to every rank once and waits this long (for the ranks to
finish their step and save a checkpoint) before killing them."""


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


def launch_module(module: str, argv: Sequence[str], nprocs: int, max_restarts: int = 0,
                  threads: int | None = None) -> int:
    """Run ``python -m module *argv`` as ``nprocs`` local ranks (torchrun's elastic launcher); the exit status.

    The status is 0 when every rank succeeded, else the exit status of the lowest failing rank (the ranks print
    their own errors), and 130 when this launcher was interrupted (the ranks got the signal once, see
    :data:`SHUTDOWN_TIMEOUT_S`). ``max_restarts``: how often the launcher restarts the whole group after a rank
    fails. ``threads``: intra-op threads per rank (OMP_NUM_THREADS unless set), default cores // nprocs.
    """
    import sys
    import uuid

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nprocs < 1 or max_restarts < 0:
        raise DsmpnnError(f"need nprocs >= 1 and max_restarts >= 0, got {nprocs} and {max_restarts}")
    saved_env = dict(os.environ)
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)}
    elastic_log = logging.getLogger("torch.distributed.elastic")
    saved_level = elastic_log.level
    try:
        os.environ.setdefault("OMP_NUM_THREADS", str(threads or max(1, (os.cpu_count() or 1) // nprocs)))
        os.environ.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(SHUTDOWN_TIMEOUT_S))
        # a restarted group must not share the agent's TCPStore with the failed one: the workers would read the dead
        # ranks' gloo addresses left in it and fail to connect (pytorch/pytorch#135712)
        os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
        elastic_log.setLevel(logging.ERROR)  # the ranks report their own errors; keep the agent's chatter out
        # what `torchrun --standalone --nproc-per-node P -m module ARGV` configures (a private c10d rendezvous on
        # a free local port), without torchrun's argument parser, which would take ARGV's --nproc for its own
        config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nprocs, run_id=str(uuid.uuid4()),
                              rdzv_endpoint="localhost:0", rdzv_backend="c10d", max_restarts=max_restarts,
                              monitor_interval=0.1)
        elastic_launch(config, sys.executable)("-u", "-m", module, *argv)
        return 0
    except ChildFailedError as e:
        rank = min(e.failures)
        code = e.failures[rank].exitcode
        return code if code > 0 else 128 - code  # killed by signal s: 128 + s, as a shell reports it
    except SignalException:
        return 130
    finally:
        elastic_log.setLevel(saved_level)
        os.environ.clear()
        os.environ.update(saved_env)
        for sig, handler in saved_signals.items():
            if handler is not None:
                signal.signal(sig, handler)
