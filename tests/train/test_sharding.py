"""What each rank builds of a mesh's graph (:func:`dsmpnn.train.sharding.decompose`) equals its rows of the
single-process batch, exactly: computed here for every rank in one process (building a rank's part needs no
messages), with ``graph.edge_features: inputs``, whose halo rows' input fields the rank holds itself."""

import numpy as np
import pytest
import torch

from dsmpnn.data import Dataset, Field, MeshSample, write_dataset
from dsmpnn.errors import GraphError
from dsmpnn.graph import build_sampled_plans, halo_reach, sample_nodes, sampled_cap
from dsmpnn.train import load_config
from dsmpnn.train.features import FeatureMap, make_batch
from dsmpnn.train.sharding import MeshShard, decompose, partition_mesh

P, RADIUS = 3, 0.15


@pytest.fixture(scope="module")
def cloud(tmp_path_factory) -> tuple[Dataset, MeshSample]:
    rng = np.random.default_rng(0)
    pos = rng.random((400, 2))
    s = MeshSample(pos, np.column_stack([np.cos(3 * pos[:, 0]), pos.sum(1) ** 2]), rng.random((400, 2)),
                   name="cloud")
    out = tmp_path_factory.mktemp("c") / "cloud"
    write_dataset(out, [("train", s), ("test", s)], [Field("k"), Field("c")], [Field("u"), Field("v")], "cloud")
    data = Dataset(out)
    return data, data.load(data.split("test")[0])


@pytest.mark.parametrize("extra,sampled", [
    (["distributed.partition=metis"], False),  # full-graph inference, 1-hop halo
    (["distributed.partition=rcb", "distributed.halo_hops=2"], True),  # a Nyström sample, halo ring 2
    (["distributed.partition=slab", f"distributed.overlap={1.5 * RADIUS}"], True),  # geometric overlap
    (["distributed.partition=rcb", "graph.max_neighbors=5", "graph.sampled_cap=fixed"], True),  # whole graph
], ids=["metis-full", "rcb-hops2-sampled", "slab-overlap-sampled", "rcb-cap-sampled"])
def test_every_ranks_inputs_and_edge_attributes_are_its_rows_of_one_process(cloud, extra, sampled):
    data, sample = cloud
    cfg = load_config(None, [f"graph.radius={RADIUS}", "graph.edge_features=inputs", *extra])
    fmap = FeatureMap.from_config(data.manifest, cfg)
    gc, dc = cfg.graph, cfg.distributed
    ids = sample_nodes(400, 250, np.random.default_rng(5)) if sampled else np.arange(400)
    ref = make_batch([(sample, ids)], fmap, gc.radius, gc.max_neighbors, torch.float32, cap_mode=gc.sampled_cap)
    assert ref.edge_attr.shape[1] == fmap.edge_dim == 2 + 1 + 2 * 2
    owner = partition_mesh(sample.pos, P, dc.partition, gc.radius, gc.max_neighbors)
    # the plans on the whole graph: which of its edges (edge_ids) each rank holds, in the local order
    cap = sampled_cap(gc.max_neighbors, len(ids), 400, gc.sampled_cap)
    whole = build_sampled_plans(sample.pos, ids, owner, gc.radius, dc.halo_hops, P, cap, overlap=dc.overlap)
    reach = halo_reach(gc.radius, dc.halo_hops, dc.overlap)
    edges, halo = 0, 0
    for rank in range(P):
        mesh = MeshShard.from_sample(sample, owner, rank, fmap, torch.float32, reach=reach)
        shard = decompose(mesh, ids, P, cfg, torch.float32)
        plan = whole.plans[rank]
        assert torch.equal(shard.edge_index, plan.tensor("edge_index"))
        assert torch.equal(shard.edge_attr, ref.edge_attr[plan.tensor("edge_ids")])
        assert torch.equal(shard.x[:plan.num_owned], ref.x[plan.tensor("owned")])
        assert torch.equal(shard.y, ref.y[plan.tensor("owned")])
        edges, halo = edges + plan.num_edges, halo + plan.num_halo
    assert halo > 0 and edges >= ref.edge_index.shape[1]  # the ranks read halo rows; every edge is somewhere


def test_a_rank_without_its_halo_inputs_says_so(cloud):
    data, sample = cloud
    cfg = load_config(None, [f"graph.radius={RADIUS}", "graph.edge_features=inputs", "distributed.partition=rcb"])
    fmap = FeatureMap.from_config(data.manifest, cfg)
    owner = partition_mesh(sample.pos, 2, "rcb", RADIUS)
    mesh = MeshShard.from_sample(sample, owner, 0, fmap, torch.float32)  # reach 0: the owned nodes' fields only
    assert len(mesh.near) == mesh.x.shape[0]
    with pytest.raises(GraphError, match=r"rank 0, mesh 'cloud_\d+': the edge attributes need the input fields of \d+ "
                                         "node\\(s\\) farther from the subdomain than the halo reach"):
        decompose(mesh, np.arange(400), 2, cfg, torch.float32)


def test_geometry_edge_features_hold_no_halo_inputs(cloud):
    data, sample = cloud
    fmap = FeatureMap.from_config(data.manifest, load_config(None, []))
    owner = partition_mesh(sample.pos, 2, "rcb", RADIUS)
    mesh = MeshShard.from_sample(sample, owner, 1, fmap, torch.float32, reach=RADIUS)
    assert mesh.near is None and mesh.near_fields is None and mesh.edge_fields(mesh.owned) is None
