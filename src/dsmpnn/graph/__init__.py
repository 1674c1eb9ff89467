"""Radius graphs, edge attributes, Nyström sampling, partitioners and halo plans."""

from typing import TYPE_CHECKING

from dsmpnn._lazy import lazy_package

if TYPE_CHECKING:
    from dsmpnn.graph.halo import (HaloPlan, LocalDecomposition, SampledDecomposition, batch_plans, build_halo_plan,
                                   build_halo_plans, build_local_plan, build_overlap_plans, build_sampled_plans,
                                   check_plans, halo_reach, within_reach)
    from dsmpnn.graph.partition import (DEFAULT_PARTITION_METHOD, PARTITION_METHODS, PartitionReport, check_owner,
                                        partition, partition_report)
    from dsmpnn.graph.radius import (Graph, build_graph, edge_attributes, estimate_edges, node_pair_fields,
                                     radius_graph)
    from dsmpnn.graph.sampling import CAP_MODES, covering_samples, sample_nodes, sampled_cap

_LAZY = {"HaloPlan": "halo", "LocalDecomposition": "halo", "SampledDecomposition": "halo", "batch_plans": "halo",
         "build_halo_plan": "halo", "build_halo_plans": "halo", "build_local_plan": "halo",
         "build_overlap_plans": "halo", "build_sampled_plans": "halo", "check_plans": "halo", "halo_reach": "halo",
         "within_reach": "halo",
         "DEFAULT_PARTITION_METHOD": "partition", "PARTITION_METHODS": "partition", "PartitionReport": "partition",
         "check_owner": "partition", "partition": "partition", "partition_report": "partition", "Graph": "radius",
         "build_graph": "radius", "edge_attributes": "radius", "estimate_edges": "radius",
         "node_pair_fields": "radius", "radius_graph": "radius", "CAP_MODES": "sampling",
         "covering_samples": "sampling", "sample_nodes": "sampling", "sampled_cap": "sampling"}
__all__ = ["CAP_MODES", "DEFAULT_PARTITION_METHOD", "Graph", "HaloPlan", "LocalDecomposition", "PARTITION_METHODS",
           "PartitionReport", "SampledDecomposition", "batch_plans", "build_graph", "build_halo_plan",
           "build_halo_plans", "build_local_plan", "build_overlap_plans", "build_sampled_plans", "check_owner",
           "check_plans", "covering_samples", "edge_attributes", "estimate_edges", "halo_reach", "node_pair_fields",
           "partition", "partition_report", "radius_graph", "sample_nodes", "sampled_cap", "within_reach"]
lazy_package(__name__)
