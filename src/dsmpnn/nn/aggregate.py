r"""The edge-conditioned aggregation at the heart of :class:`dsmpnn.nn.ECConv`.

.. math::
    \mathrm{out}_i = \sum_{e = (j \to i)} w_e \, h_e^\top Q_j ,\qquad
    h \in \mathbb{R}^{E \times K},\; Q \in \mathbb{R}^{N \times K \times C},\; w \in \mathbb{R}^{E}

with :math:`w_e = 1/\deg(i)` for mean and 1 for sum aggregation. A custom autograd function evaluates it over
chunks of edges and recomputes the per-edge gathers in backward, so neither pass stores an [E, K, C] tensor:

.. math::
    \partial L / \partial h_e = w_e \, Q_j \, g_i ,\qquad
    \partial L / \partial Q_j = \sum_{e = (j \to i)} w_e \, h_e \, g_i^\top .
"""

from __future__ import annotations

import torch

__all__ = ["edge_kernel_aggregate", "edge_weights", "DEFAULT_EDGE_CHUNK"]

DEFAULT_EDGE_CHUNK = 32_768
"""Edges per chunk: bounds temporary memory at about chunk x K x C floats."""


def edge_weights(dst: torch.Tensor, num_nodes: int, aggr: str, dtype: torch.dtype) -> torch.Tensor:
    """Per-edge aggregation weights ``w [E]``: ``1 / deg(dst)`` for "mean", ones for "sum"."""
    if aggr == "sum":
        return torch.ones(dst.shape[0], dtype=dtype, device=dst.device)
    deg = torch.zeros(num_nodes, dtype=dtype, device=dst.device).index_add_(
        0, dst, torch.ones(dst.shape[0], dtype=dtype, device=dst.device))
    return deg.clamp(min=1).reciprocal()[dst]


class _EdgeKernelAggregate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, q, src, dst, w, num_nodes, chunk):  # noqa: D401 - autograd signature
        out = q.new_zeros(num_nodes, q.shape[2])  # [N, C]
        for s in range(0, src.shape[0], chunk):
            sl = slice(s, s + chunk)
            msg = torch.bmm(h[sl].unsqueeze(1), q[src[sl]]).squeeze(1)  # [e, C]
            out.index_add_(0, dst[sl], msg * w[sl, None])
        ctx.save_for_backward(h, q, src, dst, w)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, g):
        h, q, src, dst, w = ctx.saved_tensors
        gh = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        gq = torch.zeros_like(q) if ctx.needs_input_grad[1] else None
        for s in range(0, src.shape[0], ctx.chunk):
            sl = slice(s, s + ctx.chunk)
            gd = g[dst[sl]] * w[sl, None]  # [e, C]
            if gh is not None:
                gh[sl] = torch.bmm(q[src[sl]], gd.unsqueeze(2)).squeeze(2)  # [e, K]
            if gq is not None:
                gq.index_add_(0, src[sl], h[sl, :, None] * gd[:, None, :])  # [e, K, C] temporary
        return gh, gq, None, None, None, None, None


def edge_kernel_aggregate(h: torch.Tensor, q: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
                          w: torch.Tensor, num_nodes: int, chunk: int = DEFAULT_EDGE_CHUNK) -> torch.Tensor:
    r""":math:`\mathrm{out}_i = \sum_{e=(j \to i)} w_e h_e^\top Q_j`.

    Shapes: h [E, K], q [N_src, K, C], src/dst [E] int64, w [E] -> out [num_nodes, C].
    """
    return _EdgeKernelAggregate.apply(h, q, src, dst, w, num_nodes, chunk)
