import numpy as np
import pytest
import torch

from dsmpnn.graph import build_graph
from dsmpnn.nn import MPNN
from dsmpnn.nn.kernels import backend, native


def test_shapes_and_exchange_called_per_layer():
    torch.manual_seed(0)
    model = MPNN(5, 2, 3, hidden=8, layers=3, kernel_hidden=(6,), layer_norm=True)
    x, ei, ea = torch.randn(20, 5), torch.randint(0, 20, (2, 80)), torch.randn(80, 3)
    calls = []

    def exchange(h, layer):
        calls.append((layer, h.shape))
        return h

    out = model(x, ei, ea, exchange=exchange)
    assert out.shape == (20, 2)
    assert calls == [(0, (20, 8)), (1, (20, 8)), (2, (20, 8))]
    torch.testing.assert_close(model(x, ei, ea), out)


def test_message_passing_is_local():
    """A node's output depends only on nodes within L hops (here a path graph)."""
    torch.manual_seed(0)
    model = MPNN(2, 1, 3, hidden=4, layers=2, kernel_hidden=(4,)).double()
    n = 10
    src = torch.cat([torch.arange(n - 1), torch.arange(1, n)])
    ei = torch.stack([src, torch.cat([torch.arange(1, n), torch.arange(n - 1)])])
    ea = torch.randn(ei.shape[1], 3, dtype=torch.float64)
    x = torch.randn(n, 2, dtype=torch.float64, requires_grad=True)
    model(x, ei, ea)[0].sum().backward()
    assert torch.all(x.grad[:3].abs().sum(1) > 0)
    assert torch.all(x.grad[3:] == 0)


def _grads(model, x, ea):
    return [p.grad.clone() for p in model.parameters()] + [x.grad.clone(), ea.grad.clone()]


def test_checkpoint_layers_gives_the_same_outputs_and_gradients():
    """checkpoint_layers recomputes each layer in backward: outputs and every gradient are unchanged, and the
    exchange (here a differentiable halo-like overwrite of rows) runs once per layer, never in the recomputation."""
    torch.manual_seed(0)
    n, e = 30, 150
    ei, ea0, x0 = torch.randint(0, n, (2, e)), torch.randn(e, 3, dtype=torch.float64), torch.randn(n, 5).double()
    halo, owners = torch.arange(25, 30), torch.arange(0, 5)
    results = {}
    for ckpt in (False, True):
        torch.manual_seed(1)
        model = MPNN(5, 2, 3, hidden=8, layers=3, kernel_hidden=(6,), layer_norm=True,
                     checkpoint_layers=ckpt).double()
        x, ea = x0.clone().requires_grad_(), ea0.clone().requires_grad_()
        calls = []

        def exchange(h, layer):
            calls.append(layer)
            return h.index_copy(0, halo, 0.5 * h[owners])

        out = model(x, ei, ea, exchange=exchange)
        (out ** 2).sum().backward()
        assert calls == [0, 1, 2]  # forward only: the backward recomputation does not call it again
        results[ckpt] = (out.detach(), _grads(model, x, ea))
        with torch.no_grad():  # no checkpointing without grad
            torch.testing.assert_close(model(x, ei, ea), model.eval()(x, ei, ea))
    torch.testing.assert_close(results[True][0], results[False][0], rtol=1e-12, atol=1e-12)
    for a, b in zip(results[True][1], results[False][1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_inference_in_pieces_equals_the_training_forward(monkeypatch):
    """Without autograd the encoder/decoder run a few rows at a time and the residual, root and bias are added in
    place: float64 outputs equal the grad-mode forward (which does neither) to round-off, and the kernel MLP is still
    the fused kernels' (the pieces apply to the per-node MLPs only)."""
    import dsmpnn.nn.mlp as mlp
    from dsmpnn.nn.kernels.rowwise import RowwiseKernel

    monkeypatch.setattr(mlp, "INFERENCE_ROWS", 7)  # 50 nodes: 8 pieces, the last one short
    torch.manual_seed(1)
    model = MPNN(3, 2, 3, hidden=8, layers=3, kernel_hidden=(6,), layer_norm=True).double()
    x, ei, ea = (torch.randn(50, 3, dtype=torch.float64), torch.randint(0, 50, (2, 300)),
                 torch.randn(300, 3, dtype=torch.float64))
    ref = model(x, ei, ea)  # grad mode: whole tensors, out of place
    assert ref.requires_grad
    with torch.no_grad():
        pieces = model(x, ei, ea)
    torch.testing.assert_close(pieces, ref.detach(), rtol=1e-12, atol=1e-12)
    assert RowwiseKernel.from_module(model.convs[0].kernel_hidden) is not None


@pytest.mark.parametrize("choice", ["fused", "bmm", "padded"])
def test_an_int32_graph_equals_its_int64_copy_on_every_backend(choice, monkeypatch):
    """Radius graphs hold int32 node ids (graph.index_dtype): the MPNN gives the outputs and gradients of their
    int64 copy on every backend, the degree-padded one of CUDA included (its products run on CPU here)."""
    if choice == "fused" and native._compiler() is None:
        pytest.skip("no C++ compiler")
    monkeypatch.setattr(backend, "FUSED", choice == "fused")
    monkeypatch.setattr(backend, "PADDED", choice == "padded")
    g = build_graph(np.random.default_rng(0).random((150, 2)), 0.15, dtype=torch.float64)
    assert g.edge_index.dtype == torch.int32
    torch.manual_seed(0)
    model = MPNN(3, 2, 3, hidden=8, layers=2, kernel_hidden=(6,)).double()
    x = torch.randn(150, 3, dtype=torch.float64)
    results = []
    for ei in (g.edge_index, g.edge_index.long()):
        model.zero_grad()
        xi = x.clone().requires_grad_()
        out = model(xi, ei, g.edge_attr)
        out.square().sum().backward()
        results.append([out.detach(), xi.grad] + [p.grad.clone() for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
