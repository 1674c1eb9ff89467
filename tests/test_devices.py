"""The CUDA code paths, on CPU and (where a GPU is present) on CUDA: each case is parametrised by ``device``
(tests/conftest.py): "cpu" always runs, "cuda" is marked ``cuda`` and SKIPPED with a reason without a GPU.

What is compared, and with what tolerance (relative Frobenius norm ||a - ref|| / ||ref||, see :func:`rel`):

- the float32 model on the device against the float64 model on the CPU (the truth): forward <= 1e-5 and every
  gradient <= 1e-4 (float32 round-off, ~6e-8 per operation, grows with the sums over neighbours and channels;
  measured on CPU: 5e-8 forward, at most 4e-7 for gradients, so the bounds leave two orders of magnitude for
  another summation order, e.g. atomic adds on a GPU).
  TF32 is switched off for these (the ``exact_float32`` fixture); with TF32 on (the matmul units' 10-bit
  mantissa mode) the error is expected near 1e-3 (not yet measured: no GPU so far) and is checked against 1e-2;
- the aggregation paths: "default" (what the device picks: the fused C++ kernels on CPU, the degree-padded
  ``bmm`` compiled with ``torch.compile`` on CUDA), "padded" (the padded ``bmm`` in eager PyTorch, forced on the
  CPU too), "per_degree" (one ``bmm`` per out-degree, PyTorch only).

The padded functions are also traced by ``torch.compile`` on CPU (``fullgraph=True``, no graph breaks, dynamic
shapes) with the ``aot_eager`` backend, which checks that Dynamo/AOTAutograd accept them without generating
code (inductor's CPU code generation needs minutes and a C++ compiler; on CUDA the real compile runs).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from dsmpnn.distributed import run_processes
from dsmpnn.nn import MPNN, ECConv
from dsmpnn.nn.kernels import backend, padded
from tests.conftest import HAS_CUDA, NO_CUDA_REASON
from tests.distributed import device_workers as DW
from tests.helpers.cli_cases import TINY

FWD_TOL, GRAD_TOL = 1e-5, 1e-4
TF32_TOL = 1e-2


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    """||a - ref|| / ||ref|| in float64 on the CPU (NaN never passes a ``<=``)."""
    a, ref = a.detach().double().cpu(), ref.detach().double().cpu()
    return float(torch.linalg.norm(a - ref) / torch.linalg.norm(ref).clamp_min(1e-300))


def radius_graph(n: int, r: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A radius graph on n random points in the unit square plus one hub (node 0 -> 40 others): float64 edge
    attributes [dx, dy, |d|] / r, edges shuffled."""
    gen = torch.Generator().manual_seed(seed)
    pos = torch.rand(n, 2, generator=gen, dtype=torch.float64)
    d = torch.cdist(pos, pos)
    j, i = torch.nonzero((d <= r) & ~torch.eye(n, dtype=torch.bool), as_tuple=True)
    hub = torch.arange(1, 41)
    j, i = torch.cat([j, torch.zeros_like(hub)]), torch.cat([i, hub])
    ea = torch.cat([pos[j] - pos[i], torch.linalg.norm(pos[j] - pos[i], dim=1, keepdim=True)], 1) / r
    perm = torch.randperm(j.shape[0], generator=gen)
    return torch.stack([j, i])[:, perm], ea[perm]


@pytest.fixture(params=["default", "padded", "per_degree"])
def path(request, monkeypatch, device):
    """Which per-chunk products the aggregation runs (see the module docstring)."""
    monkeypatch.setattr(padded, "_COMPILED", {})  # a compiled function that fell back must not leak
    if request.param == "padded":
        monkeypatch.setattr(backend, "PADDED", True)
        monkeypatch.setattr(padded, "COMPILE_ON_CUDA", False)
    elif request.param == "per_degree":
        monkeypatch.setattr(backend, "PADDED", False)
        monkeypatch.setattr(backend, "FUSED", False)
    return request.param


def _no_fallback(caught: list[warnings.WarningMessage]) -> None:
    """The compiled padded functions did not fall back to eager PyTorch (they warn when they do)."""
    fell_back = [str(w.message) for w in caught if "padded" in str(w.message)]
    assert not fell_back, fell_back


def _nnconv_pair(cin: int, cout: int, hidden: int, aggr: str, seed: int):
    from torch_geometric.nn import NNConv

    torch.manual_seed(seed)
    ref = NNConv(cin, cout, nn.Sequential(nn.Linear(3, hidden), nn.ReLU(), nn.Linear(hidden, cin * cout)),
                 aggr={"sum": "add", "mean": "mean"}[aggr]).double()
    with torch.no_grad():
        ref.bias.normal_()
    return ref, ECConv.from_pyg(ref)


def _forward_backward(module, x, ei, ea, g, *args):
    x, ea = x.clone().requires_grad_(), ea.clone().requires_grad_()
    out = module(x, ei, ea, *args)
    (out * g).sum().backward()
    grads = {n: p.grad for n, p in module.named_parameters()}
    return out.detach(), x.grad, ea.grad, grads


