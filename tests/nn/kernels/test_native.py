"""The fused CPU kernels: their sums against a plain loop, every tile shape, and how they are built and found."""

import ctypes
import ctypes.util
import platform
import shutil
from pathlib import Path

import pytest
import torch

from dsmpnn.nn.kernels import native
from tests.helpers.oracles import smooth_activation_truth

pytestmark = pytest.mark.numerics

needs_kernels = pytest.mark.skipif(native._compiler() is None, reason="no C++ compiler")


def test_kernels_build_where_there_is_a_compiler():
    """Where a compiler exists the kernels must build: a failure here would silently leave the fast path off."""
    if native._compiler() is None:
        pytest.skip("no C++ compiler")
    assert native.kernels() is not None


def make_layers(widths, bias, gen, dtype, acts):
    """Kernel MLP layers widths[0] -> ... -> widths[-1] as native.Layer (weights requiring grad)."""
    layers = []
    for i, act in enumerate(acts):
        w = torch.randn(widths[i + 1], widths[i], generator=gen, dtype=dtype).requires_grad_()
        b = torch.randn(widths[i + 1], generator=gen, dtype=dtype).requires_grad_() if bias else None
        layers.append(native.Layer(w, b, act))
    return layers


def reference(x, wq, k, layers, feats, rows, deg, nodes, dst, ew, num_nodes):
    """out[dst_e] += w_e [mlp(a_e), (1)] Q_src(e) by autograd over a loop of plain PyTorch operations."""
    a = feats[rows] if rows is not None else feats
    for layer in layers:
        a = a @ layer.weight.T + (layer.bias if layer.bias is not None else 0)
        a = {"relu": torch.relu, "gelu": torch.nn.functional.gelu, "silu": torch.nn.functional.silu,
             "identity": lambda t: t}[layer.act](a)
    q = (x[nodes] @ wq.reshape(wq.shape[0], -1)).view(len(nodes), -1, wq.shape[2]) if wq is not None else x[nodes]
    h = torch.cat([a, torch.ones(a.shape[0], 1, dtype=a.dtype)], 1) if q.shape[1] == k + 1 else a
    src_slot = torch.repeat_interleave(torch.arange(len(nodes)), deg)
    m = torch.einsum("ek,ekc->ec", h, q[src_slot])
    m = m * ew[:, None] if ew is not None else m
    return torch.zeros(num_nodes, m.shape[1], dtype=m.dtype).index_add(0, dst, m)


CASES = [  # (K, C, C_in, degrees): tile shapes (rows in 6s and 1..5, columns in 2 vectors, 1, scalars), blocks
    (1, 1, 3, "small"), (7, 3, 5, "small"), (8, 8, 8, "small"), (13, 11, 4, "mixed"), (16, 16, 2, "small"),
    (33, 17, 6, "mixed"), (64, 32, 32, "small"), (20, 40, 3, "hub"),
]


def chunk_case(k, c, cin, degrees, dtype, seed):
    """Sources of random out-degree 1..14 ("small"), plus a few of 40-300 ("mixed": blocks cut by edges), or
    one of 1,100 edges, more than a block holds ("hub"); repeated targets, random node ids."""
    gen = torch.Generator().manual_seed(seed)
    n, num_nodes = 41, 60
    deg = torch.randint(1, 15, (n,), generator=gen)
    deg[0] = 13
    if degrees == "mixed":
        deg[5:9] = torch.tensor([40, 300, 120, 280])
    if degrees == "hub":
        deg[3] = 1100
    e = int(deg.sum())
    dst = torch.randint(0, num_nodes, (e,), generator=gen)
    dst[:4] = 5  # one target four times in the first tile
    nodes = torch.randperm(num_nodes, generator=gen)[:n]
    return gen, deg, e, dst, nodes, num_nodes


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("k,c,cin,degrees", CASES)
@pytest.mark.parametrize("variant", ["mlp", "mlp2-nobias-weighted", "mlp2-gelu-silu", "given-h", "q-given",
                                     "h-in-order"])
