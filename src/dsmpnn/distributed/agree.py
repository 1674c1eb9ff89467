"""Agreement between ranks: the same error on every rank, one stop decision for all.

A rank that fails while the others wait in a collective would leave them hanging until the timeout. Work that can
fail with a user-facing error (reading files, partitioning a mesh) therefore runs through :func:`run_agreed`:
every rank runs it, then they compare outcomes in one collective and, if any rank failed, all raise. Rank 0 raises
the error loudly (its own, or the first failing rank's), the others raise it with ``quiet = True`` so the CLI
prints one message, not P.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from dsmpnn.distributed.process_group import collective
from dsmpnn.errors import DsmpnnError

__all__ = ["run_agreed", "all_gather_objects", "any_rank", "quiet_unless_main"]

T = TypeVar("T")


def _world(group) -> int:
    return dist.get_world_size(group) if dist.is_initialized() else 1


def all_gather_objects(obj: Any, group: dist.ProcessGroup | None = None) -> list[Any]:
    """``[obj of rank 0, ..., obj of rank P-1]`` on every rank (picklable objects); ``[obj]`` without a group."""
    if _world(group) == 1:
        return [obj]
    out: list[Any] = [None] * _world(group)
    with collective("all-gather between ranks (agreeing on files, partitions, errors)", group=group):
        dist.all_gather_object(out, obj, group=group)
    return out


def quiet_unless_main(err: DsmpnnError, group: dist.ProcessGroup | None = None) -> DsmpnnError:
    """Mark ``err`` quiet on ranks other than 0 (rank 0 reports it); returns ``err``."""
    err.quiet = _world(group) > 1 and dist.get_rank(group) != 0
    return err


def run_agreed(fn: Callable[[], T], group: dist.ProcessGroup | None = None) -> T:
    """``fn()`` on every rank; if it raised a :class:`DsmpnnError` on any rank, raise one on every rank.

    ``fn`` must not call collectives itself (a failing rank would skip them). Other exceptions (bugs) propagate
    on the rank where they happen; the launcher then stops the group.
    """
    try:
        value, err = fn(), None
    except DsmpnnError as e:
        value, err = None, e
    if _world(group) == 1:
        if err is not None:
            raise err
        return value
    outcomes = all_gather_objects(None if err is None else str(err), group)
    failed = [r for r, msg in enumerate(outcomes) if msg is not None]
    if not failed:
        return value
    rank = dist.get_rank(group)
    if err is None or (rank == 0 and failed[0] != 0):
        err = DsmpnnError(outcomes[failed[0]] if failed[0] == 0 else f"rank {failed[0]}: {outcomes[failed[0]]}")
    raise quiet_unless_main(err, group)


def any_rank(flag: bool, group: dist.ProcessGroup | None = None, device: torch.device | str = "cpu") -> bool:
    """True on every rank when ``flag`` is true on at least one (a MAX all-reduce); ``flag`` without a group."""
    if _world(group) == 1:
        return bool(flag)
    t = torch.tensor([int(bool(flag))], dtype=torch.int32, device=device)
    with collective("all-reduce of the stop flag", group=group):
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return bool(t.item())
