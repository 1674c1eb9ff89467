"""Build the model a config describes."""

from __future__ import annotations

from torch import nn

from dsmpnn.nn import MPNN
from dsmpnn.train.config import ModelConfig
from dsmpnn.train.features import FeatureMap

__all__ = ["build_model"]


def build_model(cfg: ModelConfig, fmap: FeatureMap) -> nn.Module:
    """The MPNN of ``cfg`` sized for the dataset's input, target and edge channels."""
    return MPNN(fmap.in_channels, fmap.out_channels, fmap.edge_dim, hidden=cfg.hidden, layers=cfg.layers,
                kernel_hidden=cfg.kernel_hidden, aggr=cfg.aggr, act=cfg.act, encoder_hidden=cfg.encoder_hidden,
                decoder_hidden=cfg.decoder_hidden, residual=cfg.residual, layer_norm=cfg.layer_norm)