def test_fused_pass_equals_autograd(dtype, k, c, cin, degrees, variant):
    """Forward and every gradient (x or Q, W, edge inputs, each layer's weight and bias) of one chunk against
    autograd: kernel MLPs of one and two layers (ReLU, identity), none (h given, by rows or in edge order), Q
    computed from x W (with the bias row) or given; the gradient accumulators keep what they held. GELU and SiLU
    are approximated in float32 (erf to 1.5e-7), so that case is held to the float32 tolerance like the rest."""
    gen, deg, e, dst, nodes, num_nodes = chunk_case(k, c, cin, degrees, dtype, k * 100 + c)
    f = 3
    if variant == "mlp":
        layers = make_layers([f, k], True, gen, dtype, ["relu"])
    elif variant == "mlp2-nobias-weighted":
        layers = make_layers([f, 9, k], False, gen, dtype, ["relu", "identity"])
    elif variant == "mlp2-gelu-silu":
        layers = make_layers([f, 9, k], True, gen, dtype, ["gelu", "silu"])
    else:
        layers, f = [], k
    num_edges = e + 7
    feats = torch.randn(num_edges, f, generator=gen, dtype=dtype).requires_grad_()
    rows = torch.randperm(num_edges, generator=gen)[:e] if variant != "h-in-order" else None
    if variant == "h-in-order":
        feats = torch.randn(e, f, generator=gen, dtype=dtype).requires_grad_()
    ew = torch.rand(e, generator=gen, dtype=dtype) if variant == "mlp2-nobias-weighted" else None
    if variant == "q-given":
        x, wq = torch.randn(num_nodes, k, c, generator=gen, dtype=dtype).requires_grad_(), None
    else:
        x = torch.randn(num_nodes, cin, generator=gen, dtype=dtype).requires_grad_()
        wq = torch.randn(cin, k + 1, c, generator=gen, dtype=dtype).requires_grad_()
    out_ref = reference(x, wq, k, layers, feats, rows, deg, nodes, dst, ew, num_nodes)
    g = torch.randn(num_nodes, c, generator=gen, dtype=dtype)
    leaves = [x, feats] + ([wq] if wq is not None else []) + [t for m in layers for t in (m.weight, m.bias)
                                                                  if t is not None]
    grads = dict(zip(map(id, leaves), torch.autograd.grad(out_ref, leaves, g)))
    # float32: sums of up to 1,100 terms, and a reference whose parallel scatter adds in varying order
    tol = {"rtol": 1e-11, "atol": 1e-11} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-3}
    kern = native.kernels()

    out = torch.randn(num_nodes, c, generator=gen, dtype=dtype)
    out0 = out.clone()
    run = native.FusedPass(kern, x.detach(), None if wq is None else wq.detach(), k, layers, out=out)
    run.chunk(deg, nodes, dst, ew, feats.detach(), rows)
    torch.testing.assert_close(out, out0 + out_ref.detach(), **tol)

    def acc(t):  # an accumulator that already holds something
        return torch.randn(t.shape, generator=gen, dtype=dtype)

    gx, gf = acc(x), torch.zeros_like(feats)
    gw = acc(wq.reshape(cin, -1)) if wq is not None else None
    glw = [acc(m.weight.T) for m in layers]
    glb = [acc(m.bias) if m.bias is not None else None for m in layers]
    start = [t.clone() if t is not None else None for t in (gx, gw, *glw, *glb)]
    run = native.FusedPass(kern, x.detach(), None if wq is None else wq.detach(), k, layers, g=g, gx=gx, gw=gw,
                           glw=glw, glb=glb, need_dh=True)
    run.chunk(deg, nodes, dst, ew, feats.detach(), rows, gf)
    torch.testing.assert_close(gx, start[0] + grads[id(x)], **tol)
    torch.testing.assert_close(gf, grads[id(feats)], **tol)
    if wq is not None:
        torch.testing.assert_close(gw, start[1] + grads[id(wq)].reshape(cin, -1), **tol)
    for i, m in enumerate(layers):
        torch.testing.assert_close(glw[i], start[2 + i] + grads[id(m.weight)].T, **tol)
        if m.bias is not None:
            torch.testing.assert_close(glb[i], start[2 + len(layers) + i] + grads[id(m.bias)], **tol)


