import pytest
import torch
from torch_geometric.nn import GCNConv

from dsmpnn.errors import ConfigError
from dsmpnn.nn import GCN
from dsmpnn.train.config import ModelConfig, load_config
from dsmpnn.train.factory import build_model, count_parameters, gcn_width
from dsmpnn.train.strategy import check_decomposable


def test_shapes_exchange_per_layer_and_edge_attr_ignored():
    torch.manual_seed(0)
    model = GCN(5, 2, hidden=8, layers=3, layer_norm=True)
    x, ei = torch.randn(20, 5), torch.randint(0, 20, (2, 80))
    calls = []

    def exchange(h, layer):
        calls.append((layer, h.shape))
        return h

    out = model(x, ei, torch.randn(80, 3), exchange=exchange)
    assert out.shape == (20, 2)
    assert calls == [(0, (20, 8)), (1, (20, 8)), (2, (20, 8))]
    torch.testing.assert_close(model(x, ei), out)


def test_message_passing_is_local():
    """A node's output depends only on nodes within L hops (path graph, 2 layers)."""
    torch.manual_seed(0)
    model = GCN(2, 1, hidden=4, layers=2).double()
    n = 10
    src = torch.cat([torch.arange(n - 1), torch.arange(1, n)])
    ei = torch.stack([src, torch.cat([torch.arange(1, n), torch.arange(n - 1)])])
    x = torch.randn(n, 2, dtype=torch.float64, requires_grad=True)
    model(x, ei)[0].sum().backward()
    assert torch.all(x.grad[:3].abs().sum(1) > 0)
    assert torch.all(x.grad[3:] == 0)


@pytest.mark.numerics
def test_gcnconv_matches_dense_normalised_adjacency():
    """GCNConv == D^-1/2 (A + I) D^-1/2 X W + b on a hand-made 4-node graph (A[i, j] = 1 for an edge j -> i)."""
    torch.manual_seed(0)
    ei = torch.tensor([[0, 1, 1, 2, 2, 3, 0], [1, 0, 2, 1, 3, 2, 2]])  # a path plus one directed edge 0 -> 2
    n = 4
    conv = GCNConv(3, 2).double()
    x = torch.randn(n, 3, dtype=torch.float64)
    A = torch.zeros(n, n, dtype=torch.float64)
    A[ei[1], ei[0]] = 1.0
    Ahat = A + torch.eye(n, dtype=torch.float64)
    d = Ahat.sum(1)  # in-degree + 1
    dense = torch.diag(d.rsqrt()) @ Ahat @ torch.diag(d.rsqrt()) @ x @ conv.lin.weight.T + conv.bias
    torch.testing.assert_close(conv(x, ei), dense)
    # and the whole GCN's first layer uses exactly this operator
    model = GCN(3, 1, hidden=2, layers=1, residual=False).double()
    h0 = model.encoder(x)
    c = model.convs[0]
    ref = torch.diag(d.rsqrt()) @ Ahat @ torch.diag(d.rsqrt()) @ h0 @ c.lin.weight.T + c.bias
    torch.testing.assert_close(model.decoder(model.act(ref)), model(x, ei))


class _FMap:
    in_channels, out_channels, edge_dim = 7, 3, 3


@pytest.mark.parametrize("overrides", [[], ["model.layer_norm=true"], ["model.hidden=16", "model.layers=2"],
                                       ["model.encoder_hidden=[]", "model.decoder_hidden=[]"]])
def test_gcn_width_matches_mpnn_budget(overrides):
    cfg = load_config(None, overrides).model
    mpnn = count_parameters(build_model(cfg, _FMap()))
    gcn_cfg = load_config(None, overrides + ["model.kind=gcn"]).model
    w = gcn_width(gcn_cfg, _FMap())
    gcn = build_model(gcn_cfg, _FMap())
    assert isinstance(gcn, GCN) and gcn.convs[0].lin.weight.shape == (w, w)
    counts = [count_parameters(build_model(ModelConfig(**{**vars(gcn_cfg), "gcn_hidden": v}), _FMap()))
              for v in (w - 1, w, w + 1)]
    assert counts[1] == count_parameters(gcn)
    assert abs(counts[1] - mpnn) <= min(abs(counts[0] - mpnn), abs(counts[2] - mpnn))  # the closest width


def test_explicit_width_and_config_choices():
    cfg = load_config(None, ["model.kind=gcn", "model.gcn_hidden=12"]).model
    assert build_model(cfg, _FMap()).convs[0].lin.weight.shape == (12, 12)
    with pytest.raises(ConfigError, match="model.kind"):
        load_config(None, ["model.kind=gat"])


def test_gcn_refused_on_several_ranks():
    cfg = load_config(None, ["model.kind=gcn"])
    check_decomposable(cfg, 1)
    check_decomposable(load_config(None, []), 4)
    with pytest.raises(ConfigError, match="one process only"):
        check_decomposable(cfg, 2)
