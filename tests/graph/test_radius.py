import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dsmpnn.errors import GraphError
from dsmpnn.graph import build_graph, edge_attributes, node_pair_fields, radius_graph
from dsmpnn.graph.radius import available_memory, graph_bytes, index_dtype
from tests.helpers.oracles import brute_edge_attributes, brute_radius_graph


def test_golden_tiny_case():
    pos = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.5], [3.0, 3.0]])
    with pytest.warns(UserWarning, match="1 of 4 nodes have no neighbour"):
        ei = radius_graph(pos, 1.5)
    # node 3 is isolated; 0-1 (d=1), 0-2 (d=1.5, on the radius); 1-2 (d=1.80) is out
    assert ei.tolist() == [[1, 2, 0, 0], [0, 0, 1, 2]]
    attr = edge_attributes(pos, ei, 1.5)
    np.testing.assert_allclose(attr[0].numpy(), [1 / 1.5, 0.0, 1 / 1.5])
    np.testing.assert_allclose(attr[1].numpy(), [0.0, 1.0, 1.0])


@settings(max_examples=40, deadline=None)
@given(pts=arrays(np.float64, st.tuples(st.integers(2, 60), st.sampled_from([2, 3])),
                  elements=st.floats(0, 1, allow_nan=False)),
       r=st.floats(0.05, 0.6), chunk=st.integers(1, 70))
def test_matches_brute_force(pts, r, chunk):
    pts = np.unique(pts, axis=0)
    ei = radius_graph(pts, r, chunk=chunk, warn_isolated=False)
    np.testing.assert_array_equal(ei, brute_radius_graph(pts, r))


def test_max_neighbors_keeps_nearest():
    rng = np.random.default_rng(0)
    pos = rng.random((300, 2))
    full = radius_graph(pos, 0.2)
    capped = radius_graph(pos, 0.2, max_neighbors=5)
    deg = np.bincount(capped[1], minlength=300)
    assert deg.max() == 5
    assert set(map(tuple, capped.T)) <= set(map(tuple, full.T))
    d_capped = np.linalg.norm(pos[capped[0]] - pos[capped[1]], axis=1)
    for i in range(0, 300, 37):  # the kept sources are the nearest ones
        dall = np.sort(np.linalg.norm(pos[full[0][full[1] == i]] - pos[i], axis=1))
        np.testing.assert_allclose(np.sort(d_capped[capped[1] == i]), dall[:5])


def test_refuses_too_many_edges_with_estimate():
    pos = np.random.default_rng(0).random((5000, 2))
    with pytest.raises(GraphError, match=r"about [\d,]+ edges .* over the limit of 100,000"):
        radius_graph(pos, 0.1, max_edges=100_000)


def test_bad_radius():
    with pytest.raises(GraphError, match="positive"):
        radius_graph(np.zeros((3, 2)), 0.0)


def test_build_graph_dtype_and_sizes():
    pos = np.random.default_rng(1).random((200, 3))
    g = build_graph(pos, 0.3, dtype=torch.float32)
    assert g.edge_attr.dtype == torch.float32 and g.edge_attr.shape == (g.num_edges, 4)
    assert g.num_nodes == 200 and g.edge_index.dtype == torch.int32  # node ids below 2^31: int32
    assert index_dtype(2**31 - 1) is np.int32 and index_dtype(2**31) is np.int64
    assert torch.all(g.edge_attr[:, 3] <= 1.0 + 1e-6)


