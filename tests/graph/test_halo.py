import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsmpnn.errors import GraphError
from dsmpnn.graph import (HaloPlan, build_graph, build_halo_plan, build_halo_plans, build_overlap_plans,
                          build_sampled_plans, check_plans, partition, sample_nodes)
from tests.helpers.oracles import brute_radius_graph


def slow_rings(owner, edge_index, rank, hops):
    """Halo rings by breadth-first search over Python sets: ring h = new sources of edges into ring h-1."""
    src, dst = edge_index
    seen = {int(v) for v in np.flatnonzero(owner == rank)}
    frontier, rings = set(seen), []
    for _ in range(hops):
        new = {int(j) for j, i in zip(src, dst) if i in frontier and j not in seen}
        rings.append(new)
        seen |= new
        frontier = new
    return rings


def simulate(plans, edge_index, weights, h0, layers, every):
    """Message passing h <- tanh(h + sum_j w_e h_j) on every rank's local graph, with the halo exchange done by
    copying rows between the ranks' arrays before layers 0, every, 2 every, ... Returns the global [N] result."""
    hs = [h0[p.local_nodes].copy() for p in plans]
    for layer in range(layers):
        if layer % every == 0:
            for p in plans:
                for q in p.peers:
                    hs[q][plans[q].recv_idx(p.rank)] = hs[p.rank][p.send_idx(q)]
        for p, h in zip(plans, hs):
            agg = np.zeros_like(h)
            np.add.at(agg, p.edge_index[1], weights[p.edge_ids] * h[p.edge_index[0]])
            h[:] = np.tanh(h + agg)
    out = np.empty_like(h0)
    for p, h in zip(plans, hs):
        out[p.owned] = h[:p.num_owned]
    return out


def single(edge_index, weights, h0, layers):
    h = h0.copy()
    for _ in range(layers):
        agg = np.zeros_like(h)
        np.add.at(agg, edge_index[1], weights * h[edge_index[0]])
        h = np.tanh(h + agg)
    return h


def path_graph(n):
    a = np.arange(n - 1)
    return np.stack([np.concatenate([a, a + 1]), np.concatenate([a + 1, a])])


def test_golden_path_graph():
    ei = path_graph(6)  # 0 - 1 - 2 | 3 - 4 - 5
    owner = np.array([0, 0, 0, 1, 1, 1])
    p0, p1 = build_halo_plans(owner, ei, halo_hops=1)
    assert p0.owned.tolist() == [0, 1, 2] and p0.halo.tolist() == [3]
    assert sorted(ei[:, p0.edge_ids][1].tolist()) == [0, 1, 1, 2, 2]  # every edge into 0, 1, 2
    assert p0.send_counts.tolist() == [0, 1] and p0.send_idx(1).tolist() == [2]  # node 2 = local row 2
    assert p1.halo.tolist() == [2] and p1.recv_idx(0).tolist() == [3] and p1.send_idx(0).tolist() == [0]
    q0, q1 = build_halo_plans(owner, ei, halo_hops=2)
    assert q0.halo.tolist() == [3, 4] and q0.halo_ring.tolist() == [1, 2]
    assert sorted(ei[:, q0.edge_ids][1].tolist()) == [0, 1, 1, 2, 2, 3, 3]  # also into ring 1 (node 3)
    assert q0.local_nodes[q0.edge_index].tolist() == ei[:, q0.edge_ids].tolist()
    assert q1.send_idx(0).tolist() == [0, 1]  # nodes 3, 4
    assert build_halo_plan(owner, ei, 1, halo_hops=2).halo.tolist() == [1, 2]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(2, 40), nparts=st.integers(1, 5), hops=st.integers(1, 3), density=st.floats(0.0, 4.0),
       seed=st.integers(0, 2**16))
