"""The fused CPU kernels: their sums against a plain loop, every tile shape, and how they are built and found."""

import os

import pytest
import torch

from dsmpnn.nn import native

pytestmark = pytest.mark.numerics

needs_kernels = pytest.mark.skipif(native._compiler() is None, reason="no C++ compiler")


def test_kernels_build_where_there_is_a_compiler():
    """Where a compiler exists the kernels must build: a failure here would silently leave the fast path off."""
    if native._compiler() is None:
        pytest.skip("no C++ compiler")
    assert native.kernels() is not None


def reference(deg, h, q, dst, w, num_nodes, k):
    """out = sum_e w_e h_e Q_src(e), G = w g[dst], dQ = H^T G, dH = G Q^T[:k], by a loop over sources."""
    out = torch.zeros(num_nodes, q.shape[2], dtype=h.dtype)
    g = torch.randn(num_nodes, q.shape[2], dtype=h.dtype, generator=torch.Generator().manual_seed(9))
    gq, gh = torch.zeros_like(q), torch.zeros(h.shape[0], k, dtype=h.dtype)
    e0 = 0
    for j, d in enumerate(deg.tolist()):
        rows = slice(e0, e0 + d)
        ww = w[rows, None] if w is not None else 1
        out.index_add_(0, dst[rows], ww * (h[rows] @ q[j]))
        gm = ww * g[dst[rows]]
        gq[j] = h[rows].T @ gm
        gh[rows] = gm @ q[j, :k].T
        e0 += d
    return out, g, gq, gh


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("k,c", [(1, 1), (7, 3), (8, 8), (13, 11), (16, 16), (33, 17), (64, 32), (20, 40)])
@pytest.mark.parametrize("weighted", [False, True])
def test_kernels_equal_loop(dtype, k, c, weighted):
    """Every tile shape: rows in blocks of 6 and each remainder 1..5, columns in blocks of 2 vectors, 1 vector
    and scalars; sources of out-degree 1 to 14; repeated targets (also inside one tile)."""
    gen = torch.Generator().manual_seed(k * 100 + c)
    n, num_nodes = 23, 17
    deg = torch.randint(1, 15, (n,), generator=gen)
    deg[0] = 13  # 2 tiles of 6 + 1
    e = int(deg.sum())
    k1 = k + 1
    h = torch.randn(e, k1, generator=gen, dtype=dtype)
    h[:, k] = 1  # the bias column
    q = torch.randn(n, k1, c, generator=gen, dtype=dtype)
    dst = torch.randint(0, num_nodes, (e,), generator=gen)
    dst[:4] = 5  # one target four times in the first tile
    w = torch.rand(e, generator=gen, dtype=dtype) if weighted else None
    out_ref, g, gq_ref, gh_ref = reference(deg, h, q, dst, w, num_nodes, k)
    kern = native.kernels()
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}

    out = torch.zeros(num_nodes, c, dtype=dtype)
    kern.forward(deg, h, q, dst, w, out)
    torch.testing.assert_close(out, out_ref, **tol)

    gm, gq, gh = torch.empty(e, c, dtype=dtype), torch.empty(n, k1, c, dtype=dtype), torch.empty(e, k, dtype=dtype)
    qt = q[:, :k].transpose(1, 2).contiguous()
    kern.backward(deg, h, qt, g, dst, w, gm, gq, gh)
    torch.testing.assert_close(gq, gq_ref, **tol)
    torch.testing.assert_close(gh, gh_ref, **tol)
    gq2 = torch.full_like(gq, float("nan"))
    kern.backward(deg, h, None, g, dst, w, gm, gq2, None)  # dQ only: no Q needed
    torch.testing.assert_close(gq2, gq_ref, **tol)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n,cin", [(5, 3), (53, 32), (24, 17)])
