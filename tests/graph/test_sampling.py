import numpy as np
import pytest

from dsmpnn.errors import GraphError
from dsmpnn.graph import covering_samples, radius_graph, sample_nodes, sampled_cap


def test_sample_nodes_distinct_sorted_seeded():
    a = sample_nodes(1000, 100, np.random.default_rng(3))
    b = sample_nodes(1000, 100, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert len(np.unique(a)) == 100 and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, sample_nodes(1000, 100, np.random.default_rng(4)))
    np.testing.assert_array_equal(sample_nodes(10, 50, np.random.default_rng(0)), np.arange(10))


def test_sample_nodes_uniform():
    counts = np.zeros(50)
    rng = np.random.default_rng(0)
    for _ in range(2000):
        counts[sample_nodes(50, 10, rng)] += 1
    # each node is drawn with probability m/N = 0.2: 400 expected, sd ~ 18
    assert np.all(np.abs(counts - 400) < 100)


@pytest.mark.parametrize("n,m,k", [(100, 30, 4), (100, 30, 9), (7, 10, 2), (1000, 1, 3)])
def test_covering_samples_cover_every_node_equally(n, m, k):
    parts = covering_samples(n, m, k, np.random.default_rng(0))
    counts = np.bincount(np.concatenate(parts), minlength=n)
    assert len(parts) >= k and counts.min() == counts.max() >= 1
    assert max(len(p) for p in parts) <= m or m >= n


def test_bad_sample_size():
    with pytest.raises(GraphError):
        sample_nodes(10, 0, np.random.default_rng(0))


def test_sampled_cap_values():
    assert sampled_cap(None, 10, 100) is None
    assert sampled_cap(16, 100, 100) == 16 and sampled_cap(16, 500, 100) == 16  # the whole mesh
    assert sampled_cap(16, 50, 100) == 8 and sampled_cap(16, 1, 100) == 1
    assert sampled_cap(16, 50, 100, "fixed") == 16
    with pytest.raises(GraphError, match="cap mode"):
        sampled_cap(16, 50, 100, "banana")


def test_scaled_cap_keeps_the_reach_of_the_full_mesh_cap():
    """The k-nearest cap on a quarter of the nodes: fixed, it reaches about twice as far (sqrt(4) in 2D) as on the
    full mesh; scaled to k/4 it reaches as far (median over nodes of the farthest kept neighbour, within 15 %)."""
    rng = np.random.default_rng(0)
    pos = rng.random((4000, 2))
    ids = sample_nodes(len(pos), 1000, rng)

    def reach(p: np.ndarray, k: int) -> float:
        ei = radius_graph(p, 0.5, k, warn_isolated=False)
        far = np.zeros(len(p))
        np.maximum.at(far, ei[1], np.linalg.norm(p[ei[0]] - p[ei[1]], axis=1))
        return float(np.median(far))

    full = reach(pos, 16)
    fixed = reach(pos[ids], sampled_cap(16, len(ids), len(pos), "fixed"))
    scaled = reach(pos[ids], sampled_cap(16, len(ids), len(pos), "scaled"))
    assert abs(scaled / full - 1) < 0.15 and 1.7 < fixed / full < 2.3, (full, scaled, fixed)