def test_plan_invariants_on_random_graphs(n, nparts, hops, density, seed):
    rng = np.random.default_rng(seed)
    nparts = min(nparts, n)
    owner = np.concatenate([np.arange(nparts), rng.integers(0, nparts, n - nparts)])
    rng.shuffle(owner)
    ei = rng.integers(0, n, (2, int(density * n)))
    ei = ei[:, ei[0] != ei[1]]
    plans = build_halo_plans(owner, ei, halo_hops=hops)
    check_plans(plans)  # sends match receives, owned sets cover every node once
    sent = np.zeros(n * nparts, dtype=int)  # how often node v is sent to rank q (key q * n + v)
    for p in plans:
        rings = slow_rings(owner, ei, p.rank, hops)
        for h, ring in enumerate(rings, start=1):
            assert set(p.halo[p.halo_ring == h].tolist()) == ring
        assert np.all(owner[p.halo] == p.halo_owner) and np.all(owner[p.owned] == p.rank)
        # local edges: exactly the edges into owned nodes and inner rings, with the right endpoints
        inner = set(np.flatnonzero(owner == p.rank).tolist()).union(*rings[:-1])
        expected = [e for e in range(ei.shape[1]) if ei[1, e] in inner]
        assert p.edge_ids.tolist() == expected
        np.testing.assert_array_equal(p.local_nodes[p.edge_index], ei[:, p.edge_ids])
        for q in p.peers:
            np.add.at(sent, q * n + p.owned[p.send_idx(q)], 1)
    for q in plans:  # every halo node is sent exactly once, by its owner; nothing else is sent
        expected = np.zeros(n * nparts, dtype=int)
        expected[q.rank * n + q.halo] = 1
        np.testing.assert_array_equal(sent[q.rank * n:(q.rank + 1) * n], expected[q.rank * n:(q.rank + 1) * n])
    # k layers between exchanges reproduce one process exactly on owned nodes
    w, h0 = rng.standard_normal(ei.shape[1]) * 0.5, rng.standard_normal(n)
    layers = 2 * hops + 1
    np.testing.assert_allclose(simulate(plans, ei, w, h0, layers, hops), single(ei, w, h0, layers), atol=1e-12)


def test_too_few_hops_is_not_exact():
    """The simulation is sensitive: exchanging every 2 layers with a 1-hop halo gives a different result."""
    rng = np.random.default_rng(0)
    pos = rng.random((200, 2))
    ei = brute_radius_graph(pos, 0.15)
    plans = build_halo_plans(partition(pos, 3, "rcb"), ei, halo_hops=1)
    w, h0 = rng.standard_normal(ei.shape[1]) * 0.3, rng.standard_normal(200)
    assert not np.allclose(simulate(plans, ei, w, h0, 4, 2), single(ei, w, h0, 4), atol=1e-6)


def test_geometric_overlap_of_radius_width_is_exact():
    rng = np.random.default_rng(3)
    pos, r = rng.random((300, 3)), 0.2
    ei = brute_radius_graph(pos, r)
    owner = partition(pos, 4, "rcb")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning when exact
        plans = build_overlap_plans(owner, ei, pos, overlap=r, radius=r)
    check_plans(plans)
    hop = build_halo_plans(owner, ei, 1)
    for p, q in zip(plans, hop):
        assert set(q.halo.tolist()) <= set(p.halo.tolist())  # l = r covers every source of an edge into O_p
        d = np.linalg.norm(pos[p.halo][:, None] - pos[p.owned][None], axis=-1).min(1)
        assert np.all(d <= r) and p.overlap == r
    w, h0 = rng.standard_normal(ei.shape[1]) * 0.3, rng.standard_normal(300)
    np.testing.assert_allclose(simulate(plans, ei, w, h0, 3, 1), single(ei, w, h0, 3), atol=1e-12)


def test_narrow_geometric_overlap_warns_that_results_differ():
    rng = np.random.default_rng(4)
    pos, r = rng.random((300, 2)), 0.15
    ei = brute_radius_graph(pos, r)
    owner = partition(pos, 3, "slab")
    with pytest.warns(UserWarning, match="differs from one process"):
        plans = build_overlap_plans(owner, ei, pos, overlap=0.5 * r, radius=r)
    check_plans(plans)
    w, h0 = rng.standard_normal(ei.shape[1]) * 0.3, rng.standard_normal(300)
    assert not np.allclose(simulate(plans, ei, w, h0, 2, 1), single(ei, w, h0, 2), atol=1e-6)


def test_sampled_graph_plans_equal_the_single_process_sampled_graph():
    rng = np.random.default_rng(5)
    pos = rng.random((500, 2))
    owner = partition(pos, 3, "rcb")
    ids = sample_nodes(500, 200, np.random.default_rng(42))  # the one global seed
    dec = build_sampled_plans(pos, ids, owner, radius=0.15, halo_hops=2)
    ref = build_graph(pos[ids], 0.15)
    torch.testing.assert_close(dec.graph.edge_index, ref.edge_index)
    torch.testing.assert_close(dec.graph.edge_attr, ref.edge_attr)
    check_plans(dec.plans)
    assert np.all(dec.owner == owner[ids])
    np.testing.assert_array_equal(dec.local_rows(1)[:dec.plans[1].num_owned], ids[dec.owner == 1])
    # a rank whose region holds no sampled node gets an empty plan instead of an error
    few = np.flatnonzero(owner != 2)[:30]
    dec = build_sampled_plans(pos, few, owner, radius=0.3, nparts=3)
    assert dec.plans[2].num_owned == 0 and dec.plans[2].num_local == 0
    check_plans(dec.plans)


