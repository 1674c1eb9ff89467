"""ECConv equals PyG NNConv to round-off, and its custom backward equals autograd through NNConv."""

import pytest
import torch
from torch import nn
from torch_geometric.nn import NNConv

from dsmpnn.nn import ECConv, edge_kernel_aggregate
from dsmpnn.nn.aggregate import ecconv_aggregate
from dsmpnn.nn.kernels import backend, chunk_pool, native
from dsmpnn.nn.kernels.edge_plan import EdgePlan
from dsmpnn.nn.kernels.rowwise import RowwiseKernel
from tests.helpers.oracles import dense_nnconv

pytestmark = pytest.mark.numerics


@pytest.fixture(autouse=True, params=["fused", "bmm"])
def cpu_path(request, monkeypatch):
    """Every test runs on both CPU backends: the fused C++ kernels and PyTorch's bmm."""
    if request.param == "fused" and native.kernels() is None:
        pytest.skip("the fused CPU kernels could not be built here (no C++ compiler?)")
    monkeypatch.setattr(backend, "FUSED", request.param == "fused")
    return request.param


def random_graph(n: int, e: int, d: int, cin: int, gen: torch.Generator, dtype=torch.float64):
    x = torch.randn(n, cin, generator=gen, dtype=dtype)
    ei = torch.randint(0, n, (2, e), generator=gen)
    ea = torch.randn(e, d, generator=gen, dtype=dtype)
    return x, ei, ea


def make_pair(cin, cout, d, hidden, aggr, seed):
    torch.manual_seed(seed)
    sizes = [d, *hidden]
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    ref = NNConv(cin, cout, nn.Sequential(*layers, nn.Linear(hidden[-1], cin * cout)),
                 aggr={"sum": "add", "mean": "mean"}[aggr]).double()
    with torch.no_grad():
        ref.bias.normal_()
    return ref, ECConv.from_pyg(ref)


@pytest.mark.parametrize("aggr", ["mean", "sum"])
@pytest.mark.parametrize("seed,n,e,cin,cout,hidden", [
    (0, 30, 200, 4, 5, (8,)), (1, 50, 400, 7, 3, (16, 8)), (2, 5, 0, 3, 3, (4,)), (3, 40, 500, 1, 6, (5,))])
def test_equals_nnconv_forward_and_backward(aggr, seed, n, e, cin, cout, hidden):
    ref, conv = make_pair(cin, cout, 3, hidden, aggr, seed)
    gen = torch.Generator().manual_seed(100 + seed)
    x, ei, ea = random_graph(n, e, 3, cin, gen)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    ea1, ea2 = ea.clone().requires_grad_(), ea.clone().requires_grad_()
    out_ref, out = ref(x1, ei, ea1), conv(x2, ei, ea2)
    torch.testing.assert_close(out, out_ref, rtol=1e-12, atol=1e-12)
    g = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    (out_ref * g).sum().backward()
    (out * g).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(ea2.grad, ea1.grad, rtol=1e-11, atol=1e-11)
    ref_grads = dict(ref.named_parameters())
    pairs = {"kernel_out.weight": "nn.%d.weight" % (len(ref.nn) - 1), "kernel_out.bias": "nn.%d.bias" % (len(ref.nn) - 1),
             "root.weight": "lin.weight", "bias": "bias"}
    for name, p in conv.named_parameters():
        ref_name = pairs.get(name, name.replace("kernel_hidden", "nn"))
        torch.testing.assert_close(p.grad, ref_grads[ref_name].grad, rtol=1e-11, atol=1e-11, msg=name)


