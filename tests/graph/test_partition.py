import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsmpnn.errors import GraphError
from dsmpnn.graph import PARTITION_METHODS, check_owner, partition, partition_report, radius_graph
from tests.helpers.oracles import brute_radius_graph

METIS_SLACK = 3  # METIS may exceed its 1 % tolerance by a few nodes on graphs of a few dozen nodes


def grid(nx, ny):
    return np.stack(np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij"), -1).reshape(-1, 2).astype(float)


def test_slab_cuts_the_longest_axis_into_contiguous_balanced_slabs():
    rng = np.random.default_rng(0)
    pos = np.column_stack([rng.random(100) * 10, rng.random(100)])  # long in x
    owner = partition(pos, 3, "slab")
    assert np.bincount(owner).tolist() == [34, 33, 33]
    order = np.argsort(pos[:, 0])
    assert np.all(np.diff(owner[order]) >= 0)  # owner grows with x: slabs, not stripes


def test_rcb_splits_any_number_of_parts_proportionally():
    pos = grid(6, 6)
    assert np.bincount(partition(pos, 3, "rcb")).tolist() == [12, 12, 12]
    owner = partition(grid(7, 5) + 0.01 * np.random.default_rng(0).random((35, 2)), 5, "rcb")
    assert np.bincount(owner).tolist() == [7] * 5
    # the first cut of P=3 separates 1/3 from 2/3 along the longest axis (x: 12 wide, 3 high)
    owner = partition(grid(12, 3), 3, "rcb")
    xs = grid(12, 3)[:, 0]
    assert set(owner[xs < 4]) == {0} and set(owner[xs >= 4]) == {1, 2}


def test_metis_finds_the_two_cliques():
    a = np.array([(i, j) for i in range(6) for j in range(6) if i != j])
    ei = np.concatenate([a, a + 6, [[5, 6], [6, 5]]]).T  # two 6-cliques joined by one edge
    owner = partition(np.zeros((12, 2)), 2, "metis", ei)
    assert len(set(owner[:6])) == 1 and len(set(owner[6:])) == 1 and owner[0] != owner[6]
    assert partition_report(owner, ei).edge_cut == 2


@pytest.mark.parametrize("method", PARTITION_METHODS)
def test_domain_with_a_hole_and_disconnected_pieces(method):
    rng = np.random.default_rng(1)
    pos = rng.random((600, 2)) * 2 - 1
    pos = pos[np.linalg.norm(pos, axis=1) > 0.6]  # square with a hole
    pos = np.concatenate([pos, rng.random((40, 2)) * 0.2 + 3])  # plus a far island
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a few isolated nodes
        ei = radius_graph(pos, 0.15)
    owner = partition(pos, 5, method, ei)
    counts = np.bincount(owner, minlength=5)
    assert counts.min() > 0 and counts.max() <= np.ceil(1.01 * len(pos) / 5) + METIS_SLACK
    report = partition_report(owner, ei, method=method)
    assert report.owned.sum() == len(pos)


@pytest.mark.parametrize("method", PARTITION_METHODS)
def test_bad_number_of_parts_is_refused(method):
    pos = np.random.default_rng(0).random((5, 2))
    ei = brute_radius_graph(pos, 0.8)
    with pytest.raises(GraphError, match="at least|>= 1"):
        partition(pos, 0, method, ei)
    with pytest.raises(GraphError, match="cannot split 5 nodes into 6 subdomains"):
        partition(pos, 6, method, ei)
    assert np.all(partition(pos, 1, method, ei) == 0)


def test_other_bad_input_is_refused():
    pos = np.random.default_rng(0).random((10, 2))
    with pytest.raises(GraphError, match="unknown partition method"):
        partition(pos, 2, "spectral")
    with pytest.raises(GraphError, match="pass edge_index"):
        partition(pos, 2, "metis")
    with pytest.raises(GraphError, match=r"2 of 4 subdomains are empty \(ranks \[1, 3\]\)"):
        check_owner(np.array([0, 0, 2, 2]), 4)
    with pytest.raises(GraphError, match="must lie in"):
        check_owner(np.array([0, 1, 5]), 2)


def test_report_counts_match_brute_force():
    rng = np.random.default_rng(2)
    pos = rng.random((80, 2))
    ei = brute_radius_graph(pos, 0.2)
    owner = partition(pos, 3, "rcb")
    rep = partition_report(owner, ei, method="rcb")
    src, dst = ei
    for p in range(3):
        into = (owner[dst] == p) & (owner[src] != p)
        assert rep.cut_edges[p] == into.sum()
        assert rep.halo[p] == len(np.unique(src[into]))
        assert rep.owned[p] == (owner == p).sum()
        assert rep.local_edges[p] == (owner[dst] == p).sum()
    assert rep.send_rows.sum() == rep.halo.sum()
    assert rep.imbalance == pytest.approx(rep.owned.max() / rep.owned.mean())
    assert len(rep.format().splitlines()) == 3 + 2
    assert rep.as_dict()["edge_cut"] == rep.edge_cut


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 90), d=st.sampled_from([2, 3]), nparts=st.integers(1, 7),
       method=st.sampled_from(PARTITION_METHODS), seed=st.integers(0, 2**16), radius=st.floats(0.1, 0.6))
def test_partition_covers_every_node_and_balances(n, d, nparts, method, seed, radius):
    pos = np.random.default_rng(seed).random((n, d))
    ei = brute_radius_graph(pos, radius)
    if nparts > n:
        with pytest.raises(GraphError):
            partition(pos, nparts, method, ei)
        return
    if method == "metis" and n < 4 * nparts:
        try:  # METIS may leave parts empty when P is close to N: that is refused, never returned
            owner = partition(pos, nparts, method, ei)
        except GraphError as err:
            assert "empty" in str(err)
            return
    else:
        owner = partition(pos, nparts, method, ei)
    counts = np.bincount(owner, minlength=nparts)
    assert owner.shape == (n,) and owner.dtype == np.int64 and len(counts) == nparts
    assert counts.min() >= 1
    if method == "metis":
        assert counts.max() <= np.ceil(1.01 * n / nparts) + METIS_SLACK
    else:
        assert counts.max() - counts.min() <= 1
    np.testing.assert_array_equal(owner, partition(pos, nparts, method, ei))  # deterministic
