"""Which implementation evaluates the edge aggregation: the one place that decides, and its switches.

Three backends compute the same sums (only the order of addition differs):

- ``"fused"``: the C++ kernels (:mod:`dsmpnn.nn.kernels.native`), one call per chunk; CPU, float32/float64;
- ``"bmm"``: PyTorch, one batched product per out-degree in each chunk (:mod:`dsmpnn.nn.kernels.bmm`);
- ``"padded"``: PyTorch, one degree-padded batched product per chunk, compiled on CUDA when possible
  (:mod:`dsmpnn.nn.kernels.padded`; UNTESTED ON GPU).

:func:`choose_backend` applies the rules below, in this order; the aggregation (forward and backward), the edge
plan's default source order and ``dsmpnn bench conv`` all ask it, so they always agree.

1. :data:`PADDED` True, or None on a CUDA device: ``"padded"``.
2. :data:`FUSED` False, a device other than the CPU, a dtype other than float32/float64, or ``DSMPNN_NATIVE=0``
   in the environment (read at each call): ``"bmm"``.
3. The kernels built and loaded (:func:`dsmpnn.nn.kernels.native.kernels`, once per process): ``"fused"``;
   unavailable (no compiler, a failed build): ``"bmm"``, unless :data:`FUSED` is True, which raises.
"""

from __future__ import annotations

import os
from typing import Literal

import torch

from dsmpnn.nn.kernels import native

__all__ = ["Backend", "FUSED", "PADDED", "choose_backend"]

Backend = Literal["fused", "bmm", "padded"]

FUSED: bool | None = None
"""The fused C++ kernels: None (default) wherever they can run, False never, True always where the other rules
allow them (CPU, float32/float64, not padded): then :func:`choose_backend` raises when they are unavailable."""

PADDED: bool | None = None
"""The degree-padded ``bmm`` per chunk: None (default) on CUDA only, True on every device, False never."""

_FUSED_DTYPES = (None, torch.float32, torch.float64)


def choose_backend(device: torch.device, dtype: torch.dtype | None = None) -> Backend:
    """The backend of an aggregation on ``device`` in ``dtype`` (None: whatever dtype the caller will use, as an
    edge plan, which has none, asks). The rules are the module's; raises RuntimeError when :data:`FUSED` is True
    and the kernels are turned off by ``DSMPNN_NATIVE=0`` or could not be built."""
    if PADDED or (PADDED is None and device.type == "cuda"):
        return "padded"
    if FUSED is False or device.type != "cpu" or dtype not in _FUSED_DTYPES:
        return "bmm"
    if os.environ.get("DSMPNN_NATIVE", "1") == "0":
        if FUSED:
            raise RuntimeError("backend.FUSED is True but DSMPNN_NATIVE=0 turns the fused CPU kernels off")
        return "bmm"
    if native.kernels() is not None:
        return "fused"
    if FUSED:
        raise RuntimeError("backend.FUSED is True but the fused CPU kernels could not be built (see the warning)")
    return "bmm"
