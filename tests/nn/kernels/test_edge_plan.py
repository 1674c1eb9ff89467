"""The source-grouped edge layout: invariants of the sort and of the chunks, and the plan cache."""

import pytest
import torch

from dsmpnn.nn.kernels.edge_plan import ORDERS, EdgePlan, cached_edge_plan


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("chunk", [1, 5, 16, 1000])
def test_plan_invariants(chunk, order):
    gen = torch.Generator().manual_seed(0)
    n, e = 30, 150
    ei = torch.randint(0, n, (2, e), generator=gen)
    ei[0, :12] = 3  # one source of high out-degree
    plan = EdgePlan.build(ei, n, chunk=chunk, order=order)
    assert plan.order == order
    src, dst = ei
    assert torch.equal(torch.sort(plan.perm).values, torch.arange(e))  # a permutation
    assert torch.equal(plan.dst_sorted, dst[plan.perm])
    assert torch.equal(plan.in_degree, torch.bincount(dst, minlength=n))
    out_deg = torch.bincount(src, minlength=n)
    assert torch.equal(torch.sort(plan.sources).values, torch.nonzero(out_deg).flatten())
    assert [c.n0 for c in plan.chunks[1:]] == [c.n1 for c in plan.chunks[:-1]]
    assert [c.e0 for c in plan.chunks[1:]] == [c.e1 for c in plan.chunks[:-1]]
    assert plan.chunks[0].n0 == 0 and plan.chunks[-1].e1 == e and plan.chunks[-1].n1 == len(plan.sources)
    for c in plan.chunks:
        assert c.e1 - c.e0 <= chunk or c.n1 - c.n0 == 1  # only a lone source may exceed the chunk
        assert c.n1 - c.n0 <= max(1, chunk // 8) or c.n1 - c.n0 == 1
        groups = plan.groups(c)
        assert groups[0].a == 0 and groups[0].s == 0
        assert groups[-1].b == c.n1 - c.n0 and groups[-1].t == c.e1 - c.e0
        for g in groups:
            assert g.t - g.s == (g.b - g.a) * g.d
            for k in range(g.b - g.a):  # node a + k owns edges s + k d ... s + (k + 1) d - 1, in input order
                node = plan.sources[c.n0 + g.a + k]
                rows = plan.perm[c.e0 + g.s + k * g.d:c.e0 + g.s + (k + 1) * g.d]
                assert torch.all(src[rows] == node) and out_deg[node] == g.d
                assert torch.all(rows[1:] > rows[:-1])


@pytest.mark.parametrize("order", ORDERS)
def test_per_edge_arrays_are_int32_and_chunks_read_as_int64(order):
    """The two arrays per edge are int32 (half the memory of int64; ids fit); a chunk's rows and targets come out
    as int64 for the kernels, equal to the int32 values."""
    ei = torch.randint(0, 50, (2, 400), generator=torch.Generator().manual_seed(3))
    plan = EdgePlan.build(ei, 50, chunk=64, order=order)
    assert plan.perm.dtype == plan.dst_sorted.dtype == torch.int32
    assert plan.sources.dtype == plan.in_degree.dtype == torch.int64
    for c in plan.chunks:
        rows, targets = plan.rows(c), plan.targets(c)
        assert rows.dtype == targets.dtype == torch.int64
        assert torch.equal(rows, plan.perm[c.e0:c.e1].long()) and torch.equal(targets, ei[1, rows])


@pytest.mark.parametrize("order", ORDERS)
def test_plan_of_an_int32_graph_equals_the_int64_one(order):
    """A radius graph's int32 edge_index (graph.index_dtype) gives the very plan of its int64 copy."""
    ei = torch.randint(0, 60, (2, 500), generator=torch.Generator().manual_seed(4))
    a, b = EdgePlan.build(ei, 60, chunk=64, order=order), EdgePlan.build(ei.int(), 60, chunk=64, order=order)
    for name in ("perm", "sources", "source_degree", "dst_sorted", "in_degree"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.chunks == b.chunks


def test_locality_order_keeps_neighbours_close():
    """On a grid graph with shuffled node ids, the locality (RCM) order puts every source within a few rows of
    the grid of its neighbours; the degree order (ids shuffled) does not."""
    side = 30
    ii, jj = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    node = ii * side + jj
    pairs = [(node[:, :-1], node[:, 1:]), (node[:-1, :], node[1:, :])]
    a = torch.cat([p[0].flatten() for p in pairs])
    b = torch.cat([p[1].flatten() for p in pairs])
    shuffle = torch.randperm(side * side, generator=torch.Generator().manual_seed(2))
    ei = shuffle[torch.stack([torch.cat([a, b]), torch.cat([b, a])])]
    spans = {}
    for order in ORDERS:
        plan = EdgePlan.build(ei, side * side, order=order)
        slot = torch.empty(side * side, dtype=torch.long)
        slot[plan.sources] = torch.arange(side * side)
        src = ei[0, plan.perm]
        spans[order] = int((slot[src] - slot[plan.dst_sorted]).abs().max())  # bandwidth of the order
    assert spans["locality"] <= 2 * side < spans["degree"]


def test_plan_rejects_bad_order():
    with pytest.raises(ValueError, match="order must be one of"):
        EdgePlan.build(torch.tensor([[0, 1], [1, 0]]), 2, order="hilbert")


def test_plan_rejects_bad_edges():
    with pytest.raises(ValueError, match="expected sources < 4"):
        EdgePlan.build(torch.tensor([[0, 4], [1, 2]]), 4)
    with pytest.raises(ValueError, match=r"expected \[2, E\]"):
        EdgePlan.build(torch.zeros(3, 2, dtype=torch.long), 4)


def test_plan_cache_is_keyed_on_tensor_identity_and_version():
    ei = torch.randint(0, 10, (2, 40), generator=torch.Generator().manual_seed(1))
    p1 = cached_edge_plan(ei, 10)
    assert cached_edge_plan(ei, 10) is p1
    assert cached_edge_plan(ei.clone(), 10) is not p1  # another tensor with the same values
    assert cached_edge_plan(ei, 10, chunk=7) is not p1
    assert cached_edge_plan(ei, 11) is not p1
    ei[0, 0] = (ei[0, 0] + 1) % 10  # in-place change: version counter moves on
    p2 = cached_edge_plan(ei, 10)
    assert p2 is not p1 and torch.equal(p2.dst_sorted, ei[1, p2.perm])
    with torch.inference_mode():
        ei_inf = torch.randint(0, 10, (2, 40))
    assert cached_edge_plan(ei_inf, 10) is not cached_edge_plan(ei_inf, 10)  # no version counter: never cached


def test_plan_cache_forgets_freed_tensors(monkeypatch):
    import dsmpnn.nn.kernels.chunk_pool as chunk_pool
    import dsmpnn.nn.kernels.edge_plan as plan_module

    monkeypatch.setattr(chunk_pool, "CHUNK_WORKERS", 1)  # build in this thread: no pool thread holds `ei` late
    ei = torch.randint(0, 10, (2, 40), generator=torch.Generator().manual_seed(2))
    cached_edge_plan(ei, 10)
    key = (id(ei), "plan")
    assert key in plan_module._CACHE
    del ei
    other = torch.randint(0, 10, (2, 40))  # kept alive: it may well reuse the freed tensor's id
    cached_edge_plan(other, 10)  # any later call drops the freed entry
    assert all(ref() is not None for ref, _, _ in plan_module._CACHE.values())
