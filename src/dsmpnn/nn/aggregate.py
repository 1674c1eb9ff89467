r"""The edge-conditioned aggregation at the heart of :class:`dsmpnn.nn.ECConv`.

.. math::
    \mathrm{out}_i = s_i \sum_{e = (j \to i)} w_e \, \tilde h_e^\top Q_j ,\qquad
    \tilde h_e = [h_e, 1] \text{ or } h_e ,\quad
    h \in \mathbb{R}^{E \times K},\; Q \in \mathbb{R}^{N \times K' \times C}

with :math:`K' = K + 1` when Q carries a last "bias" row (multiplied by a constant 1) and :math:`K' = K`
otherwise; :math:`w_e` are per-edge weights and :math:`s_i` per-target weights (``1/deg(i)`` for a mean). In
ECConv :math:`Q_j = x_j W` and :math:`h_e = \mathrm{kernel}(a_e)`, the kernel MLP on the edge attributes.

The backward pass, with :math:`g = \partial L / \partial \mathrm{out}`:

.. math::
    g^M_e = w_e s_i g_i ,\qquad
    \partial L / \partial Q_j = \tilde H_j^\top G^M_j ,\qquad
    \partial L / \partial h_e = Q_j \, g^M_e .

These functions check shapes and hand the sums to :func:`dsmpnn.nn.kernels.grouped.grouped_aggregate`, which
evaluates them chunk by chunk over an edge plan, without any per-edge tensor, on the backend
:func:`dsmpnn.nn.kernels.backend.choose_backend` picks (the fused C++ kernels on CPU, batched PyTorch products
otherwise).
"""

from __future__ import annotations

import torch

from dsmpnn.nn.kernels.edge_plan import DEFAULT_EDGE_CHUNK, EdgePlan
from dsmpnn.nn.kernels.grouped import grouped_aggregate
from dsmpnn.nn.kernels.rowwise import RowwiseKernel

__all__ = ["edge_kernel_aggregate", "ecconv_aggregate", "edge_weights"]


def edge_weights(dst: torch.Tensor, num_nodes: int, aggr: str, dtype: torch.dtype) -> torch.Tensor:
    """Per-edge aggregation weights ``w [E]``: ``1 / deg(dst)`` for "mean", ones for "sum"."""
    if aggr == "sum":
        return torch.ones(dst.shape[0], dtype=dtype, device=dst.device)
    deg = torch.zeros(num_nodes, dtype=dtype, device=dst.device).index_add_(
        0, dst, torch.ones(dst.shape[0], dtype=dtype, device=dst.device))
    return deg.clamp(min=1).reciprocal()[dst]


def ecconv_aggregate(x: torch.Tensor, wb: torch.Tensor, feats: torch.Tensor, plan: EdgePlan,
                     kernel: RowwiseKernel | None = None, node_weight: torch.Tensor | None = None,
                     base: torch.Tensor | None = None) -> torch.Tensor:
    r"""Fused edge-conditioned aggregation
    :math:`\mathrm{out}_i = s_i \big(b_i + \sum_{e=(j \to i)} \tilde h_e^\top (x_j W)\big)`.

    ``h = kernel(feats)`` chunk by chunk (``feats`` itself when ``kernel`` is None), :math:`\tilde h = [h, 1]`
    when W has K + 1 rows, ``s = node_weight`` (or 1), ``b = base`` (or 0: a partial sum over other edges, added
    after this plan's sum). Differentiable in x, wb, feats, base, node_weight excepted, and the kernel's parameters
    (recomputed per chunk in backward); not twice differentiable.

    Shapes:
        x [N_src, C_in], wb [C_in, K', C], feats [E, F] (edge order of the plan's edge_index),
        node_weight [N] or None, base [N, C] or None -> out [N, C]
    """
    k = kernel.out_features if kernel is not None else feats.shape[1]
    if wb.dim() != 3 or wb.shape[0] != x.shape[1] or wb.shape[1] not in (k, k + 1):
        raise ValueError(f"wb has shape {list(wb.shape)}, expected [C_in={x.shape[1]}, K' in ({k}, {k + 1}), C]")
    if feats.shape[0] != plan.num_edges or x.shape[0] != plan.num_src:
        raise ValueError(f"x has {x.shape[0]} rows and feats {feats.shape[0]}; the plan has {plan.num_src} "
                         f"sources and {plan.num_edges} edges")
    if base is not None and base.shape != (plan.num_nodes, wb.shape[2]):
        raise ValueError(f"base has shape {list(base.shape)}, expected [N={plan.num_nodes}, C={wb.shape[2]}]")
    node_weight = node_weight.detach() if node_weight is not None else None
    return grouped_aggregate(plan, kernel, x, wb, feats, node_weight=node_weight, base=base)


def edge_kernel_aggregate(h: torch.Tensor, q: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
                          w: torch.Tensor | None, num_nodes: int, chunk: int = DEFAULT_EDGE_CHUNK) -> torch.Tensor:
    r""":math:`\mathrm{out}_i = \sum_{e=(j \to i)} w_e h_e^\top Q_j` (Q given; differentiable in h and q, not w).

    Shapes: h [E, K], q [N_src, K, C], src/dst [E] int64, w [E] or None -> out [num_nodes, C].
    """
    if h.shape[0] != src.shape[0] or q.dim() != 3 or h.shape[1] != q.shape[1]:
        raise ValueError(f"h {list(h.shape)} and q {list(q.shape)} do not match: expected [E, K] and [N, K, C]")
    plan = EdgePlan.build(torch.stack([src, dst]), num_nodes, q.shape[0], chunk)
    w = w.detach() if w is not None else None
    return grouped_aggregate(plan, None, q, None, h, edge_weight=w)