@pytest.mark.numerics
@pytest.mark.parametrize("aggr", ["mean", "sum"])
def test_ecconv_float32_on_device_equals_float64_nnconv(device, path, aggr, exact_float32):
    """ECConv in float32 on ``device`` (each aggregation path) against PyG NNConv in float64 on the CPU: output,
    dL/dx, dL/dedge_attr and every parameter gradient."""
    ref, conv = _nnconv_pair(6, 5, 16, aggr, seed=3)
    ei, ea = radius_graph(300, 0.12, seed=3)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(300, 6, generator=gen, dtype=torch.float64)
    g = torch.randn(300, 5, generator=gen, dtype=torch.float64)
    out_ref, gx_ref, gea_ref, gp_ref = _forward_backward(ref, x, ei, ea, g)
    conv = conv.float().to(device)
    conv.edge_chunk = 512  # several chunks, degree groups split between them
    f = lambda t: t.float().to(device)  # noqa: E731
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, gx, gea, gp = _forward_backward(conv, f(x), ei.to(device), f(ea), f(g))
    _no_fallback(caught)
    assert out.device.type == device.type and out.dtype == torch.float32
    assert rel(out, out_ref) <= FWD_TOL
    assert rel(gx, gx_ref) <= GRAD_TOL and rel(gea, gea_ref) <= GRAD_TOL
    last = len(ref.nn) - 1
    names = {"kernel_out.weight": f"nn.{last}.weight", "kernel_out.bias": f"nn.{last}.bias",
             "root.weight": "lin.weight", "bias": "bias"}
    for name, grad in gp.items():
        assert grad.device.type == device.type
        assert rel(grad, gp_ref[names.get(name, name.replace("kernel_hidden", "nn"))]) <= GRAD_TOL, name


@pytest.mark.numerics
def test_mpnn_float32_on_device_equals_float64_cpu(device, path, exact_float32):
    """The whole MPNN (encoder, 3 ECConv layers with LayerNorm, decoder): forward and every gradient."""
    ei, ea = radius_graph(250, 0.13, seed=5)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(250, 4, generator=gen, dtype=torch.float64)
    g = torch.randn(250, 2, generator=gen, dtype=torch.float64)
    torch.manual_seed(0)
    ref = MPNN(4, 2, 3, hidden=16, layers=3, kernel_hidden=(16,), layer_norm=True).double()
    model = MPNN(4, 2, 3, hidden=16, layers=3, kernel_hidden=(16,), layer_norm=True)
    model.load_state_dict(ref.state_dict())
    model = model.float().to(device)
    out_ref, gx_ref, gea_ref, gp_ref = _forward_backward(ref, x, ei, ea, g)
    f = lambda t: t.float().to(device)  # noqa: E731
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, gx, gea, gp = _forward_backward(model, f(x), ei.to(device), f(ea), f(g))
    _no_fallback(caught)
    assert rel(out, out_ref) <= FWD_TOL
    assert rel(gx, gx_ref) <= GRAD_TOL and rel(gea, gea_ref) <= GRAD_TOL
    for name, grad in gp.items():
        assert rel(grad, gp_ref[name]) <= GRAD_TOL, name
    with torch.no_grad():  # inference (no backward coming): the same output
        assert rel(model(f(x), ei.to(device), f(ea)), out_ref) <= FWD_TOL


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA_REASON)
def test_tf32_error_is_accounted_for():
    """With TF32 allowed in matmuls (PyTorch's default is off; users turn it on for speed) the float32 model's
    error against float64 stays below 1e-2: the bound to expect when TF32 is on."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        ref, conv = _nnconv_pair(32, 32, 64, "mean", seed=7)
        ei, ea = radius_graph(400, 0.1, seed=7)
        x = torch.randn(400, 32, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
        out_ref = ref(x, ei, ea)
        out = conv.float().cuda()(x.float().cuda(), ei.cuda(), ea.float().cuda())
        assert rel(out, out_ref) <= TF32_TOL
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("shapes", [[(5, 3, 7), (9, 2, 4)]])
def test_padded_functions_trace_whole_with_torch_compile(shapes):
    """padded_messages / padded_message_grads go through Dynamo and AOTAutograd as ONE graph each
    (``fullgraph=True``: a graph break raises), with dynamic shapes (a second shape, no recompile error), and the
    traced functions give the eager results. CPU, ``aot_eager`` backend: no code generation."""
    torch._dynamo.reset()
    msgs = torch.compile(padded.padded_messages, dynamic=True, fullgraph=True, backend="aot_eager")
    grads = torch.compile(padded.padded_message_grads, dynamic=True, fullgraph=True, backend="aot_eager")
    gen = torch.Generator().manual_seed(9)
    for n, k1, c in shapes:
        degrees = torch.randint(0, 6, (n,), generator=gen)
        e = int(degrees.sum())
        idx, pos = padded.padded_index(degrees, e)
        h = torch.randn(e, k1, generator=gen)
        q = torch.randn(n, k1, c, generator=gen)
        gm = torch.randn(e, c, generator=gen)
        torch.testing.assert_close(msgs(h, q, idx, pos), padded.padded_messages(h, q, idx, pos))
        for got, want in zip(grads(h, q, gm, idx, pos, k1 - 1, True, True),
                             padded.padded_message_grads(h, q, gm, idx, pos, k1 - 1, True, True)):
            torch.testing.assert_close(got, want)
    torch._dynamo.reset()


def test_maybe_compiled_is_eager_off_cuda():
    """On CPU the padded functions are never compiled (the module's contract)."""
    assert padded.maybe_compiled("messages", torch.device("cpu")) is padded.padded_messages
    assert padded.maybe_compiled("grads", torch.device("cpu")) is padded.padded_message_grads


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA_REASON)
def test_padded_is_compiled_on_cuda(monkeypatch):
    """On CUDA with Triton the default path IS the compiled one, and it does not fall back at its first call."""
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        pytest.skip("Triton is not installed: torch.compile cannot generate CUDA code, the eager path is used")
    monkeypatch.setattr(padded, "_COMPILED", {})
    dev = torch.device("cuda")
    assert backend.choose_backend(dev) == "padded"
    fn = padded.maybe_compiled("messages", dev)
    assert fn is not padded.padded_messages
    degrees = torch.tensor([3, 1, 0, 2], device=dev)
    idx, pos = padded.padded_index(degrees, 6)
    h, q = torch.randn(6, 4, device=dev), torch.randn(4, 4, 5, device=dev)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback warns
        out = fn(h, q, idx, pos)
    torch.testing.assert_close(out, padded.padded_messages(h, q, idx, pos))
    assert padded._COMPILED["messages"] is fn  # not replaced by the eager function


