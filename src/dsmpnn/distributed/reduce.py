r"""Loss and gradient reductions that make P ranks take the single-process step.

With the loss :math:`L = \frac{1}{n} \sum_p \sum_{i \in O_p} \ell_i` (n the global number of target entries),
rank p back-propagates only its share :math:`L_p = \frac1n \sum_{i \in O_p} \ell_i`; the halo exchange's
backward routes every other contribution to the owner, so summing the parameter gradients over ranks
(``all_reduce`` SUM, not DDP's average) gives exactly :math:`\nabla L`. The step that does this is
:func:`dsmpnn.train.step.run_step`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn

from dsmpnn.distributed.process_group import collective

__all__ = ["all_reduce_sum", "allreduce_gradients", "broadcast_parameters"]


def _world(group) -> int:
    return dist.get_world_size(group) if dist.is_initialized() else 1


def all_reduce_sum(values: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Sum of ``values`` over ranks (a new tensor, no autograd); ``values`` itself without a process group."""
    out = values.detach().clone()
    if _world(group) > 1:
        with collective("all-reduce (sum of losses / flags)", group=group):
            dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out


def allreduce_gradients(params: Iterable[nn.Parameter], group: dist.ProcessGroup | None = None) -> None:
    """Sum every parameter gradient over ranks (in place), so every rank holds the global gradient.

    A parameter with no gradient on this rank counts as zero; it keeps ``grad = None`` only when no rank has a
    gradient for it (then the optimizer skips it, as in one process). Gradients travel as one flat buffer per
    dtype.
    """
    params = [p for p in params if p.requires_grad]
    if _world(group) == 1 or not params:
        return
    device = params[0].device
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=device)
    with collective("gradient all-reduce (which gradients exist)", group=group):
        dist.all_reduce(has, op=dist.ReduceOp.MAX, group=group)
    present = [p for p, h in zip(params, has.tolist()) if h]
    for p in present:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict[torch.dtype, list[nn.Parameter]] = {}
    for p in present:
        by_dtype.setdefault(p.grad.dtype, []).append(p)
    for group_params in by_dtype.values():
        flat = torch.cat([p.grad.reshape(-1) for p in group_params])
        with collective("gradient all-reduce", group=group):
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        offset = 0
        for p in group_params:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n


def broadcast_parameters(module: nn.Module, src: int = 0, group: dist.ProcessGroup | None = None) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank (call once after building the model)."""
    if _world(group) == 1:
        return
    with torch.no_grad(), collective(f"parameter broadcast from rank {src}", group=group):
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=src, group=group)
