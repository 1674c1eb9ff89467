r"""Node-based GCN baseline (Kipf & Welling 2017) with the MPNN's encoder and decoder.

The DS-MPNN paper compares its MPNN with a graph convolutional network whose messages do not depend on edge
attributes. This module swaps the MPNN's edge-conditioned convolutions for PyG's ``GCNConv`` (pure PyTorch; it
needs neither torch-scatter nor torch-sparse) and keeps everything else (encoder, residual, LayerNorm, decoder).

PyTorch Geometric is optional (the ``gcn`` extra: ``pip install 'dsmpnn[gcn]'``): it is imported when a GCN is
built, not when this module is, so a plain install trains, evaluates and predicts with the MPNN; building a GCN
without it raises :class:`~dsmpnn.errors.MissingDependency` naming the install command.

Single process only: ``GCNConv`` normalises each message by :math:`1/\sqrt{\hat d_i \hat d_j}`, which needs the
degree of the *source* node too. On a rank with a one-hop halo the halo nodes' degrees are incomplete (the local
graph holds only the edges into owned nodes), so a domain-decomposed GCN would differ from one process; the
trainer refuses ``model.kind: gcn`` on more than one rank.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dsmpnn.nn.mlp import MLP, activation
from dsmpnn.nn.mpnn import Exchange
from dsmpnn.optional import PYG_INSTALL, require

__all__ = ["GCN"]


class GCN(nn.Module):
    r"""Encoder -> ``layers`` graph convolutions -> decoder.

    .. math::
        h^0 = N_e(x_i),\quad
        h^{l+1} = \mathrm{LN}\big(h^l + \sigma(\hat D^{-1/2} (A + I) \hat D^{-1/2} h^l W_l + b_l)\big),\quad
        \hat y_i = N_d(h^L_i)

    with :math:`A` the adjacency of ``edge_index`` (:math:`A_{ij} = 1` for an edge j -> i) and
    :math:`\hat D = \mathrm{diag}(1 + \sum_j A_{ij})`. Residual and LayerNorm are optional as in the MPNN.

    Shapes:
        x: [N, in_channels], edge_index: [2, E], edge_attr: ignored -> [N, out_channels]

    ``exchange`` is accepted for interface parity with :class:`~dsmpnn.nn.MPNN` and called before every layer, but
    the result is not exact on several ranks (see the module docstring).
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 32, layers: int = 4, act: str = "gelu",
                 encoder_hidden: Sequence[int] = (64,), decoder_hidden: Sequence[int] = (64,),
                 residual: bool = True, layer_norm: bool = False) -> None:
        gcn_conv = require("torch_geometric.nn", "model.kind 'gcn' (PyG's GCNConv)", PYG_INSTALL).GCNConv
        super().__init__()
        self.encoder = MLP([in_channels, *encoder_hidden, hidden], act=act, act_last=True)
        self.convs = nn.ModuleList(gcn_conv(hidden, hidden) for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers)) if layer_norm else None
        self.act = activation(act)
        self.residual = residual
        self.decoder = MLP([hidden, *decoder_hidden, out_channels], act=act)

    def reset_parameters(self) -> None:
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor | None = None,
                exchange: Exchange | None = None) -> torch.Tensor:
        h = self.encoder(x)  # [N, hidden]
        edge_index = edge_index.long()  # graphs hold int32 ids; PyG's scatter kernels are int64 on every device
        for layer, conv in enumerate(self.convs):
            if exchange is not None:
                h = exchange(h, layer)
            u = self.act(conv(h, edge_index))  # [N, hidden]
            h = h + u if self.residual else u
            if self.norms is not None:
                h = self.norms[layer](h)
        return self.decoder(h)  # [N, out_channels]
