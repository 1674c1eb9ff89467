r"""The fused CPU kernels of the edge aggregation (``ecconv_kernels.cpp``), compiled on first use.

One chunk of the aggregation (:mod:`dsmpnn.nn.aggregate`) as one C++ call (:class:`FusedPass`), forward or backward:

.. math::
    \text{forward:}\quad \mathrm{out}_{\mathrm{dst}(e)} \mathrel{+}= w_e\, \tilde h_e Q_{\mathrm{src}(e)} ,\qquad
    h = \mathrm{mlp}(a) ,\quad Q = x W ;\qquad
    \text{backward:}\quad G_j = w \odot g_{\mathrm{dst}},\;
    \partial Q_j = \tilde H_j^\top G_j ,\; \partial H_j = G_j Q_j^\top ,\;
    \partial x_j = \partial Q_j W^\top ,\; \partial W = \textstyle\sum_j x_j^\top \partial Q_j

and the kernel MLP's backward (h~ [e, K'], Q [n, K', C], g [N, C]). The kernel MLP runs inside the call when it
is Linear layers each followed by ReLU, GELU, SiLU or nothing (:data:`ACTIVATIONS`); otherwise PyTorch evaluates it
per chunk and hands h over. Per block of 16 sources, Q, h and every intermediate are made in small buffers that stay in
L1/L2: no [e, C] messages, no [n, K', C] node kernels in memory, and no Python between the steps of a chunk. The
products run through a register-blocked micro-kernel written with GCC/Clang vector extensions (AVX2 on the
machine this was measured on; ``benchmarks/bench_kernels.py`` gives the rates).

Build: the C++ file ships with the package and is compiled, the first time it is needed, by the system's C++
compiler (``$CXX``, else ``c++``/``g++``/``clang++``) with ``-O3 -march=native`` into a cache directory
(``$DSMPNN_CACHE_DIR``, else ``$XDG_CACHE_HOME/dsmpnn``, else ``~/.cache/dsmpnn``; the temporary directory
when that is not writable), keyed by a hash of the source, the compiler, the flags and the CPU; the library is
written to a temporary name and renamed into place, so concurrent processes (ranks) never load a half-written
file, and a damaged cached file is rebuilt; a file lock makes ranks that start at once share one build. It takes
3-7 s and has no dependency beyond the compiler (no PyTorch headers). When there is no compiler or the build fails,
:func:`kernels` returns None and the aggregation uses its pure-PyTorch path, which computes the same sums; whether
the kernels are used at all (``DSMPNN_NATIVE=0``, the switches, device and dtype) is decided in
:func:`dsmpnn.nn.kernels.backend.choose_backend`.

Load-time check: the library reports its ABI number and the layout of the two structs it reads
(``sizeof(Pass)``, ``offsetof(Pass, glb)``, ``sizeof(Chunk)``, ``offsetof(Chunk, ga)``), which must equal those of
:class:`_Pass` and :class:`_Chunk` here. A library that disagrees (a stale or foreign file under the cache name) is
rebuilt once; if the rebuilt one still disagrees, this module and the C++ source have drifted apart and
:func:`kernels` raises :class:`LayoutMismatch` rather than calling into memory it would misread.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

__all__ = ["NativeKernels", "FusedPass", "Layer", "LayoutMismatch", "ACTIVATIONS", "kernels", "build", "SOURCE",
           "ABI"]

SOURCE = Path(__file__).with_name("ecconv_kernels.cpp")
ABI = 4
"""``dsmpnn_native_abi()`` of a library this module can call; bump it with any change of the C interface."""
_FLAG_SETS = (["-O3", "-march=native"], ["-O3"])  # the second when the compiler does not know -march=native
_COMMON = ["-std=c++17", "-shared", "-fPIC", "-fno-math-errno", "-Wno-psabi"]

_P = ctypes.c_void_p
_I = ctypes.c_int64


ACTIVATIONS = {"identity": 0, "relu": 1, "gelu": 2, "silu": 3}
"""Activations the kernels evaluate themselves after a Linear layer of the kernel MLP (codes as in the C++
``Act``; "gelu" is the exact, erf form); a kernel MLP with any other is evaluated by PyTorch, chunk by chunk, and
its output handed over. GELU and SiLU are accurate to a few ulp over the whole range, tails included (in float32
a vectorised tail polynomial of erfc and exp; in float64 the C library's erfc and exp), where PyTorch's float32
GELU, by 1 + erf(z / sqrt 2), loses its relative accuracy below z = -3 (25 % at z = -5)."""


class _Pass(ctypes.Structure):
    """``Pass`` in ecconv_kernels.cpp: what stays the same for every chunk of one layer call."""

    _fields_ = [("cin", _I), ("k1", _I), ("k", _I), ("c", _I), ("x", _P), ("wq", _P), ("wqt", _P), ("wqk", _P),
                ("nl", _I), ("dims", _P), ("lw", _P), ("lwt", _P), ("lb", _P), ("act", _P), ("g", _P), ("out", _P),
                ("gx", _P), ("gw", _P), ("glw", _P), ("glb", _P)]


class _Chunk(ctypes.Structure):
    """``Chunk`` in ecconv_kernels.cpp: one chunk's sources and edges."""

    _fields_ = [("n", _I), ("e", _I), ("deg", _P), ("nodes", _P), ("dst", _P), ("ew", _P), ("a", _P), ("rows", _P),
                ("ga", _P)]


def _layout() -> tuple[int, int, int, int]:
    """What ``dsmpnn_native_layout`` of a matching library reports: sizeof and offset of the last field of each
    struct."""
    return (ctypes.sizeof(_Pass), _Pass.glb.offset, ctypes.sizeof(_Chunk), _Chunk.ga.offset)


LAYOUT_FIELDS = ("sizeof(Pass)", "offsetof(Pass, glb)", "sizeof(Chunk)", "offsetof(Chunk, ga)")


class LayoutMismatch(RuntimeError):
    """A library whose ABI number or struct layout differs from this module's (:func:`_load`)."""


@dataclass(frozen=True)
class Layer:
    """One Linear layer of the kernel MLP and the activation after it (a key of :data:`ACTIVATIONS`)."""

    weight: torch.Tensor  # [out, in]
    bias: torch.Tensor | None  # [out]
    act: str


class FusedPass:
    r"""One pass (forward or backward) of the aggregation over the chunks of an edge plan, one C++ call per chunk.

    .. math::
        \text{forward:}\quad \mathrm{out}_{\mathrm{dst}(e)} \mathrel{+}= w_e\, \tilde h_e Q_j ,\qquad
        h = \mathrm{mlp}(a) ,\quad Q = x W \text{ (or given)}

    and the backward of all of it for ``g = dL/dout``. Everything per block of at most 16 sources (their Q, their
    edges' h and the kernel MLP's activations) is computed in small buffers that stay in cache.

    Shapes: x [N_src, C_in] (with ``wq`` [C_in, K', C]) or Q itself [N_src, K', C] (``wq`` None); ``layers``:
    the kernel MLP, mapping the edge inputs [E, F] to h [E, K] (empty: h = the edge inputs, F = K); out, g
    [N, C]; gx like x; gw like wq; glw[l] [in, out] (the layer's weight gradient TRANSPOSED) and glb[l] [out], each
    None to skip. ``k``: K, the width of h. The tensors are kept alive by this object."""

    def __init__(self, kern: "NativeKernels", x: torch.Tensor, wq: torch.Tensor | None, k: int,
                 layers: Sequence[Layer] = (), *, out: torch.Tensor | None = None, g: torch.Tensor | None = None,
                 gx: torch.Tensor | None = None, gw: torch.Tensor | None = None,
                 glw: Sequence[torch.Tensor | None] = (), glb: Sequence[torch.Tensor | None] = (),
                 need_dh: bool = False) -> None:
        if (out is None) == (g is None):
            raise ValueError("a pass is either a forward (out) or a backward (g)")
        self.backward = g is not None
        k1, c = (wq.shape[1], wq.shape[2]) if wq is not None else (x.shape[1], x.shape[2])
        cin = x.shape[1] if wq is not None else 0
        if k1 not in (k, k + 1):
            raise ValueError(f"Q has {k1} rows, expected K = {k} or K + 1")
        if wq is not None and wq.shape[0] != x.shape[1]:
            raise ValueError(f"x has {x.shape[1]} columns and W {wq.shape[0]} rows")
        keep: list = []
        wq2 = wqt = wqk = None
        if wq is not None:
            wq2 = wq.reshape(cin, k1 * c).contiguous()  # [C_in, K' C]
            if self.backward and gx is not None:
                wqt = wq2.T.contiguous()  # [K' C, C_in]
            if self.backward and need_dh:
                wqk = wq[:, :k].transpose(1, 2).reshape(cin, c * k).contiguous()  # [C_in, C K]
        weights = [m.weight.detach().contiguous() for m in layers]
        biases = [m.bias.detach().contiguous() if m.bias is not None else None for m in layers]
        dims = [weights[0].shape[1]] + [w.shape[0] for w in weights] if layers else [k]  # edge inputs ... h
        if layers and dims[-1] != k:
            raise ValueError(f"the kernel MLP ends with {dims[-1]} features, expected K = {k}")
        _check(x, wq2, wqt, wqk, out, g, gx, gw, *weights, *biases, *glw, *glb)
        self.dtype, self.width = x.dtype, dims[0]
        lwt = [w.T.contiguous() for w in weights]
        keep += [x, wq2, wqt, wqk, out, g, gx, gw, weights, biases, lwt, list(glw), list(glb)]
        arrays = {
            "dims": (ctypes.c_int64 * max(len(dims), 1))(*dims),
            "lw": (_P * max(len(layers), 1))(*[_ptr(w) for w in weights]),
            "lwt": (_P * max(len(layers), 1))(*[_ptr(w) for w in lwt]),
            "lb": (_P * max(len(layers), 1))(*[_ptr(b) for b in biases]),
            "act": (ctypes.c_int32 * max(len(layers), 1))(*[ACTIVATIONS[m.act] for m in layers]),
            "glw": (_P * max(len(layers), 1))(*[_ptr(t) for t in glw] or [None] * len(layers)),
            "glb": (_P * max(len(layers), 1))(*[_ptr(t) for t in glb] or [None] * len(layers)),
        }
        self._keep = (keep, arrays)
        self._pass = _Pass(cin, k1, k, c, _ptr(x), _ptr(wq2), _ptr(wqt), _ptr(wqk), len(layers),
                           *[ctypes.addressof(arrays[n]) for n in ("dims", "lw", "lwt", "lb", "act")],
                           _ptr(g), _ptr(out), _ptr(gx), _ptr(gw), ctypes.addressof(arrays["glw"]),
                           ctypes.addressof(arrays["glb"]))
        fns = {(False, torch.float32): kern.lib.dsmpnn_forward_f32, (False, torch.float64): kern.lib.dsmpnn_forward_f64,
               (True, torch.float32): kern.lib.dsmpnn_backward_f32, (True, torch.float64): kern.lib.dsmpnn_backward_f64}
        self._fn = fns[(self.backward, x.dtype)]

    def chunk(self, deg: torch.Tensor, nodes: torch.Tensor, dst: torch.Tensor, ew: torch.Tensor | None,
              a: torch.Tensor, rows: torch.Tensor | None, ga: torch.Tensor | None = None) -> None:
        """Run the pass on one chunk: deg/nodes [n] int64 (edges per source, source ids), dst [e] int64, ew [e] or
        None, the edge inputs ``a`` (rows ``rows`` [e] of a [E, F], or a [e, F] in edge order with ``rows``
        None), and, in backward, ``ga`` where dL/da goes (same rows; None to skip). The indices are trusted (they
        come from an :class:`~dsmpnn.nn.kernels.edge_plan.EdgePlan`): the kernels do not check their range."""
        _check_index(deg, nodes, dst, *(() if rows is None else (rows,)))
        _check(a, ew, ga, dtype=self.dtype)
        if a.shape[1] != self.width:
            raise ValueError(f"the edge inputs have {a.shape[1]} columns, expected {self.width}")
        self._fn(ctypes.byref(self._pass), ctypes.byref(_Chunk(
            nodes.shape[0], dst.shape[0], _ptr(deg), _ptr(nodes), _ptr(dst), _ptr(ew), _ptr(a), _ptr(rows),
            _ptr(ga))))


@dataclass(frozen=True)
class NativeKernels:
    """The loaded library (:class:`FusedPass` runs it)."""

    lib: ctypes.CDLL
    path: Path


def _ptr(t: torch.Tensor | None) -> int | None:
    return t.data_ptr() if t is not None else None


def _check(*tensors: torch.Tensor | None, dtype: torch.dtype | None = None) -> None:
    dtype = dtype or tensors[0].dtype
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
        with _build_lock(path):  # P ranks starting at once: one compiles, the others wait and load its library
            if path.exists():
                return path
            error = _compile(cxx, flags, path)
        if error is None:
            return path
        errors.append(error)
    raise RuntimeError(f"compiling {SOURCE} failed ({'; '.join(errors)})")


@contextlib.contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """Holds an exclusive lock on ``path`` + ".lock" (flock: released by the kernel if the holder dies), and
    removes the lock file when done: whoever waited on it, or opens a new one, checks for ``path`` again under
    its lock. Without fcntl (Windows), or where the cache directory cannot hold a lock file, no lock: then
    concurrent processes may each compile, which is slower but still safe, since builds are renamed into place whole."""
    lock = Path(f"{path}.lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666) if fcntl is not None else None
    except OSError:
        fd = None
    if fd is None:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)  # releases the lock


def _compile(cxx: str, flags: list[str], path: Path) -> str | None:
    """Compile SOURCE into ``path`` (through a temporary file renamed into place); None, or the first error line."""
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        run = subprocess.run([cxx, *flags, *_COMMON, "-o", tmp, str(SOURCE)], capture_output=True, text=True,
                             check=False)
        if run.returncode == 0:
            os.replace(tmp, path)
            return None
        lines = run.stderr.strip().splitlines() or ["no output"]
        first_error = next((ln for ln in lines if "error" in ln), lines[-1])
        return f"{cxx} {' '.join(flags)}: {first_error.strip()}"
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load(path: Path) -> NativeKernels:
    """Load the library at ``path`` and check it against this module: raises OSError when it cannot be loaded,
    LayoutMismatch when its ABI number or its structs' layout differ."""
    lib = ctypes.CDLL(str(path))
    try:
        lib.dsmpnn_native_abi.restype = ctypes.c_int
        abi = lib.dsmpnn_native_abi()
    except AttributeError:  # not one of our libraries at all
        raise LayoutMismatch(f"{path} exports no dsmpnn_native_abi: not a dsmpnn kernel library") from None
    if abi != ABI:
        raise LayoutMismatch(f"{path} has ABI {abi}, expected {ABI}")
    got = (ctypes.c_int64 * len(LAYOUT_FIELDS))()
    lib.dsmpnn_native_layout.argtypes = [ctypes.POINTER(ctypes.c_int64)]
    lib.dsmpnn_native_layout.restype = None
    lib.dsmpnn_native_layout(got)
    expected = _layout()
    if tuple(got) != expected:
        diff = ", ".join(f"{name} {g} (Python {e})" for name, g, e in zip(LAYOUT_FIELDS, got, expected) if g != e)
        raise LayoutMismatch(f"{path} lays out its structs differently from {Path(__file__).name}: {diff}")
    for name in ("dsmpnn_forward_f32", "dsmpnn_forward_f64", "dsmpnn_backward_f32", "dsmpnn_backward_f64"):
        getattr(lib, name).argtypes = [ctypes.POINTER(_Pass), ctypes.POINTER(_Chunk)]
        getattr(lib, name).restype = None
    return NativeKernels(lib, path)


@functools.cache
def kernels() -> NativeKernels | None:
    """The compiled kernels, or None when there is no compiler or the build fails (then a UserWarning, once per
    process, which the CLI prints as ``dsmpnn COMMAND: warning: ...``). A cached library that cannot be loaded
    (damaged: a full disk, say) or fails the layout check (stale, foreign) is rebuilt once; raises LayoutMismatch
    when the rebuilt library still disagrees with this module (the C++ source and ``native.py`` have drifted
    apart: a bug, not a missing compiler, so no silent fallback)."""
    try:
        path = build()
        try:
            return _load(path)
        except (OSError, LayoutMismatch):
            path.unlink(missing_ok=True)
            path = build()
        try:
            return _load(path)
        except LayoutMismatch as exc:
            raise LayoutMismatch(f"{exc}; rebuilt from {SOURCE}, so ecconv_kernels.cpp and native.py disagree "
                                 "(set DSMPNN_NATIVE=0 to use the PyTorch path meanwhile)") from None
    except LayoutMismatch:
        raise
    except (RuntimeError, OSError) as exc:
        warnings.warn(f"fused CPU kernels unavailable, using the PyTorch path (same results, slower): {exc}",
                      UserWarning, stacklevel=2)
        return None