def test_bad_plans_are_refused():
    ei = path_graph(6)
    with pytest.raises(GraphError, match="subdomains are empty"):
        build_halo_plans(np.array([0, 0, 0, 2, 2, 2]), ei)
    with pytest.raises(GraphError, match="halo_hops"):
        build_halo_plans(np.array([0, 0, 0, 1, 1, 1]), ei, halo_hops=0)
    with pytest.raises(GraphError, match="outside"):
        build_halo_plans(np.array([0, 0, 0, 1, 1, 1]), ei + 1)
    plan = build_halo_plans(np.array([0, 0, 0, 1, 1, 1]), ei)[0]
    with pytest.raises(ValueError, match="read-only"):
        plan.owned[0] = 5
    fields = {f: getattr(plan, f) for f in plan.__dataclass_fields__}
    with pytest.raises(GraphError, match="send_rows must be owned rows"):
        HaloPlan(**{**fields, "send_rows": np.array([4])})
    with pytest.raises(GraphError, match="both owned and halo"):
        HaloPlan(**{**fields, "halo": np.array([2])})
    with pytest.raises(GraphError, match="local edges must index"):
        HaloPlan(**{**fields, "edge_index": plan.edge_index + 10})


def test_sampled_plans_with_geometric_overlap():
    """``overlap`` >= radius keeps every edge into owned nodes (as the graph halo does); < radius drops some."""
    from dsmpnn.graph import build_sampled_plans as bsp

    rng = np.random.default_rng(0)
    pos = rng.random((300, 2))
    owner = (pos[:, 0] > 0.5).astype(np.int64)
    ids = np.sort(rng.choice(300, 200, replace=False))
    ref = bsp(pos, ids, owner, 0.12, nparts=2, warn_isolated=False)
    for l in (0.12, 0.24):
        dec = bsp(pos, ids, owner, 0.12, nparts=2, warn_isolated=False, overlap=l)
        for p in range(2):
            np.testing.assert_array_equal(dec.plans[p].edge_ids, ref.plans[p].edge_ids)
            assert set(ref.plans[p].halo) <= set(dec.plans[p].halo)
    small = bsp(pos, ids, owner, 0.12, nparts=2, warn_isolated=False, overlap=0.05)
    assert sum(p.num_edges for p in small.plans) < sum(p.num_edges for p in ref.plans)



@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), dim=st.sampled_from([2, 3]), nparts=st.integers(2, 4),
       method=st.sampled_from(["slab", "rcb", "metis"]), hops=st.integers(1, 3),
       cap=st.sampled_from([None, 5]), overlap=st.sampled_from([None, 0.6, 1.0, 1.7]))
def test_local_plan_equals_its_part_of_the_whole_sampled_graph(seed, dim, nparts, method, hops, cap, overlap):
    """Each rank's plan built from the sampled nodes near its subdomain only equals its plan on the whole sampled
    graph (nodes, rings, local edges in the same order, send lists) and its edge attributes the whole graph's;
    the isolated owned nodes of all ranks add up to the whole graph's. Any partition, 1-3 hops, with and without
    a neighbour cap, graph halo or geometric overlap (given as a multiple of the radius)."""
    from dsmpnn.graph import build_local_plan, radius_graph

    rng = np.random.default_rng(seed)
    n = int(rng.integers(60, 400))
    pos = rng.random((n, dim))
    radius = float(rng.uniform(0.08, 0.3))
    ei = radius_graph(pos, radius, warn_isolated=False) if method == "metis" else None
    owner = partition(pos, nparts, method, ei, 0)
    ids = np.sort(rng.choice(n, int(rng.integers(nparts, n + 1)), replace=False))
    ov = overlap * radius if overlap is not None else None
    whole = build_sampled_plans(pos, ids, owner, radius, hops, nparts, cap, torch.float64, warn_isolated=False,
                                overlap=ov)
    isolated = 0
    for p in range(nparts):
        local = build_local_plan(pos, ids, owner, p, radius, hops, nparts, cap, torch.float64, overlap=ov)
        ref = whole.plans[p]
        for name in ("owned", "halo", "halo_owner", "halo_ring", "edge_index", "send_counts", "send_rows"):
            np.testing.assert_array_equal(getattr(local.plan, name), getattr(ref, name), err_msg=name)
        ref_graph = ref.local_graph(whole.graph)
        assert torch.equal(local.graph.edge_index, ref_graph.edge_index)
        assert torch.equal(local.graph.edge_attr, ref_graph.edge_attr)
        np.testing.assert_array_equal(local.local_rows(), whole.local_rows(p))
        isolated += local.isolated
    hit = np.zeros(len(ids), dtype=bool)
    hit[whole.graph.edge_index[1].numpy()] = True
    assert isolated == int((~hit).sum())


