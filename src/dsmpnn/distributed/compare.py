"""How far apart P ranks and one process may be: the tolerances of ``dsmpnn check`` and the exactness tests."""

from __future__ import annotations

import torch

__all__ = ["TOLERANCE", "max_rel_diff"]

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
"""Largest accepted relative difference between P ranks and one process, per dtype."""


def max_rel_diff(a: torch.Tensor, ref: torch.Tensor) -> float:
    """``max |a - ref| / max |ref|`` (0 when both are zero); the scale is the whole tensor, not each entry."""
    a, ref = a.detach().double().cpu(), ref.detach().double().cpu()
    scale = ref.abs().max().item() if ref.numel() else 0.0
    diff = (a - ref).abs().max().item() if ref.numel() else 0.0
    return diff / scale if scale > 0 else diff
