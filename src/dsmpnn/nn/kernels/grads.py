"""What one backward pass of the aggregation computes, and each worker's partial sums of the small gradients."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["Needs", "grad_accumulators"]


@dataclass(frozen=True)
class Needs:
    """Which gradients backward computes: of x, wb, feats and of each kernel parameter."""

    x: bool
    wb: bool
    f: bool
    p: tuple[bool, ...]

    @property
    def q(self) -> bool:  # dL/dQ is needed
        return self.x or self.wb

    @property
    def h(self) -> bool:  # dL/dh is needed
        return self.f or any(self.p)


def grad_accumulators(x: torch.Tensor, wb: torch.Tensor | None, params: Sequence[torch.Tensor],
                       need: Needs) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
    """One worker's partial sums: dL/dW [C_in, K' C], and the kernel's parameter gradients (Linear weights
    transposed, [in, out], see RowwiseKernel.backward)."""
    gwb = x.new_zeros(wb.shape[0], wb.shape[1] * wb.shape[2]) if need.wb else None
    gp = [(p.new_zeros(p.shape[::-1]) if p.dim() == 2 else torch.zeros_like(p)) if n else None
          for p, n in zip(params, need.p)]
    return gwb, gp

