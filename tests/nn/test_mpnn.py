import torch

from dsmpnn.nn import MPNN


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
