"""ECConv equals PyG NNConv to round-off, and its custom backward equals autograd through NNConv."""

import pytest
import torch
from torch import nn
from torch_geometric.nn import NNConv

from dsmpnn.nn import ECConv, edge_kernel_aggregate

pytestmark = pytest.mark.numerics


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
