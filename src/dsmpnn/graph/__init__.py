"""Radius graphs, edge attributes, Nyström sampling, partitioners and halo plans."""

from dsmpnn.graph.halo import (HaloPlan, LocalDecomposition, SampledDecomposition, build_halo_plan,
                               build_halo_plans, build_local_plan, build_overlap_plans, build_sampled_plans,
                               check_plans)
from dsmpnn.graph.partition import (DEFAULT_PARTITION_METHOD, PARTITION_METHODS, PartitionReport, check_owner,
                                    partition, partition_report)
from dsmpnn.graph.radius import Graph, build_graph, edge_attributes, estimate_edges, radius_graph
from dsmpnn.graph.sampling import CAP_MODES, covering_samples, sample_nodes, sampled_cap

__all__ = ["CAP_MODES", "DEFAULT_PARTITION_METHOD", "Graph", "HaloPlan", "LocalDecomposition", "PARTITION_METHODS",
           "PartitionReport", "SampledDecomposition", "build_graph", "build_halo_plan", "build_halo_plans",
           "build_local_plan", "build_overlap_plans",
           "build_sampled_plans", "check_owner", "check_plans", "covering_samples", "edge_attributes",
           "estimate_edges", "partition", "partition_report", "radius_graph", "sample_nodes", "sampled_cap"]
