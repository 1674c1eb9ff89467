"""Radius graphs, edge attributes, Nyström sampling, partitioners and halo plans."""

from dsmpnn.graph.radius import Graph, build_graph, edge_attributes, estimate_edges, radius_graph
from dsmpnn.graph.sampling import covering_samples, sample_nodes

__all__ = ["Graph", "build_graph", "covering_samples", "edge_attributes", "estimate_edges", "radius_graph",
           "sample_nodes"]
