"""``DSMPNN_TRACE_STARTUP=1``: print when each start-up phase of a command ends, to stderr (a diagnostic).

Lines read ``[dsmpnn startup] +1.234 s parent: arguments parsed`` (or ``rank 1``); the times count from the start
of the first process of the command (the launcher of ``--nproc`` ranks, whose start time the ranks inherit in
``DSMPNN_TRACE_T0``), so the lines of all ranks are on one clock. ``benchmarks/bench_startup.py`` reads them.
Without the variable :func:`mark` does nothing and costs a dictionary look-up.
"""

from __future__ import annotations

import os
import sys
import time

__all__ = ["enabled", "mark", "process_start"]

_VAR, _T0 = "DSMPNN_TRACE_STARTUP", "DSMPNN_TRACE_T0"
_started_in: int | None = None
"""The process that printed its first line (a forked rank prints its own)."""


def enabled() -> bool:
    return os.environ.get(_VAR, "") not in ("", "0")


def process_start() -> float:
    """This process's start (``time.time()`` scale, 10 ms resolution on Linux; now where /proc is missing)."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start time in clock ticks after boot
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time()


def mark(phase: str, at: float | None = None, who: str | None = None) -> None:
    """Print that ``phase`` ended now (or at the ``time.time()`` value ``at``) when tracing is on; ``who``: this
    process (default: ``rank R`` under torchrun, else ``parent``)."""
    global _started_in
    if not enabled():
        return
    now = time.time() if at is None else at
    if _started_in != os.getpid():  # the first line of each process says when it started
        _started_in = os.getpid()
        start = process_start()
        os.environ.setdefault(_T0, repr(start))  # the first process of the command: its ranks inherit its clock
        mark("process started", start, who)
    who = who or (f"rank {os.environ['RANK']}" if "RANK" in os.environ else "parent")
    # one write per line: the ranks share stderr, and print() would write the text and its newline apart
    sys.stderr.write(f"[dsmpnn startup] {now - float(os.environ[_T0]):+.3f} s {who}: {phase}\n")
    sys.stderr.flush()
