"""Build the model a config describes."""

from __future__ import annotations

from torch import nn

from dsmpnn.nn import GCN, MPNN
from dsmpnn.train.config import ModelConfig
from dsmpnn.train.features import FeatureMap

__all__ = ["build_model", "gcn_width", "count_parameters"]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _mpnn(cfg: ModelConfig, fmap: FeatureMap) -> MPNN:
    return MPNN(fmap.in_channels, fmap.out_channels, fmap.edge_dim, hidden=cfg.hidden, layers=cfg.layers,
                kernel_hidden=cfg.kernel_hidden, aggr=cfg.aggr, act=cfg.act, encoder_hidden=cfg.encoder_hidden,
                decoder_hidden=cfg.decoder_hidden, residual=cfg.residual, layer_norm=cfg.layer_norm,
                checkpoint_layers=cfg.checkpoint_layers)


def _gcn(cfg: ModelConfig, fmap: FeatureMap, width: int) -> GCN:
    return GCN(fmap.in_channels, fmap.out_channels, hidden=width, layers=cfg.layers, act=cfg.act,
               encoder_hidden=cfg.encoder_hidden, decoder_hidden=cfg.decoder_hidden, residual=cfg.residual,
               layer_norm=cfg.layer_norm)


def gcn_width(cfg: ModelConfig, fmap: FeatureMap) -> int:
    """``cfg.gcn_hidden``, or (null) the GCN width whose parameter count is closest to the MPNN of ``cfg``.

    The GCN has the same depth, encoder/decoder hidden sizes, residual and LayerNorm as the MPNN; only the latent
    width grows to spend the budget the MPNN's kernel MLPs take. Its count is a quadratic in the width
    (``layers * (w^2 + w)`` in the convolutions plus linear terms), so it is evaluated in closed form for every
    width up to the first one past the budget.
    """
    if cfg.gcn_hidden is not None:
        return cfg.gcn_hidden
    target = count_parameters(_mpnn(cfg, fmap))
    enc = cfg.encoder_hidden[-1] if cfg.encoder_hidden else fmap.in_channels
    dec = cfg.decoder_hidden[0] if cfg.decoder_hidden else fmap.out_channels
    fixed = count_parameters(_gcn(cfg, fmap, 1)) - _width_terms(cfg, enc, dec, 1)

    def count(w: int) -> int:
        return fixed + _width_terms(cfg, enc, dec, w)

    w = 1
    while count(w + 1) <= target:
        w += 1
    return w if target - count(w) <= count(w + 1) - target else w + 1


def _width_terms(cfg: ModelConfig, enc: int, dec: int, w: int) -> int:
    """Parameters of a GCN that depend on its width w: encoder output layer (enc*w + w), convolutions
    (w*w + w each), LayerNorms (2w each), decoder input layer (w*dec)."""
    return enc * w + w + cfg.layers * (w * w + w + (2 * w if cfg.layer_norm else 0)) + w * dec


def build_model(cfg: ModelConfig, fmap: FeatureMap) -> nn.Module:
    """The model of ``cfg`` (``kind`` mpnn or gcn) sized for the dataset's input, target and edge channels."""
    if cfg.kind == "gcn":
        return _gcn(cfg, fmap, gcn_width(cfg, fmap))
    return _mpnn(cfg, fmap)
