"""choose_backend: every rule of dsmpnn.nn.kernels.backend, and that the aggregation and the edge plan follow it."""

import pytest
import torch

from dsmpnn.nn import ECConv
from dsmpnn.nn.kernels import backend, native
from dsmpnn.nn.kernels.edge_plan import default_order

CPU, CUDA, META = torch.device("cpu"), torch.device("cuda"), torch.device("meta")
HAVE_KERNELS = native._compiler() is not None  # test_native asserts that they then build


@pytest.fixture(autouse=True)
def defaults(monkeypatch):
    monkeypatch.setattr(backend, "FUSED", None)
    monkeypatch.setattr(backend, "PADDED", None)
    monkeypatch.delenv("DSMPNN_NATIVE", raising=False)


def no_kernels(monkeypatch):
    """As on a machine without a compiler: kernels() finds none (and is never asked to build)."""
    monkeypatch.setattr(native, "kernels", lambda: None)


def test_defaults():
    assert backend.choose_backend(CUDA, torch.float32) == "padded"  # no GPU needed: a device is only a name here
    assert backend.choose_backend(META) == "bmm"
    if HAVE_KERNELS:
        for dtype in (None, torch.float32, torch.float64):
            assert backend.choose_backend(CPU, dtype) == "fused"
    for dtype in (torch.float16, torch.bfloat16):
        assert backend.choose_backend(CPU, dtype) == "bmm"


def test_padded_switch_comes_first(monkeypatch):
    monkeypatch.setattr(backend, "FUSED", True)
    monkeypatch.setattr(backend, "PADDED", True)
    assert backend.choose_backend(CPU, torch.float64) == "padded"
    monkeypatch.setattr(backend, "PADDED", False)
    monkeypatch.setattr(backend, "FUSED", None)
    assert backend.choose_backend(CUDA, torch.float32) == "bmm"


def test_fused_off_by_switch_or_environment(monkeypatch):
    monkeypatch.setattr(backend, "FUSED", False)
    assert backend.choose_backend(CPU, torch.float32) == "bmm"
    monkeypatch.setattr(backend, "FUSED", None)
    monkeypatch.setattr(native, "kernels", lambda: pytest.fail("DSMPNN_NATIVE=0 must not even build"))
    monkeypatch.setenv("DSMPNN_NATIVE", "0")  # read at each call
    assert backend.choose_backend(CPU, torch.float32) == "bmm"
    monkeypatch.setattr(backend, "FUSED", True)
    with pytest.raises(RuntimeError, match="DSMPNN_NATIVE=0"):
        backend.choose_backend(CPU, torch.float32)


def test_unavailable_kernels(monkeypatch):
    no_kernels(monkeypatch)
    assert backend.choose_backend(CPU, torch.float32) == "bmm"
    monkeypatch.setattr(backend, "FUSED", True)
    with pytest.raises(RuntimeError, match="could not be built"):
        backend.choose_backend(CPU, torch.float32)
    # FUSED only insists where the other rules allow the kernels at all
    assert backend.choose_backend(CPU, torch.float16) == "bmm"
    assert backend.choose_backend(CUDA, torch.float32) == "padded"


def test_edge_plan_order_follows_the_choice(monkeypatch):
    assert default_order(CUDA) == "degree"
    monkeypatch.setattr(backend, "FUSED", False)
    assert default_order(CPU) == "degree"
    if HAVE_KERNELS:
        monkeypatch.setattr(backend, "FUSED", None)
        assert default_order(CPU) == "locality"
        monkeypatch.setattr(backend, "PADDED", True)
        assert default_order(CPU) == "degree"


@pytest.mark.parametrize("choice", ["fused", "bmm", "padded"])
def test_the_aggregation_runs_the_chosen_backend(choice, monkeypatch):
    """Forward and backward of an ECConv call the backend choose_backend names, and only that one (the
    backward runs where the forward ran, even if the switches change in between)."""
    from dsmpnn.nn.kernels import bmm, fused

    if choice == "fused" and not HAVE_KERNELS:
        pytest.skip("no C++ compiler")
    monkeypatch.setattr(backend, "FUSED", choice == "fused")
    monkeypatch.setattr(backend, "PADDED", choice == "padded")
    ran: list[str] = []
    for module, name in ((fused, "fused"), (bmm, "bmm")):
        for fn in ("forward_work", "backward_work"):
            original = getattr(module, fn)

            def spy(*args, _original=original, _name=name, _fn=fn, **kwargs):
                ran.append(f"{_name}.{_fn}" + ("(padded)" if kwargs.get("padded") else ""))
                return _original(*args, **kwargs)

            monkeypatch.setattr(module, fn, spy)
    gen = torch.Generator().manual_seed(0)
    conv = ECConv(3, 4, 2, (5,)).double()
    x = torch.randn(20, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    ei, ea = torch.randint(0, 20, (2, 60), generator=gen), torch.randn(60, 2, generator=gen, dtype=torch.float64)
    out = conv(x, ei, ea)
    monkeypatch.setattr(backend, "FUSED", False)  # switched between forward and backward: no effect on this call
    monkeypatch.setattr(backend, "PADDED", False)
    out.sum().backward()
    name = {"fused": "fused", "bmm": "bmm", "padded": "bmm"}[choice]
    tag = "(padded)" if choice == "padded" else ""
    assert ran == [f"{name}.forward_work{tag}", f"{name}.backward_work{tag}"]