@pytest.mark.slow
def test_train_and_predict_on_device(device, shared, tmp_path, monkeypatch):
    """One epoch of `dsmpnn train` (TINY config) with the model on ``device``, the checkpoint it writes, and
    prediction on ``device`` equal to prediction on the CPU from the same checkpoint."""
    from dsmpnn.data import Dataset
    from dsmpnn.train import evaluate, load_config, load_run, train, trainer
    from dsmpnn.train.inference import predict_sample

    monkeypatch.setattr(trainer, "resolve_device", lambda name="auto": device)
    monkeypatch.setattr(evaluate, "resolve_device", lambda name="auto": device)
    data, _ = shared
    said: list[str] = []
    record = train(load_config(None, [*TINY, "train.epochs=1"]), data, tmp_path / "run", progress=False,
                   echo=said.append)
    assert np.isfinite(record["train_loss"])
    assert any(f"device {device.type}" in line for line in said), said
    on_device, on_cpu = load_run(tmp_path / "run", device), load_run(tmp_path / "run", "cpu")
    assert next(on_device.model.parameters()).device.type == device.type
    ds = Dataset(data)
    sample = ds.load(ds.split("test")[0])
    pred = predict_sample(on_device.model, on_device.fmap, sample, on_device.cfg, device)
    pred_cpu = predict_sample(on_cpu.model, on_cpu.fmap, sample, on_cpu.cfg, "cpu")
    assert np.all(np.isfinite(pred)) and pred.shape == pred_cpu.shape
    assert np.linalg.norm(pred - pred_cpu) <= 1e-4 * np.linalg.norm(pred_cpu)


def _backend_case(device: str, ranks: int):
    backend = "nccl" if device == "cuda" else "gloo"
    marks = [pytest.mark.distributed]
    if device == "cuda":
        marks += [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA_REASON)]
        if ranks > 1:
            marks.append(pytest.mark.skipif(HAS_CUDA and torch.cuda.device_count() < ranks,
                                            reason=f"{ranks} NCCL ranks need {ranks} GPUs, this machine has "
                                                   f"{torch.cuda.device_count() if HAS_CUDA else 0}"))
    return pytest.param(backend, ranks, marks=marks, id=f"{backend}-{ranks}rank")


@pytest.mark.parametrize("backend,ranks", [_backend_case("cpu", 1), _backend_case("cpu", 2),
                                           _backend_case("cuda", 1), _backend_case("cuda", 2)])
def test_process_group_through_the_halo_exchange(backend, ranks):
    """A process group of ``ranks`` ranks (gloo on CPU, NCCL on CUDA, one GPU a rank), the real halo exchange
    (counts verified by an all_to_all, both exchange modes), gradient all-reduce and gather: the float32 result
    on the ranks' devices equals the single-process float64 result on the CPU."""
    results = run_processes(DW.exchange_case, ranks, backend=backend, timeout_s=120)
    main = results[0]
    ref = DW.reference()
    for mode in ("all_to_all", "p2p"):
        got = main[mode]
        assert got["device"] == ("cuda" if backend == "nccl" else "cpu")
        assert got["exchanges"] > 0  # the exchange ran (every layer, forward and backward)
        assert (got["rows_sent"] > 0) == (ranks > 1)
        assert rel(got["pred"], ref["pred"]) <= FWD_TOL
        assert abs(got["loss"] - ref["loss"]) <= FWD_TOL * abs(ref["loss"])
        for name, grad in got["grads"].items():
            assert rel(grad, ref["grads"][name]) <= GRAD_TOL, (mode, name)
