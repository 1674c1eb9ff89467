"""Neural network layers and models: the factorised edge-conditioned convolution, the MPNN, the GCN
baseline. The modules here are the maths; what makes the aggregation fast (C++ kernels and their build, thread
pool, edge plans, the choice of backend) is in :mod:`dsmpnn.nn.kernels`."""

from dsmpnn.nn.aggregate import ecconv_aggregate, edge_kernel_aggregate, edge_weights
from dsmpnn.nn.ecconv import ECConv
from dsmpnn.nn.gcn import GCN
from dsmpnn.nn.kernels.edge_plan import EdgePlan, EdgeSplit, cached_edge_plan, cached_edge_split
from dsmpnn.nn.kernels.rowwise import RowwiseKernel
from dsmpnn.nn.mlp import MLP
from dsmpnn.nn.mpnn import MPNN, Exchange, OverlappedExchange

__all__ = ["ECConv", "EdgePlan", "EdgeSplit", "GCN", "MLP", "MPNN", "Exchange", "OverlappedExchange", "RowwiseKernel",
           "ecconv_aggregate", "cached_edge_plan", "cached_edge_split", "edge_kernel_aggregate", "edge_weights"]