def test_local_plan_keeps_the_int32_edge_index_once():
    """A rank's local edge_index is int32 (index_dtype) and one array: the graph's tensor and the plan's read-only
    view share memory (an int64 copy would be 8 more bytes per edge)."""
    from dsmpnn.graph import build_local_plan

    pos = np.random.default_rng(6).random((400, 2))
    owner = partition(pos, 2, "rcb")
    local = build_local_plan(pos, np.arange(400), owner, 1, 0.12, nparts=2)
    assert local.graph.edge_index.dtype == torch.int32 and local.plan.edge_index.dtype == np.int32
    assert np.shares_memory(local.graph.edge_index.numpy(), local.plan.edge_index)
    assert not local.plan.edge_index.flags.writeable


def test_local_plan_of_a_rank_without_sampled_nodes_is_empty():
    from dsmpnn.graph import build_local_plan

    rng = np.random.default_rng(5)
    pos = rng.random((200, 2))
    owner = partition(pos, 3, "rcb")
    few = np.flatnonzero(owner != 2)[:30]
    local = build_local_plan(pos, few, owner, 2, 0.3, nparts=3)
    assert local.plan.num_owned == 0 and local.plan.num_local == 0 and local.graph.edge_index.shape == (2, 0)
    assert local.plan.send_counts.tolist() == [0, 0, 0] and local.isolated == 0


@pytest.mark.parametrize("cap", [None, 8])
def test_local_plan_on_a_regular_grid(cap):
    """A grid has many equidistant neighbours: under a neighbour cap which ones a k-d tree keeps depends on the
    tree, so with a cap the whole graph is built; either way every rank's plan equals its part of the whole graph
    and the ranks' send and receive lists match (the case that once failed in a 2-rank run)."""
    from dsmpnn.graph import build_local_plan

    s = np.linspace(0, 1, 32)
    pos = np.stack(np.meshgrid(s, s, indexing="ij"), -1).reshape(-1, 2)
    owner = partition(pos, 2, "metis", build_graph(pos, 0.15, warn_isolated=False).edge_index.numpy(), 0)
    ids = np.sort(np.random.default_rng(3).choice(len(pos), 200, replace=False))
    whole = build_sampled_plans(pos, ids, owner, 0.15, 2, 2, cap, torch.float64, warn_isolated=False)
    plans = [build_local_plan(pos, ids, owner, p, 0.15, 2, 2, cap, torch.float64).plan for p in range(2)]
    check_plans(plans)
    for p in range(2):
        np.testing.assert_array_equal(plans[p].send_rows, whole.plans[p].send_rows)
        np.testing.assert_array_equal(plans[p].edge_index, whole.plans[p].edge_index)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), nparts=st.integers(2, 4), hops=st.integers(1, 2),
       graphs=st.integers(2, 4), method=st.sampled_from(["slab", "rcb", "metis"]))
def test_batched_plans_are_the_plans_of_the_disjoint_union(seed, nparts, hops, graphs, method):
    """A rank's plans of several sampled graphs, batched, equal its plan of their disjoint union built as one graph
    (node ids offset graph after graph): owned rows, halo in (owner, id) order, rings, local edges, send lists;
    the batched plans of all ranks agree with each other (check_plans); each graph's rows land where the map says."""
    from dsmpnn.graph import batch_plans, radius_graph

    rng = np.random.default_rng(seed)
    n = int(rng.integers(80, 300))
    pos = rng.random((n, 2))
    radius = float(rng.uniform(0.1, 0.25))
    ei = radius_graph(pos, radius, warn_isolated=False) if method == "metis" else None
    owner = partition(pos, nparts, method, ei, 0)
    parts = [build_sampled_plans(pos, np.sort(rng.choice(n, int(rng.integers(nparts, n)), replace=False)), owner,
                                 radius, hops, nparts, warn_isolated=False) for _ in range(graphs)]
    offsets = np.cumsum([0] + [len(d.sample_ids) for d in parts])
    union_owner = np.concatenate([d.owner for d in parts])
    union_ei = np.concatenate([d.graph.edge_index.numpy() + o for d, o in zip(parts, offsets)], axis=1)
    union = build_halo_plans(union_owner, union_ei, hops, nparts, allow_empty=True)
    batched = []
    for p in range(nparts):
        plan, rows = batch_plans([d.plans[p] for d in parts])
        batched.append(plan)
        for name in ("owned", "halo", "halo_owner", "halo_ring", "edge_index", "send_counts", "send_rows"):
            np.testing.assert_array_equal(getattr(plan, name), getattr(union[p], name), err_msg=name)
        for d, r, o in zip(parts, rows, offsets):
            np.testing.assert_array_equal(plan.local_nodes[r], d.plans[p].local_nodes + o)
    check_plans(batched)
