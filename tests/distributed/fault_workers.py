"""Per-rank programs of tests/distributed/test_faults.py (module level, so spawned ranks can import them)."""

from __future__ import annotations

import time

import numpy as np
import torch

from dsmpnn.distributed import DistContext, HaloExchange
from dsmpnn.errors import CommunicationError
from dsmpnn.graph import build_halo_plans


def hang_before_exchange(ctx: DistContext, sleep_s: float, overlapped: bool = False) -> dict | None:
    """Rank 1 stops answering (sleeps ``sleep_s``) before a halo exchange; rank 0 reports how its exchange ended
    (``overlapped``: started, then waited for in ``finish``)."""
    edge_index = np.array([[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]])  # a path 0-1-2-3; rank 0 owns 0, 1
    plan = build_halo_plans(np.array([0, 0, 1, 1]), edge_index, 1, 2)[ctx.rank]
    exchange = HaloExchange(plan)  # both ranks answer here (it checks the plans' counts)
    h = torch.ones(plan.num_local, 3)
    if ctx.rank == 1:
        time.sleep(sleep_s)
        return None
    t0 = time.monotonic()
    try:
        exchange.finish(h, exchange.start(h)) if overlapped else exchange(h)
    except CommunicationError as e:
        return {"message": str(e), "seconds": time.monotonic() - t0, "exit_code": e.exit_code}
    return {"message": None, "seconds": time.monotonic() - t0}
