"""Memory and disk a command may use, checked before work starts: an impossible size is refused with the estimate
and what is available, instead of failing (or swapping) half-way through.

Used by every layer (data generators, graph building, benchmarks), so it imports nothing of dsmpnn but the errors.
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
from pathlib import Path

from dsmpnn.errors import DsmpnnError

__all__ = ["available_memory", "peak_rss", "free_disk", "check_resources", "format_bytes"]


def available_memory() -> int | None:
    """``MemAvailable`` of /proc/meminfo in bytes (None where there is no such file)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss() -> int:
    """This process's peak resident memory so far in bytes (``getrusage`` ``ru_maxrss``: KiB on Linux, bytes on
    macOS). A forked process starts from its resident size at the fork."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def free_disk(path: str | os.PathLike) -> int | None:
    """Free bytes on the file system that would hold ``path`` (its nearest existing ancestor); None if unknown."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def format_bytes(n: float) -> str:
    """``1.5 GiB``, ``3.2 TiB``: a byte count for a message."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def check_resources(what: str, memory: int, disk: int = 0, out: str | os.PathLike | None = None) -> None:
    """Refuse (DsmpnnError, exit 2) when ``memory`` bytes exceed MemAvailable or ``disk`` bytes the free space
    under ``out``; ``what`` names the request in the message (e.g. ``--resolution 100000``)."""
    mem = available_memory()
    if mem is not None and memory > mem:
        raise DsmpnnError(f"{what} would need about {format_bytes(memory)} of memory (estimate), more than the "
                          f"{format_bytes(mem)} available (MemAvailable); choose a smaller size")
    free = free_disk(out) if out is not None and disk else None
    if free is not None and disk > free:
        raise DsmpnnError(f"{what} would write about {format_bytes(disk)} (estimate), more than the "
                          f"{format_bytes(free)} free on the disk of {out}; choose a smaller size")
