import numpy as np
import pytest

from dsmpnn.errors import GraphError
from dsmpnn.graph import covering_samples, sample_nodes


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