@pytest.mark.parametrize("aggr", ["mean", "sum"])
def test_equals_the_dense_per_edge_oracle(aggr):
    """Against the slow obvious NNConv (the full [E, C_in, C_out] kernel per edge), independent of PyG: outputs
    and the gradients of x, the edge attributes and every weight, float64."""
    ref, conv = make_pair(4, 5, 3, (8, 6), aggr, 7)
    x, ei, ea = random_graph(30, 300, 3, 4, torch.Generator().manual_seed(7))
    inputs = [t.clone().requires_grad_() for t in (x, ea, x, ea)]
    params = [conv.root.weight, conv.bias]
    out = conv(inputs[0], ei, inputs[1])
    expected = dense_nnconv(inputs[2], ei, inputs[3], ref.nn, ref.lin.weight, ref.bias, aggr)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(8), dtype=out.dtype)
    got = torch.autograd.grad((out * g).sum(), [inputs[0], inputs[1], *params])
    want = torch.autograd.grad((expected * g).sum(), [inputs[2], inputs[3], ref.lin.weight, ref.bias])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)


def test_chunking_does_not_change_result():
    gen = torch.Generator().manual_seed(0)
    x, ei, ea = random_graph(60, 700, 3, 4, gen)
    torch.manual_seed(0)
    conv = ECConv(4, 5, 3, (8,)).double()
    full = conv(x, ei, ea)
    conv.edge_chunk = 37
    torch.testing.assert_close(conv(x, ei, ea), full, rtol=1e-13, atol=1e-13)


def test_aggregate_gradcheck():
    gen = torch.Generator().manual_seed(1)
    h = torch.randn(40, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    q = torch.randn(10, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    src, dst = torch.randint(0, 10, (2, 40), generator=gen)
    w = torch.rand(40, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda h, q: edge_kernel_aggregate(h, q, src, dst, w, 10, 7), (h, q))


def test_float32_close_to_float64():
    ref, conv = make_pair(8, 8, 3, (16,), "mean", 5)
    x, ei, ea = random_graph(100, 1000, 3, 8, torch.Generator().manual_seed(5))
    out64 = conv(x, ei, ea)
    out32 = conv.float()(x.float(), ei, ea.float())
    torch.testing.assert_close(out32.double(), out64, rtol=1e-4, atol=1e-5)


def test_from_pyg_rejects_unsupported_kernel():
    ref = NNConv(2, 2, nn.Linear(3, 4))
    with pytest.raises(ValueError, match="Sequential"):
        ECConv.from_pyg(ref)


# --- every code path of the fast aggregation, against NNConv in float64 -------------------------------------

def compare_with_nnconv(ref, conv, x, ei, ea, tol=1e-11):
    """Forward output and the gradients wrt x, edge_attr and every parameter agree to round-off."""
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    ea1, ea2 = ea.clone().requires_grad_(), ea.clone().requires_grad_()
    out_ref, out = ref(x1, ei, ea1), conv(x2, ei, ea2)
    torch.testing.assert_close(out, out_ref, rtol=tol, atol=tol)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype)
    (out_ref * g).sum().backward()
    (out * g).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=tol, atol=tol)
    torch.testing.assert_close(ea2.grad, ea1.grad, rtol=tol, atol=tol)
    last = len(ref.nn) - 1
    pairs = {"kernel_out.weight": f"nn.{last}.weight", "kernel_out.bias": f"nn.{last}.bias",
             "root.weight": "lin.weight", "bias": "bias"}
    ref_grads = dict(ref.named_parameters())
    for name, p in conv.named_parameters():
        ref_p = ref_grads[pairs.get(name, name.replace("kernel_hidden", "nn"))]
        torch.testing.assert_close(p.grad, ref_p.grad, rtol=tol, atol=tol, msg=name)


def radius_graph_edges(n, r, gen):
    pos = torch.rand(n, 2, generator=gen, dtype=torch.float64)
    d = torch.cdist(pos, pos)
    j, i = torch.nonzero((d <= r) & ~torch.eye(n, dtype=torch.bool), as_tuple=True)
    ei = torch.stack([j, i])
    return pos, ei, torch.cat([pos[j] - pos[i], d[j, i, None]], dim=1) / r


