"""Neural network layers and models: the factorised edge-conditioned convolution and the MPNN."""

from dsmpnn.nn.aggregate import edge_kernel_aggregate, edge_weights
from dsmpnn.nn.ecconv import ECConv
from dsmpnn.nn.mlp import MLP
from dsmpnn.nn.mpnn import MPNN, Exchange

__all__ = ["ECConv", "MLP", "MPNN", "Exchange", "edge_kernel_aggregate", "edge_weights"]
