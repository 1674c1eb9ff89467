r"""The fused CPU kernels of the edge aggregation (``ecconv_kernels.cpp``), compiled on first use.

One chunk of :mod:`dsmpnn.nn.aggregate` as one call, instead of a ``bmm`` per out-degree plus a gather, a
scale and a scatter:

.. math::
    \text{forward:}\quad \mathrm{out}_{\mathrm{dst}(e)} \mathrel{+}= w_e\, \tilde h_e Q_{\mathrm{src}(e)} ,\qquad
    \text{backward:}\quad G_j = w \odot g_{\mathrm{dst}},\;
    \partial Q_j = \tilde H_j^\top G_j ,\; \partial H_j = G_j Q_j^\top

(h~ [e, K'], Q [n, K', C], g [N, C]; the per-edge messages are never written to memory). The products run
through a register-blocked micro-kernel written with GCC/Clang vector extensions (AVX2 on the machine this was
measured on): on the issue-5 reference case's [25, 65] x [65, 32] products its forward, scatter included,
reaches 40-65 GFLOP/s on one core where PyTorch's ``bmm`` alone reaches 28-36 (``benchmarks/bench_kernels.py``).

Build: the C++ file ships with the package and is compiled, the first time it is needed, by the system's C++
compiler (``$CXX``, else ``c++``/``g++``/``clang++``) with ``-O3 -march=native`` into a cache directory
(``$DSMPNN_CACHE_DIR``, else ``$XDG_CACHE_HOME/dsmpnn``, else ``~/.cache/dsmpnn``; the temporary directory
when that is not writable), keyed by a hash of the source, the compiler, the flags and the CPU; the library is
written to a temporary name and renamed into place, so concurrent processes (ranks) never load a half-written
file, and a damaged cached file is rebuilt. It takes 1-2 s and has no dependency beyond the compiler (no
PyTorch headers). When there is no compiler, the build fails, or ``DSMPNN_NATIVE=0`` is set,
:func:`kernels` returns None and the aggregation uses its pure-PyTorch path, which computes the same sums.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["NativeKernels", "kernels", "kernels_for", "build", "SOURCE", "ENABLED"]

ENABLED: bool | None = None
"""Use the fused kernels: None (default) whenever they could be built, False never (the aggregation's ``bmm``
path), True always (:func:`kernels_for` raises when they are unavailable)."""

SOURCE = Path(__file__).with_name("ecconv_kernels.cpp")
ABI = 2
_FLAG_SETS = (["-O3", "-march=native"], ["-O3"])  # the second when the compiler does not know -march=native
_COMMON = ["-std=c++17", "-shared", "-fPIC", "-fno-math-errno"]

_P = ctypes.c_void_p
_I = ctypes.c_int64


@dataclass(frozen=True)
class NativeKernels:
    """The loaded library; its functions take tensors and check what the C++ side assumes."""

    lib: ctypes.CDLL
    path: Path

    def forward(self, deg: torch.Tensor, h: torch.Tensor, q: torch.Tensor, dst: torch.Tensor,
                w: torch.Tensor | None, out: torch.Tensor) -> None:
        r"""``out[dst_e] += w_e h_e Q_j`` for the edges e of each source j, in order: deg [n] int64 (edges per
        source; the sum is e), h [e, K'], q [n, K', C], dst [e] int64, w [e] or None, out [N, C]."""
        _check(h, q, out, w)
        _check_index(deg, dst)
        fn = self.lib.dsmpnn_forward_f32 if h.dtype == torch.float32 else self.lib.dsmpnn_forward_f64
        fn(deg.shape[0], _ptr(deg), h.shape[1], q.shape[2], _ptr(h), _ptr(q), _ptr(dst), _ptr(w), _ptr(out))

    def backward(self, deg: torch.Tensor, h: torch.Tensor, qt: torch.Tensor | None, g: torch.Tensor,
                 dst: torch.Tensor, w: torch.Tensor | None, gm: torch.Tensor, gq: torch.Tensor | None,
                 gh: torch.Tensor | None, nodes: torch.Tensor | None = None, xs: torch.Tensor | None = None,
                 wt: torch.Tensor | None = None, gx: torch.Tensor | None = None,
                 gw: torch.Tensor | None = None) -> None:
        r"""``G_j = w g[dst]`` (into the scratch gm [e, C]), ``gq_j = H_j^T G_j`` and ``gh_j = G_j Q_j^T``:
        deg [n], h [e, K'], qt [n, C, K] (Q transposed, bias row left out; needed for gh), g [N, C],
        dst [e], w [e] or None -> gq [n, K', C], gh [e, K] (each None to skip).

        With Q = x W, also the adjoints of that product, block by block while gq is in cache:
        ``gx[nodes_j] += gq_j W^T`` (wt = W^T [K' C, C_in], gx [N, C_in]) and ``gw += xs^T gq`` (xs [n, C_in] the
        sources' rows of x, gw [C_in, K' C]); each pair None to skip."""
        c = g.shape[1]
        k = gh.shape[1] if gh is not None else 0
        _check(h, g, gm, w, gq, gh, qt, xs, wt, gx, gw)
        _check_index(deg, dst)
        if gh is not None and (qt is None or qt.shape[1:] != (c, k)):
            raise ValueError(f"gh needs qt [n, {c}, {k}], got {None if qt is None else list(qt.shape)}")
        cin = 0
        if wt is not None or gw is not None:
            if gq is None or nodes is None or (wt is None) != (gx is None) or (gw is None) != (xs is None):
                raise ValueError("dX needs gq, nodes, wt and gx; dW needs gq, xs and gw")
            _check_index(nodes)
            cin = gx.shape[1] if gx is not None else gw.shape[0]
        fn = self.lib.dsmpnn_backward_f32 if h.dtype == torch.float32 else self.lib.dsmpnn_backward_f64
        fn(deg.shape[0], _ptr(deg), h.shape[1], k, c, _ptr(h), _ptr(qt), _ptr(g), _ptr(dst), _ptr(w), _ptr(gm),
           _ptr(gq), _ptr(gh), cin, _ptr(xs), _ptr(wt), _ptr(gx), _ptr(nodes), _ptr(gw))


def _ptr(t: torch.Tensor | None) -> int | None:
    return t.data_ptr() if t is not None else None


def _check(*tensors: torch.Tensor | None) -> None:
    dtype = tensors[0].dtype
    for t in tensors:
        if t is not None and (t.dtype != dtype or t.device.type != "cpu" or not t.is_contiguous()):
            raise ValueError(f"native kernels need contiguous CPU {dtype} tensors, got {t.dtype} on {t.device} "
                             f"(contiguous: {t.is_contiguous()})")


def _check_index(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.dtype != torch.int64 or t.device.type != "cpu" or not t.is_contiguous():
            raise ValueError(f"native kernels need contiguous CPU int64 indices, got {t.dtype} on {t.device}")


def _cache_dir() -> Path:
    if os.environ.get("DSMPNN_CACHE_DIR"):
        return Path(os.environ["DSMPNN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dsmpnn"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def _cpu_signature() -> str:
    """What -march=native depends on: the CPU model and its feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        keep = [ln for ln in lines if ln.startswith(("model name", "flags", "Features", "CPU part"))]
        return "\n".join(sorted(set(keep)))
    except OSError:
        return platform.processor() or platform.machine()


def build(cache_dir: Path | None = None) -> Path:
    """Compile the kernels (or find them in the cache) and return the library's path; raises RuntimeError
    saying why when there is no compiler or it fails."""
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX, or install g++/clang++)")
    source = SOURCE.read_bytes()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False).stdout
    cache_dir = cache_dir or _cache_dir()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=cache_dir)  # noqa: SIM115 - only checks that we may write here
        probe.close()
    except OSError:  # a read-only home: build in the temporary directory instead
        cache_dir = Path(tempfile.gettempdir()) / f"dsmpnn-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    errors = []
    for flags in _FLAG_SETS:
        key = hashlib.sha256(b"\0".join([source, version.encode(), " ".join(flags + _COMMON).encode(),
                                         _cpu_signature().encode(), platform.machine().encode()])).hexdigest()[:16]
        path = cache_dir / f"ecconv_kernels-{key}.so"
        if path.exists():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=path.parent)
        os.close(fd)
        try:
            run = subprocess.run([cxx, *flags, *_COMMON, "-o", tmp, str(SOURCE)], capture_output=True, text=True,
                                 check=False)
            if run.returncode == 0:
                os.replace(tmp, path)
                return path
            lines = run.stderr.strip().splitlines() or ["no output"]
            first_error = next((ln for ln in lines if "error" in ln), lines[-1])
            errors.append(f"{cxx} {' '.join(flags)}: {first_error.strip()}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise RuntimeError(f"compiling {SOURCE} failed ({'; '.join(errors)})")


def _load(path: Path) -> NativeKernels:
    lib = ctypes.CDLL(str(path))
    lib.dsmpnn_native_abi.restype = ctypes.c_int
    if lib.dsmpnn_native_abi() != ABI:
        raise RuntimeError(f"{path} has ABI {lib.dsmpnn_native_abi()}, expected {ABI}")
    for name in ("dsmpnn_forward_f32", "dsmpnn_forward_f64"):
        getattr(lib, name).argtypes = [_I, _P, _I, _I, _P, _P, _P, _P, _P]
        getattr(lib, name).restype = None
    for name in ("dsmpnn_backward_f32", "dsmpnn_backward_f64"):
        getattr(lib, name).argtypes = [_I, _P, _I, _I, _I, _P, _P, _P, _P, _P, _P, _P, _P, _I, _P, _P, _P, _P, _P]
        getattr(lib, name).restype = None
    return NativeKernels(lib, path)


def kernels_for(device: torch.device, dtype: torch.dtype | None = None) -> NativeKernels | None:
    """The kernels when computations on ``device`` in ``dtype`` (None: any) should use them (see :data:`ENABLED`),
    else None."""
    if ENABLED is False or device.type != "cpu" or dtype not in (None, torch.float32, torch.float64):
        return None
    found = kernels()
    if found is None and ENABLED:
        raise RuntimeError("native.ENABLED is True but the fused CPU kernels could not be built (see the log)")
    return found


@functools.cache
def kernels() -> NativeKernels | None:
    """The compiled kernels, or None (``DSMPNN_NATIVE=0``, or no compiler or a failed build: then a UserWarning,
    once per process, which the CLI prints as ``dsmpnn COMMAND: warning: ...``)."""
    if os.environ.get("DSMPNN_NATIVE", "1") == "0":
        return None
    try:
        path = build()
        try:
            return _load(path)
        except OSError:  # a damaged library in the cache (a full disk, say): build it again, once
            path.unlink(missing_ok=True)
            return _load(build())
    except (RuntimeError, OSError) as exc:
        warnings.warn(f"fused CPU kernels unavailable, using the PyTorch path (same results, slower): {exc}",
                      UserWarning, stacklevel=2)
        return None