@pytest.mark.parametrize("aggr", ["mean", "sum"])
@pytest.mark.parametrize("chunk", [1, 7, 64, 100_000])
def test_chunk_sizes_equal_nnconv(aggr, chunk):
    """Chunks of one edge (every source alone), chunks splitting degree groups, one chunk for everything."""
    ref, conv = make_pair(4, 3, 3, (6,), aggr, 11)
    conv.edge_chunk = chunk
    gen = torch.Generator().manual_seed(11)
    pos, ei, ea = radius_graph_edges(40, 0.3, gen)
    compare_with_nnconv(ref, conv, torch.randn(40, 4, generator=gen, dtype=torch.float64), ei, ea)


@pytest.mark.parametrize("aggr", ["mean", "sum"])
def test_unsorted_edges_and_duplicates(aggr):
    """Edges in random order, repeated edges and self-loops give NNConv's result."""
    ref, conv = make_pair(3, 4, 3, (5,), aggr, 12)
    conv.edge_chunk = 16
    gen = torch.Generator().manual_seed(12)
    _, ei, ea = radius_graph_edges(30, 0.35, gen)
    extra = torch.tensor([[0, 0, 3, 5], [0, 1, 3, 9]])  # self-loops (0,0), (3,3); (0,1), (5,9) maybe repeated
    ei = torch.cat([ei, extra, ei[:, :10]], dim=1)
    ea = torch.cat([ea, torch.randn(4, 3, generator=gen, dtype=torch.float64), ea[:10]])
    perm = torch.randperm(ei.shape[1], generator=gen)
    compare_with_nnconv(ref, conv, torch.randn(30, 3, generator=gen, dtype=torch.float64), ei[:, perm], ea[perm])


@pytest.mark.parametrize("aggr", ["mean", "sum"])
def test_isolated_nodes_and_hubs(aggr):
    """Nodes without in- or out-edges, and a hub whose out-degree exceeds the chunk size."""
    ref, conv = make_pair(2, 3, 3, (4,), aggr, 13)
    conv.edge_chunk = 8
    gen = torch.Generator().manual_seed(13)
    n = 25
    hub = torch.stack([torch.zeros(20, dtype=torch.long), torch.arange(1, 21)])  # 0 -> 1..20
    ring = torch.stack([torch.arange(1, 10), torch.arange(2, 11)])  # 1 -> 2 -> ... -> 10
    ei = torch.cat([hub, ring], dim=1)  # nodes 21..24 isolated, node 0 receives nothing
    ea = torch.randn(ei.shape[1], 3, generator=gen, dtype=torch.float64)
    x = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    compare_with_nnconv(ref, conv, x, ei, ea)
    out = conv(x, ei, ea)
    expected = conv.root(x[21:]) + conv.bias  # isolated nodes: root term and bias only
    torch.testing.assert_close(out[21:], expected, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("chunk", [3, 32_768])
def test_zero_edges(chunk):
    ref, conv = make_pair(3, 2, 3, (4,), "mean", 14)
    conv.edge_chunk = chunk
    x = torch.randn(6, 3, dtype=torch.float64)
    compare_with_nnconv(ref, conv, x, torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, 3, dtype=torch.float64))


def make_pair_layers(layers, cin, cout, aggr, seed):
    torch.manual_seed(seed)
    hidden = [m.out_features for m in layers if isinstance(m, nn.Linear)][-1]
    ref = NNConv(cin, cout, nn.Sequential(*layers, nn.Linear(hidden, cin * cout)),
                 aggr={"sum": "add", "mean": "mean"}[aggr]).double()
    with torch.no_grad():
        ref.bias.normal_()
    return ref, ECConv.from_pyg(ref)