@needs_kernels
def test_fused_pass_skips_what_is_not_asked():
    """Backward with only dL/dx, then only dL/da: the other outputs are not written."""
    gen, deg, e, dst, nodes, num_nodes = chunk_case(8, 8, 5, "mixed", torch.float64, 3)
    layers = make_layers([3, 8], True, gen, torch.float64, ["relu"])
    x, wq = torch.randn(num_nodes, 5, dtype=torch.float64), torch.randn(5, 9, 8, dtype=torch.float64)
    feats, g = torch.randn(e, 3, dtype=torch.float64), torch.randn(num_nodes, 8, dtype=torch.float64)
    rows = torch.arange(e)
    full_x, full_f = torch.zeros_like(x), torch.zeros_like(feats)
    run = native.FusedPass(native.kernels(), x, wq, 8, layers, g=g, gx=full_x, need_dh=True)
    run.chunk(deg, nodes, dst, None, feats, rows, full_f)
    only_x = torch.zeros_like(x)
    native.FusedPass(native.kernels(), x, wq, 8, layers, g=g, gx=only_x).chunk(deg, nodes, dst, None, feats, rows)
    torch.testing.assert_close(only_x, full_x, rtol=1e-12, atol=1e-12)
    only_f = torch.zeros_like(feats)
    native.FusedPass(native.kernels(), x, wq, 8, layers, g=g, need_dh=True).chunk(deg, nodes, dst, None, feats,
                                                                                   rows, only_f)
    torch.testing.assert_close(only_f, full_f, rtol=1e-12, atol=1e-12)


@needs_kernels
def test_kernels_refuse_what_they_cannot_read():
    kern = native.kernels()
    deg, dst, nodes = torch.tensor([2]), torch.tensor([0, 1]), torch.tensor([0])
    x, wq, out, a = torch.randn(2, 3), torch.randn(3, 4, 5), torch.zeros(2, 5), torch.randn(2, 4)
    with pytest.raises(ValueError, match="contiguous CPU torch.float32"):
        native.FusedPass(kern, x, wq.double(), 4, out=out)
    with pytest.raises(ValueError, match="contiguous CPU torch.float32"):
        native.FusedPass(kern, x, wq, 4, out=out).chunk(deg, nodes, dst, None, a.t().contiguous().t(), None)
    with pytest.raises(ValueError, match="int64 indices"):
        native.FusedPass(kern, x, wq, 4, out=out).chunk(deg, nodes, dst.int(), None, a, None)
    with pytest.raises(ValueError, match=r"Q has 4 rows, expected K = 2 or K \+ 1"):
        native.FusedPass(kern, x, wq, 2, out=out)
    with pytest.raises(ValueError, match=r"x has 3 columns and W 2 rows"):
        native.FusedPass(kern, x, wq[:2], 4, out=out)
    with pytest.raises(ValueError, match=r"edge inputs have 3 columns, expected 4"):
        native.FusedPass(kern, x, wq, 4, out=out).chunk(deg, nodes, dst, None, a[:, :3].contiguous(), None)
    with pytest.raises(ValueError, match="either a forward"):
        native.FusedPass(kern, x, wq, 4)


def test_build_is_cached_and_keyed_on_the_source(tmp_path, monkeypatch):
    first = native.build(tmp_path)
    stamp = first.stat().st_mtime_ns
    assert native.build(tmp_path) == first and first.stat().st_mtime_ns == stamp  # found, not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary left behind
    changed = tmp_path / "changed.cpp"
    changed.write_text(native.SOURCE.read_text() + "\n// another version\n")
    monkeypatch.setattr(native, "SOURCE", changed)
    assert native.build(tmp_path) != first


