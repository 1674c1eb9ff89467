"""The MPNN with an overlapped exchange (interior edges before the wait, boundary edges after) equals the MPNN with
the blocking exchange: outputs and every gradient, to round-off. The exchange here is a stand-in without a process
group that overwrites the halo rows with a differentiable function of the owned rows, as the real one does across
ranks (tests/distributed run the real one)."""

import pytest
import torch
from torch import nn

from dsmpnn.nn import MPNN, ECConv, EdgeSplit, OverlappedExchange, cached_edge_split

N, FIRST_HALO, E = 40, 31, 240


class Refresh:
    """Rows FIRST_HALO.. take 0.5 x owned rows ``owners`` before layers 0, every, 2 every, ...: blocking
    (``__call__``) or in two halves (``start``/``finish``), logging the calls."""

    def __init__(self, every: int = 1, overlapped: bool = True) -> None:
        self.first_halo_row, self.every = FIRST_HALO, every
        self.rows, self.owners = torch.arange(FIRST_HALO, N), torch.arange(3, 3 + N - FIRST_HALO)
        self.log = []
        if not overlapped:  # the plain callable of MPNN.forward: no start/finish
            self.start = self.finish = None

    def __call__(self, h, layer):
        return h.index_copy(0, self.rows, 0.5 * h[self.owners]) if layer % self.every == 0 else h

    def start(self, h, layer):
        if layer % self.every:
            return None
        self.log.append(("start", layer))
        return {"recv": 0.5 * h[self.owners], "layer": layer}

    def finish(self, h, handle):
        self.log.append(("finish", handle["layer"]))
        return h.index_copy(0, self.rows, handle["recv"])


def graph(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, N, (2, E), generator=gen)
    ea = torch.randn(E, 3, dtype=torch.float64, generator=gen)
    x = torch.randn(N, 5, dtype=torch.float64, generator=gen)
    return ei, ea, x


def run(model, exchange, ei, ea, x):
    x, ea = x.clone().requires_grad_(), ea.clone().requires_grad_()
    out = model(x, ei, ea, exchange=exchange)
    (out.sin() * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return [out.detach(), x.grad, ea.grad] + [p.grad.clone() for p in model.parameters()]


def make_model(aggr: str, ckpt: bool) -> MPNN:
    torch.manual_seed(1)
    return MPNN(5, 2, 3, hidden=8, layers=4, kernel_hidden=(6,), aggr=aggr, layer_norm=True,
                checkpoint_layers=ckpt).double()


def test_stand_in_is_an_overlapped_exchange():
    assert isinstance(Refresh(), OverlappedExchange) and not isinstance(Refresh(overlapped=False), OverlappedExchange)


@pytest.mark.parametrize("aggr", ["mean", "sum"])
@pytest.mark.parametrize("every", [1, 2])
@pytest.mark.parametrize("ckpt", [False, True], ids=["stored", "checkpointed"])
def test_overlapped_layers_equal_blocking_exchange(aggr, every, ckpt):
    ei, ea, x = graph()
    ref = run(make_model(aggr, False), Refresh(every, overlapped=False), ei, ea, x)
    ex = Refresh(every)
    got = run(make_model(aggr, ckpt), ex, ei, ea, x)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
    exchanged = [layer for layer in range(4) if layer % every == 0]
    starts = [layer for what, layer in ex.log if what == "start"]
    finishes = [layer for what, layer in ex.log if what == "finish"]
    assert starts == exchanged  # started once per exchange, never in a recomputation
    assert finishes == exchanged + (exchanged[::-1] if ckpt else [])  # recomputed in backward: finished again


@pytest.mark.parametrize("aggr", ["mean", "sum"])
def test_interior_sum_reads_no_halo_row(aggr, device):
    """Halo rows hold NaN until ``refresh`` replaces them: no NaN reaches the output, which equals ``forward`` on the
    refreshed rows, and the stale rows get no gradient."""
    ei, ea, x = (t.to(device) for t in graph(3))
    torch.manual_seed(2)
    conv = ECConv(5, 4, 3, kernel_hidden=(6,), aggr=aggr).double().to(device)
    split = EdgeSplit.build(ei, N, FIRST_HALO)
    stale = x.index_fill(0, torch.arange(FIRST_HALO, N, device=device), float("nan")).requires_grad_()
    fresh = x[FIRST_HALO:]
    out, refreshed = conv.forward_overlapped(stale, split, split.split_attr(ea),
                                             lambda: torch.cat([stale[:FIRST_HALO], fresh]))
    torch.testing.assert_close(refreshed, x)
    torch.testing.assert_close(out, conv(x, ei, ea), rtol=1e-12, atol=1e-13)
    out.sum().backward()
    assert torch.all(stale.grad[FIRST_HALO:] == 0) and stale.grad[:FIRST_HALO].abs().sum() > 0


def test_split_of_a_kernel_that_is_not_rowwise():
    """A kernel MLP the chunked path cannot take (here with a LayerNorm) is evaluated per part by autograd."""
    ei, ea, x = graph(4)
    torch.manual_seed(3)
    conv = ECConv(5, 4, 3, kernel_hidden=(6,)).double()
    conv.kernel_hidden = nn.Sequential(nn.Linear(3, 6), nn.LayerNorm(6), nn.Tanh()).double()
    split = EdgeSplit.build(ei, N, FIRST_HALO)
    out, _ = conv.forward_overlapped(x, split, split.split_attr(ea))
    torch.testing.assert_close(out, conv(x, ei, ea), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("first", [0, FIRST_HALO, N], ids=["all-boundary", "both", "all-interior"])
def test_edge_split_invariants(first):
    ei, ea, _ = graph(5)
    split = EdgeSplit.build(ei, N, first)
    ids = torch.cat([split.interior_ids, split.boundary_ids])
    assert torch.equal(torch.sort(ids).values, torch.arange(E))
    assert torch.all(ei[0, split.interior_ids] < first) and torch.all(ei[0, split.boundary_ids] >= first)
    assert torch.equal(split.interior_index, ei[:, split.interior_ids])
    assert torch.equal(split.boundary_index, ei[:, split.boundary_ids])
    assert torch.equal(split.in_degree, torch.bincount(ei[1], minlength=N))
    attr_i, attr_b = split.split_attr(ea)
    assert torch.equal(attr_i, ea[split.interior_ids]) and torch.equal(attr_b, ea[split.boundary_ids])


def test_split_cache_and_refusals():
    ei = graph(6)[0]
    s = cached_edge_split(ei, N, FIRST_HALO)
    assert cached_edge_split(ei, N, FIRST_HALO) is s and cached_edge_split(ei, N, FIRST_HALO - 1) is not s
    with pytest.raises(ValueError, match="first_halo_row 41 must lie in"):
        EdgeSplit.build(ei, N, N + 1)
    with pytest.raises(ValueError, match="expected targets < 10"):
        EdgeSplit.build(ei, 10, 5)
