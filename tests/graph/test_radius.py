import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dsmpnn.errors import GraphError
from dsmpnn.graph import build_graph, edge_attributes, radius_graph
from dsmpnn.graph.radius import available_memory, graph_bytes
from tests.helpers.oracles import brute_radius_graph


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
    assert g.num_nodes == 200 and g.edge_index.dtype == torch.int64
    assert torch.all(g.edge_attr[:, 3] <= 1.0 + 1e-6)


def test_memory_guard_refuses_with_the_estimate():
    pos = np.random.default_rng(0).random((5000, 2))
    with pytest.raises(GraphError, match=r"graph.radius 0.1 on 5,000 nodes gives about [\d,]+ edges .* estimated to "
                                         r"need [\d.]+ GiB .* over the memory limit of 0.00 GiB"):
        radius_graph(pos, 0.1, max_bytes=1_000_000)
    ei = radius_graph(pos, 0.01, max_bytes=1_000_000, warn_isolated=False)  # about 7 edges per node: fits
    np.testing.assert_array_equal(ei, radius_graph(pos, 0.01, warn_isolated=False))
    assert graph_bytes(1000, 2) == 1000 * (16 + 12 + 40)
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
