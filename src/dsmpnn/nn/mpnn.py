r"""The MPNN surrogate of Bonnet et al. (2022): encoder -> L edge-conditioned convolutions -> decoder."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from dsmpnn.nn.ecconv import ECConv
from dsmpnn.nn.kernels.edge_plan import EdgeSplit, cached_edge_split
from dsmpnn.nn.mlp import MLP, activation, rowwise

__all__ = ["MPNN", "Exchange", "OverlappedExchange"]

Exchange = Callable[[torch.Tensor, int], torch.Tensor]
"""``exchange(h, layer) -> h``: refreshes halo rows of h before message-passing layer ``layer`` (distributed)."""


@runtime_checkable
class OverlappedExchange(Protocol):
    """An exchange the layer overlaps with its work: ``start`` sends and posts the receives, ``finish`` waits and
    returns h with its halo rows current (differentiable, like :data:`Exchange`; ``finish`` may be called again on
    the same handle, as the recomputation of a checkpointed layer does, without communicating).

    ``first_halo_row``: rows ``>= first_halo_row`` are the ones each exchange overwrites, rows below it never are.
    ``start(h, layer)`` returns None before a layer that needs no exchange.
    """

    first_halo_row: int

    def start(self, h: torch.Tensor, layer: int) -> Any | None: ...

    def finish(self, h: torch.Tensor, handle: Any) -> torch.Tensor: ...


class MPNN(nn.Module):
    r"""Encoder-processor-decoder message-passing network.

    .. math::
        h^0 = N_e(x_i),\quad
        h^{l+1} = \mathrm{LN}\big(h^l + \sigma(\mathrm{ECConv}_l(h^l, e))\big),\quad
        \hat y_i = N_d(h^L_i)

    (residual and LayerNorm optional; without them :math:`h^{l+1} = \sigma(\mathrm{ECConv}_l(h^l, e))`).

    Shapes:
        x: [N, in_channels], edge_index: [2, E], edge_attr: [E, edge_dim] -> [N, out_channels]

    ``exchange``, when given, is called as ``h = exchange(h, l)`` before layer l; the distributed runtime uses it
    to refresh halo nodes. Without it the model is the single-process S-MPNN.

    An :class:`OverlappedExchange` runs while the layer computes: the edges are split once per graph by source
    (:class:`~dsmpnn.nn.kernels.edge_plan.EdgeSplit`: interior sources, never overwritten, and halo sources), and
    each layer l runs ``handle = exchange.start(h, l)``, the interior edges' aggregation on h, ``h =
    exchange.finish(h, handle)`` (the wait), then the boundary edges' aggregation, root term, activation, residual
    and LayerNorm (:meth:`ECConv.forward_overlapped`: the same sums in another order of addition). In backward the
    adjoint exchange is sent before the interior edges' backward runs and received after it (autograd runs the
    nodes recorded later first, and the interior edges' were recorded between the exchange's start and finish).

    ``checkpoint_layers``: in training (grad enabled), each processor layer (convolution, activation, residual,
    LayerNorm) runs under ``torch.utils.checkpoint`` (non-reentrant): only its input [N, hidden] is kept and the
    layer is recomputed in backward, so activation memory is one [N, hidden] tensor per layer plus one layer's
    working set. Outputs and gradients are the same as without. The exchange stays outside the checkpointed
    function: it runs once per layer in forward and never in the recomputation (an overlapped exchange is started
    outside it; its ``finish`` inside only waits the first time).
    """

    def __init__(self, in_channels: int, out_channels: int, edge_dim: int, hidden: int = 32, layers: int = 4,
                 kernel_hidden: Sequence[int] = (64,), aggr: str = "mean", act: str = "gelu",
                 encoder_hidden: Sequence[int] = (64,), decoder_hidden: Sequence[int] = (64,),
                 residual: bool = True, layer_norm: bool = False, checkpoint_layers: bool = False) -> None:
        super().__init__()
        self.checkpoint_layers = checkpoint_layers
        self.encoder = MLP([in_channels, *encoder_hidden, hidden], act=act, act_last=True)
        self.convs = nn.ModuleList(
            ECConv(hidden, hidden, edge_dim, kernel_hidden, aggr=aggr, act=act) for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers)) if layer_norm else None
        self.act = activation(act)
        self.residual = residual
        self.decoder = MLP([hidden, *decoder_hidden, out_channels], act=act)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor,
                exchange: Exchange | OverlappedExchange | None = None) -> torch.Tensor:
        h = rowwise(self.encoder, x)  # [N, hidden]
        if isinstance(exchange, OverlappedExchange):
            return rowwise(self.decoder, self._overlapped(h, edge_index, edge_attr, exchange))  # [N, out_channels]
        recompute = self.checkpoint_layers and torch.is_grad_enabled()
        for layer in range(len(self.convs)):
            if exchange is not None:
                h = exchange(h, layer)  # outside the checkpointed region: never re-run
            if recompute:
                h = checkpoint(self._layer, layer, h, edge_index, edge_attr, use_reentrant=False)
            else:
                h = self._layer(layer, h, edge_index, edge_attr)  # [N, hidden]
        return rowwise(self.decoder, h)  # [N, out_channels]

    def _layer(self, layer: int, h: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor) -> torch.Tensor:
        """Processor layer ``layer``: h -> LN(h + act(conv(h))) (residual and LayerNorm optional)."""
        return self._after_conv(layer, h, self.convs[layer](h, edge_index, edge_attr))

    def _after_conv(self, layer: int, h: torch.Tensor, conv: torch.Tensor) -> torch.Tensor:
        """LN(h + act(conv)) (residual and LayerNorm optional): [N, hidden]. Without autograd the sum is made in
        act(conv)'s memory (one [N, hidden] tensor less at a time)."""
        u = self.act(conv)  # [N, hidden]
        if self.residual:
            h = h + u if torch.is_grad_enabled() else u.add_(h)
        else:
            h = u
        if self.norms is not None:
            h = self.norms[layer](h)
        return h

    def _overlapped(self, h: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor,
                    exchange: OverlappedExchange) -> torch.Tensor:
        """The processor layers with each exchange overlapped by the interior edges' work: [N, hidden]."""
        split = cached_edge_split(edge_index, h.shape[0], exchange.first_halo_row)
        attrs = split.split_attr(edge_attr)  # ([E_I, D], [E_B, D])
        recompute = self.checkpoint_layers and torch.is_grad_enabled()
        for layer in range(len(self.convs)):
            handle = exchange.start(h, layer)  # outside the checkpointed region: sent once
            args = (layer, h, exchange, handle, split, attrs)
            h = checkpoint(self._split_layer, *args, use_reentrant=False) if recompute else self._split_layer(*args)
        return h

    def _split_layer(self, layer: int, h: torch.Tensor, exchange: OverlappedExchange, handle: Any | None,
                     split: EdgeSplit, attrs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Processor layer ``layer`` around the exchange ``handle`` (None: none before this layer)."""
        refresh = None if handle is None else lambda: exchange.finish(h, handle)  # waits; halo rows current
        conv, h = self.convs[layer].forward_overlapped(h, split, attrs, refresh)  # [N, hidden] each
        return self._after_conv(layer, h, conv)