@pytest.mark.parametrize("aggr", ["mean", "sum"])
@pytest.mark.parametrize("kind", ["gelu-tanh", "elu-inplace", "layernorm-fallback", "dropout-fallback"])
def test_kernel_mlps(kind, aggr):
    """Pointwise activations other than ReLU (chunked kernel with its own backward), and kernels that are not
    row-wise (evaluated by autograd over all edges: the aggregation alone is chunked)."""
    layers = {
        "gelu-tanh": [nn.Linear(3, 6), nn.GELU(), nn.Linear(6, 5), nn.Tanh()],
        "elu-inplace": [nn.Linear(3, 6), nn.ELU(inplace=True), nn.Linear(6, 5), nn.ReLU(inplace=True)],
        "layernorm-fallback": [nn.Linear(3, 6), nn.LayerNorm(6), nn.SiLU()],
        "dropout-fallback": [nn.Linear(3, 6), nn.ReLU(), nn.Dropout(0.0), nn.BatchNorm1d(6).eval()],
    }[kind]
    ref, conv = make_pair_layers(layers, 3, 4, aggr, 15)
    fused = RowwiseKernel.from_module(conv.kernel_hidden) is not None
    assert fused == (kind in ("gelu-tanh", "elu-inplace"))
    conv.edge_chunk = 20
    gen = torch.Generator().manual_seed(15)
    _, ei, ea = radius_graph_edges(30, 0.3, gen)
    compare_with_nnconv(ref, conv, torch.randn(30, 3, generator=gen, dtype=torch.float64), ei, ea)


def test_mpnn_layers_share_one_plan():
    """The layers of a model reuse the plan of their common edge_index (built once per tensor)."""
    from dsmpnn.nn import MPNN
    import dsmpnn.nn.kernels.edge_plan as plan_module

    torch.manual_seed(0)
    model = MPNN(3, 2, 3, hidden=8, layers=3, kernel_hidden=(6,))
    ei, ea, x = torch.randint(0, 30, (2, 200)), torch.randn(200, 3), torch.randn(30, 3)
    built = []
    original = plan_module.EdgePlan.build
    try:
        plan_module.EdgePlan.build = classmethod(lambda cls, *a, **k: built.append(1) or original(*a, **k))
        model(x, ei, ea)
        model(x, ei, ea)
    finally:
        plan_module.EdgePlan.build = original
    assert len(built) == 1


# --- gradcheck of the autograd functions -----------------------------------------------------------------

def test_ecconv_aggregate_gradcheck_fused_kernel():
    """Fused aggregation with a two-layer kernel: gradients wrt x, W, edge attributes and kernel parameters."""
    gen = torch.Generator().manual_seed(2)
    n, e, d, hdim, cin, c = 9, 40, 3, 4, 3, 2
    ei = torch.randint(0, n, (2, e), generator=gen)
    mlp = nn.Sequential(nn.Linear(d, 5), nn.Tanh(), nn.Linear(5, hdim), nn.GELU()).double()
    params = []
    for m in mlp:
        if isinstance(m, nn.Linear):
            for name in ("weight", "bias"):
                t = getattr(m, name).detach().clone().requires_grad_()
                delattr(m, name)
                setattr(m, name, t)  # gradcheck perturbs these very tensors
                params.append(t)
    kernel = RowwiseKernel.from_module(mlp)
    assert kernel is not None and kernel.parameters() == params
    plan = EdgePlan.build(ei, n, chunk=6)
    s = torch.rand(n, generator=gen, dtype=torch.float64)
    x = torch.randn(n, cin, generator=gen, dtype=torch.float64, requires_grad=True)
    wb = torch.randn(cin, hdim + 1, c, generator=gen, dtype=torch.float64, requires_grad=True)
    ea = torch.randn(e, d, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, wb, ea, *p: ecconv_aggregate(x, wb, ea, plan, kernel, node_weight=s), (x, wb, ea, *params))


