"""Model tensors from mesh samples: the edge attributes of ``graph.edge_features`` and the models built for them."""

import numpy as np
import pytest
import torch

from dsmpnn.data import Dataset, Field, MeshSample, write_dataset
from dsmpnn.graph import radius_graph
from dsmpnn.train import load_config
from dsmpnn.train.factory import build_model
from dsmpnn.train.features import FeatureMap, make_batch
from tests.helpers.oracles import brute_edge_attributes

RADIUS = 0.2


@pytest.fixture(scope="module")
def cloud(tmp_path_factory) -> tuple[Dataset, MeshSample]:
    """A 2D point cloud with two input fields (k, c) and one target, as a dataset (its normalisation) and a sample."""
    rng = np.random.default_rng(0)
    pos = rng.random((150, 2))
    s = MeshSample(pos, np.column_stack([np.sin(4 * pos[:, 0]) + 2, 10 * pos[:, 1]]), rng.random((150, 1)),
                   name="cloud")
    out = tmp_path_factory.mktemp("c") / "cloud"
    write_dataset(out, [("train", s), ("test", s)], [Field("k"), Field("c")], [Field("u")], "cloud")
    data = Dataset(out)
    return data, data.load(data.split("test")[0])


@pytest.mark.parametrize("use_pos", [True, False])
def test_input_edge_features_equal_the_reference_on_a_subset(cloud, use_pos):
    """e_ij = [(p_j - p_i) / r, |p_j - p_i| / r, a_i, a_j] with a the normalised input fields of the subset's
    nodes (columns of the model input x, not the positions); the geometry columns as with ``geometry``."""
    data, sample = cloud
    cfg = load_config(None, [f"model.use_pos={use_pos}", "graph.edge_features=inputs"])
    fmap = FeatureMap.from_config(data.manifest, cfg)
    assert fmap.edge_features == "inputs" and fmap.edge_dim == 2 + 1 + 2 * 2
    idx = np.sort(np.random.default_rng(1).choice(150, 90, replace=False))
    batch = make_batch([(sample, idx)], fmap, RADIUS, None, torch.float64)
    a = data.manifest.stats["x"].normalize(sample.x)[idx]  # [n, F] normalised input fields
    ei = radius_graph(sample.pos[idx], RADIUS, warn_isolated=False)
    assert torch.equal(batch.edge_index, torch.from_numpy(ei))
    np.testing.assert_allclose(batch.edge_attr.numpy(), brute_edge_attributes(sample.pos[idx], ei, RADIUS, a),
                               rtol=1e-12, atol=1e-15)
    assert torch.equal(batch.edge_attr[:, 3:], torch.cat([batch.x[ei[1], -2:], batch.x[ei[0], -2:]], 1))
    plain = make_batch([(sample, idx)], FeatureMap(data.manifest, use_pos), RADIUS, None, torch.float64)
    assert FeatureMap(data.manifest).edge_dim == 3 and torch.equal(plain.edge_attr, batch.edge_attr[:, :3])


@pytest.mark.parametrize("kind", ["mpnn", "gcn"])
def test_models_of_both_kinds_run_on_input_edge_features(cloud, kind):
    """The MPNN's edge kernels take d + 1 + 2F inputs; the GCN ignores edge attributes and runs alike."""
    data, sample = cloud
    cfg = load_config(None, [f"model.kind={kind}", "model.hidden=8", "model.layers=2", "model.kernel_hidden=[8]",
                             "graph.edge_features=inputs"])
    fmap = FeatureMap.from_config(data.manifest, cfg)
    torch.manual_seed(0)
    model = build_model(cfg.model, fmap).double()
    if kind == "mpnn":
        assert model.convs[0].kernel_hidden[0].weight.shape == (8, fmap.edge_dim)
    batch = make_batch([(sample, None), (sample, np.arange(0, 150, 2))], fmap, RADIUS, None, torch.float64)
    out = model(batch.x, batch.edge_index, batch.edge_attr)  # [150 + 75, 1]
    torch.nn.functional.mse_loss(out, batch.y).backward()
    assert out.shape == (225, 1) and torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
