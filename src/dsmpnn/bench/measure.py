"""Honest timing and memory measurement of a callable: repeated wall-clock times and peak memory.

Peak memory is the most memory held at any moment while the callable runs, above what was held when it started
(inputs, parameters and earlier tensors are not counted; the output and gradients it creates are):

- CUDA: the caching allocator's peak statistics (tensor bytes);
- CPU on Linux with glibc ("rss"): the process's peak resident set size (VmHWM, reset through
  /proc/self/clear_refs) minus its resident size at the start. glibc is first told to give every freed block of
  64 KiB or more back to the system at once (mallopt M_MMAP_THRESHOLD / M_TRIM_THRESHOLD), so that memory freed
  earlier and kept by the allocator cannot hide new allocations. This sees everything: tensors made on any
  thread, BLAS buffers, thread stacks;
- elsewhere ("profiler"): tensor allocation events recorded by ``torch.profiler`` (``profile_memory=True``),
  replayed in time order. These are only the calling thread's allocations.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["Timing", "time_calls", "peak_memory", "peak_tensor_bytes", "dense_matmul_gflops", "synchronize"]


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of repeated calls."""

    times: tuple[float, ...]

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def spread(self) -> float:
        """max / min - 1: how noisy the repeats were."""
        return max(self.times) / min(self.times) - 1.0

    def as_dict(self) -> dict:
        return {"min_s": self.min, "median_s": self.median, "spread": self.spread, "times_s": list(self.times)}


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], repeats: int, device: torch.device | str = "cpu") -> Timing:
    """Time ``repeats`` calls of ``fn`` (after none: warm up beforehand)."""
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return Timing(tuple(times))


def peak_memory(fn: Callable[[], object], device: torch.device | str = "cpu") -> tuple[int, str]:
    """Peak bytes held by ``fn`` above the level at its start, and the method used: "cuda", "rss" or
    "profiler" (see the module docstring)."""
    device = torch.device(device)
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base), "cuda"
    libc = _glibc()
    if libc is not None:
        try:
            libc.malloc_trim(0)
            base = _proc_status("VmRSS:")
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            fn()
            return max(_proc_status("VmHWM:") - base, 0), "rss"
        except OSError:
            pass
    return peak_tensor_bytes(fn), "profiler"


def peak_tensor_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes of CPU tensors allocated by ``fn`` on the calling thread, above the level at its start."""
    from torch._C._profiler import _EventType  # noqa: PLC0415 - the profiler's event tree (no public API yet)

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
    events.sort()
    return int(max(itertools.accumulate(size for _, size in events), default=0))


_LIBC: ctypes.CDLL | None | bool = False


def _glibc() -> ctypes.CDLL | None:
    """glibc, set to return freed blocks of 64 KiB or more to the system at once; None elsewhere."""
    global _LIBC
    if _LIBC is False:
        _LIBC = None
        if sys.platform.startswith("linux") and os.path.exists("/proc/self/clear_refs"):
            try:
                libc = ctypes.CDLL("libc.so.6")
                m_trim_threshold, m_mmap_threshold = -1, -3
                if libc.mallopt(m_mmap_threshold, 65536) == 1 and libc.mallopt(m_trim_threshold, 65536) == 1:
                    _LIBC = libc
            except (OSError, AttributeError):
                pass
    return _LIBC


def _proc_status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


def dense_matmul_gflops(size: int = 4096, repeats: int = 3, device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32) -> float:
    """Throughput of one [size, size] x [size, size] matmul (best of ``repeats``), in GFLOP/s (2 size^3 FLOPs)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up
    timing = time_calls(lambda: a @ b, repeats, device)
    return 2.0 * size**3 / timing.min / 1e9