def test_failed_build_falls_back_with_a_warning(tmp_path, monkeypatch):
    broken = tmp_path / "broken.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(native, "SOURCE", broken)
    monkeypatch.setenv("DSMPNN_CACHE_DIR", str(tmp_path / "cache"))
    native.kernels.cache_clear()
    try:
        if native._compiler() is not None:
            with pytest.raises(RuntimeError, match="broken.cpp failed"):
                native.build()
        with pytest.warns(UserWarning, match="using the PyTorch path") as record:
            assert native.kernels() is None
        assert "\n" not in str(record[0].message)  # one line, as the CLI prints it
        assert not list((tmp_path / "cache").glob(".build-*"))  # no half-written library left
    finally:
        native.kernels.cache_clear()


@needs_kernels
def test_unwritable_cache_falls_back_to_the_temporary_directory(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")  # a cache path below a file cannot be created, not even by root
    monkeypatch.setattr(native.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    path = native.build(blocker / "cache")
    assert path.parent.parent == tmp_path / "tmp" and path.exists()


@needs_kernels
def test_damaged_cached_library_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("DSMPNN_CACHE_DIR", str(tmp_path))
    path = native.build()
    path.write_bytes(b"not a shared library")
    native.kernels.cache_clear()
    try:
        kern = native.kernels()
        assert kern is not None and kern.path == path and path.read_bytes() != b"not a shared library"
    finally:
        native.kernels.cache_clear()


@needs_kernels
def test_library_reports_the_layout_of_the_python_structs():
    """The C++ Pass and Chunk as the library lays them out (sizeof, offset of the last field) equal _Pass/_Chunk."""
    kern = native.kernels()
    got = (ctypes.c_int64 * 4)()
    kern.lib.dsmpnn_native_layout(got)
    assert tuple(got) == native._layout() == (ctypes.sizeof(native._Pass), native._Pass.glb.offset,
                                              ctypes.sizeof(native._Chunk), native._Chunk.ga.offset)
    assert kern.lib.dsmpnn_native_abi() == native.ABI


@needs_kernels
def test_library_whose_structs_differ_is_refused(monkeypatch):
    """A library whose struct sizes are not those native.py fills in (here: native.py made to expect others) is
    never called: loading it raises, naming what differs."""
    path = native.kernels().path
    real = native._layout()
    monkeypatch.setattr(native, "_layout", lambda: (real[0] + 8, real[1], real[2], real[3] - 8))
    with pytest.raises(native.LayoutMismatch, match=rf"sizeof\(Pass\) {real[0]} \(Python {real[0] + 8}\), "
                                                    rf"offsetof\(Chunk, ga\) {real[3]} \(Python {real[3] - 8}\)"):
        native._load(path)
    monkeypatch.setattr(native, "_layout", lambda: real)
    monkeypatch.setattr(native, "ABI", native.ABI + 1)
    with pytest.raises(native.LayoutMismatch, match=rf"has ABI {native.ABI - 1}, expected {native.ABI}"):
        native._load(path)


def test_foreign_library_is_refused():
    libm = ctypes.util.find_library("m")
    if libm is None:
        pytest.skip("no libm to stand in for a foreign library")
    with pytest.raises(native.LayoutMismatch, match="not a dsmpnn kernel library"):
        native._load(Path(libm))


def _fake_builds(tmp_path, monkeypatch, before_each=None) -> list[Path]:
    """native.build replaced by copies of the real library into fresh files (no compiler run); returns the list
    of paths handed out. ``before_each(i)`` runs before the i-th build."""
    real = native.kernels().path
    handed: list[Path] = []

    def fake_build(cache_dir=None):
        if before_each is not None:
            before_each(len(handed))
        path = tmp_path / f"lib{len(handed)}.so"
        shutil.copyfile(real, path)
        handed.append(path)
        return path

    monkeypatch.setattr(native, "build", fake_build)
    return handed


@needs_kernels
def test_stale_library_is_rebuilt_once(tmp_path, monkeypatch):
    """A cached library that fails the layout check (stale, foreign) is deleted and built again; the rebuilt one
    is used."""
    real = native._layout()

    def stale_first(i):  # the first library handed out disagrees, the rebuilt one agrees
        monkeypatch.setattr(native, "_layout", (lambda: (real[0] + 8, *real[1:])) if i == 0 else (lambda: real))

    handed = _fake_builds(tmp_path, monkeypatch, stale_first)
    native.kernels.cache_clear()
    try:
        kern = native.kernels()
        assert kern is not None and kern.path == handed[1] and len(handed) == 2
        assert not handed[0].exists()  # the stale library was removed
    finally:
        native.kernels.cache_clear()


@needs_kernels
def test_library_that_still_differs_after_a_rebuild_raises(tmp_path, monkeypatch):
    """When the freshly built library disagrees too, native.py and the C++ source have drifted apart: kernels()
    raises (no silent fallback), after exactly one rebuild."""
    handed = _fake_builds(tmp_path, monkeypatch)
    real = native._layout()
    monkeypatch.setattr(native, "_layout", lambda: (real[0], real[1], real[2] + 8, real[3]))
    native.kernels.cache_clear()
    try:
        with pytest.raises(native.LayoutMismatch, match=r"sizeof\(Chunk\).*ecconv_kernels.cpp and native.py "
                                                        r"disagree.*DSMPNN_NATIVE=0"):
            native.kernels()
        assert len(handed) == 2
    finally:
        native.kernels.cache_clear()


# The smooth activations of the kernels against a float64 truth (mpmath, 40 digits) of the same inputs. Bounds:
# float64 values within 4e-13 relative: erfc(-z / sqrt 2) gets its argument rounded (relative 1.1e-16), which
# moves the result by t^2 1.1e-16 relative at t = |z|, 1.6e-13 at t = 38 where Phi(z) reaches the double denormals;
# float32 within 1e-6 relative (8 ulp; measured 2.8e-7 for GELU, 2.0e-7 for SiLU where values exceed 1e-30: the
# tail polynomial and exp about 2 ulp each); slopes relative to the scale of their two terms (they cancel near
# the slope's zero, z = -0.75 or -1.28). Near and below the smallest normal number (2.2e-308, 1.2e-38) exp(-t^2/2)
# or e^z are denormal and lose bits: there the bound is absolute, |z| times the denormal spacing, 1e-320 / 1e-43.
SMOOTH_TOL = {torch.float64: (4e-13, 1e-320), torch.float32: (1e-6, 1e-43)}


def _x86_with(flag: str) -> bool:
    try:
        return platform.machine() in ("x86_64", "AMD64") and f" {flag}" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


# Builds of other CPUs that this one can run: what users' machines compile (-march=native here may be AVX-512).
BUILDS = {"native": None, "avx2": ["-O3", "-march=haswell"], "portable": ["-O3"]}


@pytest.fixture(scope="module")
def build_of(tmp_path_factory):
    """Loads the kernels compiled with the flags of ``BUILDS[name]`` (None: the default build), once per module."""
    built: dict[str, native.NativeKernels] = {}

    def get(name: str) -> native.NativeKernels:
        if name not in built:
            if BUILDS[name] is None:
                built[name] = native.kernels()
            else:
                with pytest.MonkeyPatch.context() as mp:
                    mp.setattr(native, "_FLAG_SETS", (BUILDS[name],))
                    built[name] = native._load(native.build(tmp_path_factory.mktemp(name)))
        return built[name]
    return get


@needs_kernels
@pytest.mark.parametrize("build", [b if b != "avx2" or _x86_with("avx2") else
                                   pytest.param(b, marks=pytest.mark.skip("not an x86 CPU with AVX2"))
                                   for b in BUILDS])
@pytest.mark.parametrize("act", ["gelu", "silu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_smooth_activations_over_their_whole_range(act, dtype, build, build_of):
    """The kernels' GELU and SiLU and their slopes from -100 to 100 (the tails where PyTorch's float32 GELU and
    the naive 1 + erf(z / sqrt 2) lose every digit, exp under- and overflow) and densely on [-16, 16], against the
    float64 truth, in the default build and in AVX2 and portable (SSE) builds: one layer with identity weights,
    Q the identity, so out = act(a) and dL/da = g act'(a)."""
    kern = build_of(build)
    a = torch.cat([torch.linspace(-100, 100, 801, dtype=torch.float64), torch.linspace(-16, 16, 3201,
                   dtype=torch.float64), torch.tensor([0.0, 1e-30, -1e-7, 3e-5, -0.7517915, -1.2784645])])
    a = a.to(dtype)  # the truth is of the inputs the kernels see
    value, slope, scale = (torch.from_numpy(v) for v in smooth_activation_truth(act, a.double().numpy()))
    e, k = a.shape[0], 8
    feats = a.repeat_interleave(k).view(e, k)  # every column the same values
    layers = [native.Layer(torch.eye(k, dtype=dtype), torch.zeros(k, dtype=dtype), act)]
    q = torch.eye(k, dtype=dtype).unsqueeze(0)  # one source, Q = I (given): out[dst_e] = h_e
    deg, nodes, dst = torch.tensor([e]), torch.tensor([0]), torch.arange(e)
    out = torch.zeros(e, k, dtype=dtype)
    native.FusedPass(kern, q, None, k, layers, out=out).chunk(deg, nodes, dst, None, feats, None)
    g = torch.ones(e, k, dtype=dtype)
    ga = torch.zeros_like(feats)
    native.FusedPass(kern, q, None, k, layers, g=g, need_dh=True).chunk(deg, nodes, dst, None, feats,
                                                                                   None, ga)
    rtol, atol = SMOOTH_TOL[dtype]
    for name, got, truth, size in (("value", out, value, value.abs()), ("slope", ga, slope, scale)):
        err = (got.double() - truth[:, None]).abs()
        bound = rtol * size[:, None] + atol
        worst = int((err / bound).flatten().argmax()) // k
        assert bool((err <= bound).all()), (f"{act} {name} at a = {float(a[worst])!r}: {float(got[worst, 0])!r}, "
                                            f"truth {float(truth[worst])!r}")


@needs_kernels
def test_portable_build_without_march_native_gives_the_same_sums(build_of):
    """The fallback flags (no -march=native: SSE only on x86) must compile too, and compute the same chunk."""
    portable = build_of("portable")
    gen, deg, e, dst, nodes, num_nodes = chunk_case(13, 11, 4, "mixed", torch.float64, 7)
    layers = make_layers([3, 9, 13], True, gen, torch.float64, ["relu", "gelu"])
    x, wq = torch.randn(num_nodes, 4, dtype=torch.float64), torch.randn(4, 14, 11, dtype=torch.float64)
    feats, g = torch.randn(e, 3, dtype=torch.float64), torch.randn(num_nodes, 11, dtype=torch.float64)
    results = []
    for kern in (native.kernels(), portable):
        out, gx, gf = torch.zeros(num_nodes, 11, dtype=torch.float64), torch.zeros_like(x), torch.zeros_like(feats)
        native.FusedPass(kern, x, wq, 13, layers, out=out).chunk(deg, nodes, dst, None, feats, None)
        native.FusedPass(kern, x, wq, 13, layers, g=g, gx=gx, need_dh=True).chunk(deg, nodes, dst, None, feats, None,
                                                                                  gf)
        results.append((out, gx, gf))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def _build_counting_compiles(cache: str, log: str) -> str:
    """In a fresh process: build into ``cache``, appending a line to ``log`` for each compiler run."""
    import subprocess

    real_run = subprocess.run

    def counting_run(args, *a, **kw):
        if "-shared" in args:
            with open(log, "a") as f:
                f.write("compile\n")
        return real_run(args, *a, **kw)

    native.subprocess.run = counting_run
    return str(native.build(Path(cache)))


@needs_kernels
def test_ranks_building_at_once_share_one_build(tmp_path):
    """Three processes asking for the kernels at the same moment (P ranks starting): one compiles, under the
    build lock, and the others wait for it and load its library."""
    import multiprocessing

    cache, log = tmp_path / "cache", tmp_path / "compiles.log"
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        paths = pool.starmap(_build_counting_compiles, [(str(cache), str(log))] * 3)
    assert len(set(paths)) == 1 and Path(paths[0]).is_file()
    assert log.read_text().splitlines() == ["compile"]
    native._load(Path(paths[0]))