def test_node_adjoints_in_blocks(dtype, n, cin):
    """dX[nodes] += dQ W^T and dW += X^T dQ, done per block of 24 sources inside the backward call: several
    blocks and a remainder, existing contents of dX (other rows) and dW kept."""
    gen = torch.Generator().manual_seed(n + cin)
    k, c, num_nodes = 6, 5, 70
    k1 = k + 1
    deg = torch.randint(1, 6, (n,), generator=gen)
    e = int(deg.sum())
    h = torch.randn(e, k1, generator=gen, dtype=dtype)
    q = torch.randn(n, k1, c, generator=gen, dtype=dtype)
    dst = torch.randint(0, num_nodes, (e,), generator=gen)
    nodes = torch.randperm(num_nodes, generator=gen)[:n]
    xs = torch.randn(n, cin, generator=gen, dtype=dtype)
    w = torch.randn(cin, k1 * c, generator=gen, dtype=dtype)
    _, g, gq_ref, _ = reference(deg, h, q, dst, None, num_nodes, k)
    gx0 = torch.randn(num_nodes, cin, generator=gen, dtype=dtype)
    gw0 = torch.randn(cin, k1 * c, generator=gen, dtype=dtype)
    gx, gw = gx0.clone(), gw0.clone()
    gq = torch.empty(n, k1, c, dtype=dtype)
    native.kernels().backward(deg, h, None, g, dst, None, torch.empty(e, c, dtype=dtype), gq, None, nodes, xs,
                              w.T.contiguous(), gx, gw)
    expected_gx = gx0.clone()
    expected_gx[nodes] += gq_ref.reshape(n, -1) @ w.T
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-4}
    torch.testing.assert_close(gq, gq_ref, **tol)
    torch.testing.assert_close(gx, expected_gx, **tol)
    torch.testing.assert_close(gw, gw0 + xs.T @ gq_ref.reshape(n, -1), **tol)
    with pytest.raises(ValueError, match="dX needs gq, nodes, wt and gx"):
        native.kernels().backward(deg, h, None, g, dst, None, torch.empty(e, c, dtype=dtype), gq, None, nodes,
                                  None, w.T.contiguous(), None, None)


@needs_kernels
def test_kernels_refuse_what_they_cannot_read():
    kern = native.kernels()
    deg, dst = torch.tensor([2]), torch.tensor([0, 1])
    h, q, out = torch.randn(2, 3), torch.randn(1, 3, 4), torch.zeros(2, 4)
    with pytest.raises(ValueError, match="contiguous CPU torch.float32"):
        kern.forward(deg, h, q.double(), dst, None, out)
    with pytest.raises(ValueError, match="contiguous"):
        kern.forward(deg, h, q.transpose(1, 2).contiguous().transpose(1, 2), dst, None, out)
    with pytest.raises(ValueError, match="int64 indices"):
        kern.forward(deg, h, q, dst.int(), None, out)
    with pytest.raises(ValueError, match="gh needs qt"):
        kern.backward(deg, h, None, out, dst, None, torch.empty(2, 4), None, torch.empty(2, 2))


@needs_kernels
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
        assert native.kernels_for(torch.device("cpu")) is None
        monkeypatch.setattr(native, "ENABLED", True)
        with pytest.raises(RuntimeError, match="could not be built"):
            native.kernels_for(torch.device("cpu"))
        assert not list((tmp_path / "cache").glob(".build-*"))  # no half-written library left
    finally:
        native.kernels.cache_clear()


def test_switches(monkeypatch):
    native.kernels.cache_clear()
    monkeypatch.setenv("DSMPNN_NATIVE", "0")
    try:
        assert native.kernels() is None
    finally:
        native.kernels.cache_clear()
    monkeypatch.delenv("DSMPNN_NATIVE")
    monkeypatch.setattr(native, "ENABLED", False)
    assert native.kernels_for(torch.device("cpu")) is None
    monkeypatch.setattr(native, "ENABLED", None)
    assert native.kernels_for(torch.device("cpu"), torch.float16) is None
    assert native.kernels_for(torch.device("meta")) is None
    assert os.environ.get("DSMPNN_NATIVE") is None


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