def test_memory_guard_refuses_with_the_estimate():
    pos = np.random.default_rng(0).random((5000, 2))
    with pytest.raises(GraphError, match=r"graph.radius 0.1 on 5,000 nodes gives about [\d,]+ edges .* estimated to "
                                         r"need [\d.]+ GiB .* over the memory limit of 0.00 GiB"):
        radius_graph(pos, 0.1, max_bytes=1_000_000)
    ei = radius_graph(pos, 0.01, max_bytes=1_000_000, warn_isolated=False)  # about 7 edges per node: fits
    np.testing.assert_array_equal(ei, radius_graph(pos, 0.01, warn_isolated=False))
    assert graph_bytes(1000, 2) == 1000 * (8 + 12 + 40)  # int32 edge_index, float32 attributes, working memory
    assert graph_bytes(1000, 2, num_nodes=2**31) == 1000 * (16 + 12 + 40) + 2**31 * 48
    mem = available_memory()
    assert mem is None or mem > 0


def test_edge_attributes_in_chunks_equal_one_pass():
    pos = np.random.default_rng(2).random((300, 3))
    ei = radius_graph(pos, 0.3)
    whole = edge_attributes(pos, ei, 0.3)
    chunked = edge_attributes(pos, ei, 0.3, dtype=torch.float32, chunk=7)
    assert whole.dtype == torch.float64 and chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, whole.float())
    rel = (pos[ei[0]] - pos[ei[1]]) / 0.3
    np.testing.assert_allclose(whole.numpy(), np.column_stack([rel, np.linalg.norm(rel, axis=1)]), rtol=1e-12)


def test_golden_tiny_case_with_node_fields():
    """GKN edge features [p_j - p_i, |p_j - p_i|, a_i, a_j] / r (positions only) on the tiny case above."""
    pos = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.5], [3.0, 3.0]])
    ei = np.array([[1, 2, 0, 0], [0, 0, 1, 2]])
    a = torch.tensor([[10.0, -1.0], [20.0, -2.0], [30.0, -3.0], [40.0, -4.0]], dtype=torch.float64)
    attr = edge_attributes(pos, ei, 1.5, fields=a)
    assert attr.shape == (4, 3 + 4)
    np.testing.assert_allclose(attr[0].numpy(), [1 / 1.5, 0.0, 1 / 1.5, 10, -1, 20, -2])  # edge 1 -> 0
    np.testing.assert_allclose(attr[3].numpy(), [0.0, -1.0, 1.0, 30, -3, 10, -1])  # edge 0 -> 2
    assert node_pair_fields(a, ei).tolist() == attr[:, 3:].tolist()


@pytest.mark.parametrize("dim,chunk", [(2, 1 << 20), (3, 7)])
def test_edge_attributes_with_node_fields_equal_the_reference(dim, chunk):
    rng = np.random.default_rng(dim)
    pos, fields = rng.random((120, dim)), rng.standard_normal((120, 3))
    ei = radius_graph(pos, 0.3, warn_isolated=False)
    ref = brute_edge_attributes(pos, ei, 0.3, fields)  # [E, d + 1 + 6]
    attr = edge_attributes(pos, ei, 0.3, chunk=chunk, fields=torch.from_numpy(fields))
    assert attr.dtype == torch.float64 and attr.shape == (ei.shape[1], dim + 1 + 6)
    np.testing.assert_allclose(attr.numpy(), ref, rtol=1e-12, atol=1e-15)
    # float32: the geometry rounded once from float64, the field columns exact copies of the float32 fields
    f32 = torch.from_numpy(fields).float()
    g = build_graph(pos, 0.3, dtype=torch.float32, fields=f32, warn_isolated=False)
    torch.testing.assert_close(g.edge_attr[:, :dim + 1], attr[:, :dim + 1].float(), rtol=0, atol=0)
    assert torch.equal(g.edge_attr[:, dim + 1:], torch.cat([f32[ei[1]], f32[ei[0]]], 1))


def test_edge_attributes_refuse_fields_of_another_graph():
    pos = np.random.default_rng(0).random((10, 2))
    ei = radius_graph(pos, 0.5, warn_isolated=False)
    with pytest.raises(GraphError, match=r"node fields have shape \(9, 1\), expected \[10, F\]"):
        edge_attributes(pos, ei, 0.5, fields=torch.zeros(9, 1))
