r"""The MPNN surrogate of Bonnet et al. (2022): encoder -> L edge-conditioned convolutions -> decoder."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from dsmpnn.nn.ecconv import ECConv
from dsmpnn.nn.mlp import MLP, activation

__all__ = ["MPNN", "Exchange"]

Exchange = Callable[[torch.Tensor, int], torch.Tensor]
"""``exchange(h, layer) -> h``: refreshes halo rows of h before message-passing layer ``layer`` (distributed)."""


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

    ``checkpoint_layers``: in training (grad enabled), each processor layer (convolution, activation, residual,
    LayerNorm) runs under ``torch.utils.checkpoint`` (non-reentrant): only its input [N, hidden] is kept and the
    layer is recomputed in backward, so activation memory is one [N, hidden] tensor per layer plus one layer's
    working set. Outputs and gradients are the same as without. The exchange stays outside the checkpointed
    function: it runs once per layer in forward and never in the recomputation.
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
                exchange: Exchange | None = None) -> torch.Tensor:
        h = self.encoder(x)  # [N, hidden]
        recompute = self.checkpoint_layers and torch.is_grad_enabled()
        for layer in range(len(self.convs)):
            if exchange is not None:
                h = exchange(h, layer)  # outside the checkpointed region: never re-run
            if recompute:
                h = checkpoint(self._layer, layer, h, edge_index, edge_attr, use_reentrant=False)
            else:
                h = self._layer(layer, h, edge_index, edge_attr)  # [N, hidden]
        return self.decoder(h)  # [N, out_channels]

    def _layer(self, layer: int, h: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor) -> torch.Tensor:
        """Processor layer ``layer``: h -> LN(h + act(conv(h))) (residual and LayerNorm optional)."""
        u = self.act(self.convs[layer](h, edge_index, edge_attr))  # [N, hidden]
        h = h + u if self.residual else u
        if self.norms is not None:
            h = self.norms[layer](h)
        return h
