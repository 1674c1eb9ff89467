"""Process-group setup: one rank per subdomain, gloo on CPU, NCCL on CUDA.

Launch with torchrun (it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)::

    torchrun --nproc_per_node 4 -m dsmpnn.cli train ...      # one node, 4 ranks
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_endpoint host:29500 -m dsmpnn.cli train ...

and call :func:`init_from_env` once at start-up. Without those variables it returns a single-process context
(no process group), so the same code runs with and without torchrun. Only ``ctx.is_main`` (rank 0) should write
logs, checkpoints and plots.

Every collective waits at most the group's timeout (``distributed.timeout_s``) for its peers. The call sites in
this package run inside :func:`collective`, which turns the backend's timeout or closed-connection error into a
:class:`~dsmpnn.errors.CommunicationError` naming this rank, the operation, the peers and the timeout, so a rank
that hangs or dies makes the others fail with that message instead of waiting forever.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from dsmpnn.errors import CommunicationError, DsmpnnError

__all__ = ["DistContext", "DEFAULT_TIMEOUT_S", "barrier", "collective", "current_context", "default_backend",
           "init_from_env", "init_process_group", "destroy_process_group", "local_ranks"]

DEFAULT_TIMEOUT_S = 300.0
"""Seconds a collective may wait for its peers before the process group raises (a hung rank fails loudly)."""

_timeout_s = DEFAULT_TIMEOUT_S
"""The timeout of the group this process joined (for messages)."""

_PEER_FAILURE = ("timed out", "timeout", "connection closed", "connection reset", "broken pipe", "connection refused",
                 "read error", "write error", "socket")
"""Fragments of the backends' messages when a peer does not answer or its connection is gone (gloo, NCCL)."""


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: ``rank`` of ``world_size``, its device, and whether a process group exists."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        """True when a process group is initialised (even with one rank)."""
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        """Rank 0: the only rank that writes logs, checkpoints and plots."""
        return self.rank == 0


def default_backend(device: torch.device | str | None = None) -> str:
    """"nccl" for CUDA devices (or when CUDA is available and no device is named), else "gloo"."""
    if device is None:
        return "nccl" if torch.cuda.is_available() else "gloo"
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def _device_for(backend: str, local_rank: int) -> torch.device:
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise DsmpnnError("backend 'nccl' needs CUDA, which is not available; use backend 'gloo' on CPU")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_process_group(rank: int, world_size: int, init_method: str, backend: str = "gloo",
                       timeout_s: float = DEFAULT_TIMEOUT_S, local_rank: int | None = None) -> DistContext:
    """Join a process group explicitly (``init_method`` "file:///path" or "tcp://host:port")."""
    global _timeout_s
    if not 0 <= rank < world_size:
        raise DsmpnnError(f"rank {rank} is outside [0, world_size={world_size})")
    local_rank = rank if local_rank is None else local_rank
    device = _device_for(backend, local_rank)
    _timeout_s = timeout_s
    # torch.optim.Adam imports torch._dynamo when it is first constructed; imported then, after the gloo group has
    # started its threads, the rank sometimes ended with "terminate called without an active exception" (SIGABRT)
    # at exit (2 of 8 runs of tests/distributed/test_train_ds.py's interrupted run, 0 of 8 with this import first)
    import torch._dynamo  # noqa: F401, PLC0415

    with collective("joining the process group", [r for r in range(world_size) if r != rank], rank, world_size):
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout_s))
    return DistContext(rank, world_size, local_rank, backend, device)


def _is_peer_failure(err: BaseException) -> bool:
    text = str(err).lower()
    return any(frag in text for frag in _PEER_FAILURE)


def _ranks(peers: list[int]) -> str:
    return f"rank {peers[0]}" if len(peers) == 1 else f"one of ranks {peers}"


@contextmanager
def collective(op: str, peers: Iterable[int] | None = None, rank: int | None = None,
               world_size: int | None = None, group: dist.ProcessGroup | None = None) -> Iterator[None]:
    """Run the collective ``op`` (e.g. "gradient all-reduce") in this block; a peer that does not answer within the
    group's timeout, or whose connection closed, raises :class:`~dsmpnn.errors.CommunicationError` naming this rank,
    ``op``, the ``peers`` it waited for (default: every other rank) and ``distributed.timeout_s``.

    Other errors (a wrong shape, a bug) propagate unchanged.
    """
    try:
        yield
    except RuntimeError as e:
        if isinstance(e, DsmpnnError) or not _is_peer_failure(e):
            raise
        if rank is None:
            rank = dist.get_rank(group) if dist.is_initialized() else 0
        if world_size is None:
            world_size = dist.get_world_size(group) if dist.is_initialized() else 1
        peers = sorted(set(range(world_size) if peers is None else peers) - {rank}) or \
            [r for r in range(world_size) if r != rank]
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        backend = f" (backend: {text[:200]})"
        if "refused" in text.lower():
            raise CommunicationError(
                f"rank {rank} of {world_size}: {op} could not connect to {_ranks(peers)} (connection refused); a rank "
                f"died or is unreachable (its own output or the launcher's says why){backend}") from None
        if any(f in text.lower() for f in ("timed out", "timeout")):
            raise CommunicationError(
                f"rank {rank} of {world_size}: {op} got no answer from {_ranks(peers)} within distributed.timeout_s = "
                f"{_timeout_s:g} s; a rank is hung or died (its own output says why). If a step legitimately takes "
                f"longer, raise distributed.timeout_s in the config (e.g. distributed.timeout_s="
                f"{max(600, 2 * _timeout_s):g}){backend}") from None
        raise CommunicationError(
            f"rank {rank} of {world_size}: {op} failed because the connection to {_ranks(peers)} closed; a rank died "
            f"(its own output or the launcher's says why). dsmpnn train --max-restarts N restarts the ranks, which "
            f"resume from the newest checkpoint{backend}") from None


def barrier(group: dist.ProcessGroup | None = None) -> None:
    """Wait for every rank (no-op without a process group)."""
    if dist.is_initialized():
        with collective("barrier", group=group):
            dist.barrier(group=group)


def init_from_env(backend: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> DistContext:
    """Join the process group described by torchrun's environment variables, or run as one process.

    ``backend`` defaults to NCCL when CUDA is available, else gloo; each rank uses GPU ``LOCAL_RANK``.
    """
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return DistContext()
    try:
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError as err:
        raise DsmpnnError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers: {err}") from None
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise DsmpnnError(f"{var} is not set; launch with torchrun, which sets it")
    if dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dist.get_backend(),
                           _device_for(dist.get_backend(), local_rank))
    return init_process_group(rank, world_size, "env://", backend or default_backend(), timeout_s, local_rank)


def current_context() -> DistContext:
    """The :class:`DistContext` of the process group this process already belongs to (one process if none)."""
    if not dist.is_initialized():
        return DistContext()
    backend = dist.get_backend()
    local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, backend, _device_for(backend, local_rank))


def destroy_process_group() -> None:
    """Leave the process group, if there is one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def local_ranks() -> int:
    """Ranks of this job on this host: torchrun's ``LOCAL_WORLD_SIZE``; without it the world size of an initialised
    process group (ranks started by :func:`dsmpnn.distributed.run_processes` all run here), else 1."""
    try:
        return max(1, int(os.environ["LOCAL_WORLD_SIZE"]))
    except (KeyError, ValueError):
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
