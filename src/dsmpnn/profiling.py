"""``DSMPNN_PROFILE=PREFIX``: profile each rank's training with cProfile (a diagnostic, off by default).

Every rank (or the one process) writes ``PREFIX.rank{r}.prof`` (for ``python -m pstats`` / snakeviz) and
``PREFIX.rank{r}.txt``: the 40 functions with the largest cumulative time. cProfile sees the calling thread only:
with ``train.prefetch`` on, graph building runs in a background thread and shows up only as the main thread's
waits (``Future.result``); profile with ``train.prefetch=false`` to see what it costs on the critical path.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
from collections.abc import Callable
from typing import TypeVar

__all__ = ["profiled"]

T = TypeVar("T")
_VAR = "DSMPNN_PROFILE"


def profiled(fn: Callable[[], T], rank: int) -> T:
    """``fn()``, profiled into ``$DSMPNN_PROFILE.rank{rank}.*`` when the variable is set."""
    prefix = os.environ.get(_VAR, "")
    if not prefix:
        return fn()
    prof = cProfile.Profile()
    prof.enable()
    try:
        return fn()
    finally:
        prof.disable()
        base = f"{prefix}.rank{rank}"
        prof.dump_stats(base + ".prof")
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(40)
        with open(base + ".txt", "w") as f:
            f.write(text.getvalue())