def test_ecconv_aggregate_gradcheck_given_features():
    """Aggregation of given per-edge features h (no kernel, W without a bias row)."""
    gen = torch.Generator().manual_seed(3)
    ei = torch.randint(0, 8, (2, 30), generator=gen)
    plan = EdgePlan.build(ei, 8, chunk=5)
    x = torch.randn(8, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    wb = torch.randn(3, 4, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    h = torch.randn(30, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, wb, h: ecconv_aggregate(x, wb, h, plan), (x, wb, h))


def test_edge_kernel_aggregate_matches_loop():
    gen = torch.Generator().manual_seed(4)
    h = torch.randn(50, 3, generator=gen, dtype=torch.float64)
    q = torch.randn(12, 3, 2, generator=gen, dtype=torch.float64)
    src, dst = torch.randint(0, 12, (2, 50), generator=gen)
    w = torch.rand(50, generator=gen, dtype=torch.float64)
    expected = torch.zeros(7 + 12, 2, dtype=torch.float64)
    for e in range(50):
        expected[dst[e]] += w[e] * (h[e] @ q[src[e]])
    torch.testing.assert_close(edge_kernel_aggregate(h, q, src, dst, w, 19, 4), expected, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("workers", [1, 3])
def test_chunk_workers(workers, monkeypatch):
    """One thread, or chunks split between threads (partial sums added in worker order): same result."""
    monkeypatch.setattr(chunk_pool, "CHUNK_WORKERS", workers)
    ref, conv = make_pair(4, 3, 3, (6,), "mean", 16)
    conv.edge_chunk = 9
    gen = torch.Generator().manual_seed(16)
    _, ei, ea = radius_graph_edges(40, 0.3, gen)
    compare_with_nnconv(ref, conv, torch.randn(40, 4, generator=gen, dtype=torch.float64), ei, ea)


def test_inference_and_no_grad_modes():
    ref, conv = make_pair(4, 3, 3, (6,), "mean", 17)
    conv.edge_chunk = 9
    gen = torch.Generator().manual_seed(17)
    _, ei, ea = radius_graph_edges(40, 0.3, gen)
    x = torch.randn(40, 4, generator=gen, dtype=torch.float64)
    expected = ref(x, ei, ea)
    with torch.no_grad():
        torch.testing.assert_close(conv(x, ei, ea), expected, rtol=1e-12, atol=1e-12)
    with torch.inference_mode():
        out = conv(x, ei, ea)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("aggr", ["mean", "sum"])
def test_padded_path_equals_nnconv(aggr, monkeypatch):
    """The degree-padded products (used on CUDA) computed on CPU: hubs, isolated nodes, small chunks."""
    monkeypatch.setattr(backend, "PADDED", True)
    ref, conv = make_pair(3, 4, 3, (5,), aggr, 18)
    conv.edge_chunk = 10
    gen = torch.Generator().manual_seed(18)
    _, ei, ea = radius_graph_edges(30, 0.3, gen)
    hub = torch.stack([torch.zeros(12, dtype=torch.long), torch.arange(1, 13)])
    ei, ea = torch.cat([ei, hub], 1), torch.cat([ea, torch.randn(12, 3, generator=gen, dtype=torch.float64)])
    perm = torch.randperm(ei.shape[1], generator=gen)
    compare_with_nnconv(ref, conv, torch.randn(32, 3, generator=gen, dtype=torch.float64), ei[:, perm], ea[perm])


def test_padded_gradcheck(monkeypatch):
    monkeypatch.setattr(backend, "PADDED", True)
    gen = torch.Generator().manual_seed(5)
    ei = torch.randint(0, 8, (2, 30), generator=gen)
    plan = EdgePlan.build(ei, 8, chunk=9)
    mlp = nn.Sequential(nn.Linear(3, 4), nn.Tanh()).double()
    x = torch.randn(8, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    wb = torch.randn(3, 5, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    ea = torch.randn(30, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    kernel = RowwiseKernel.from_module(mlp)
    assert torch.autograd.gradcheck(lambda x, wb, ea: ecconv_aggregate(x, wb, ea, plan, kernel), (x, wb, ea))
