r"""The per-source products of one chunk as ONE batched matmul over degree-padded sources (the CUDA path).

On CPU the products :math:`M_j = H_j Q_j` run as one ``bmm`` per out-degree present in the chunk
(:mod:`dsmpnn.nn.kernels.bmm`): no wasted work, and a few dozen calls cost nothing next to the arithmetic. On a GPU
the arithmetic of a chunk takes microseconds and those calls (kernel launches) dominate, so there the chunk's
sources are padded to its largest out-degree D and the products are one ``bmm`` of [n, D, K'] x [n, K', C]:

.. math::
    \mathrm{idx}_{a r} = s_a + r \ (r < d_a), \quad e \ (r \ge d_a) ,\qquad
    M = \tilde H_{\mathrm{idx}} Q ,\qquad
    \partial L / \partial Q = \tilde H_{\mathrm{idx}}^\top G_{\mathrm{idx}} ,\quad
    \partial L / \partial H_{\mathrm{idx}} = G_{\mathrm{idx}} Q^\top

where :math:`s_a` is the first (chunk-local) edge of source a and row e of :math:`\tilde H, G` is zero padding.
When ``torch.compile`` and Triton are available these two functions are compiled (dynamic shapes) on CUDA, which
fuses the padding gathers around the matmuls.

UNTESTED ON GPU: this module's arithmetic is tested on CPU (``backend.PADDED = True``) against NNConv and
with gradcheck, but no GPU was available when it was written; the compiled variant and its speed have never
run. A failure of the compiled variant falls back to the eager functions, with a warning.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable

import torch

__all__ = ["padded_index", "padded_messages", "padded_message_grads", "maybe_compiled"]

COMPILE_ON_CUDA = True
"""Compile :func:`padded_messages` and :func:`padded_message_grads` with ``torch.compile`` on CUDA."""


def padded_index(degrees: torch.Tensor, num_edges: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The padded layout of a chunk whose n sources have out-degrees ``degrees [n]`` (their edges consecutive,
    in that order, ``num_edges`` = e in all): idx [n, D], the chunk-local edge at (source, r) or e for padding,
    and pos [e], the flat position a D + r of each edge in the padded [n, D] layout (so idx.view(-1)[pos] is
    the identity)."""
    width = int(degrees.max()) if degrees.numel() else 0
    starts = torch.cumsum(degrees, 0) - degrees  # [n]
    r = torch.arange(width, device=degrees.device)  # [D]
    idx = torch.where(r[None, :] < degrees[:, None], starts[:, None] + r[None, :], num_edges)  # [n, D]
    row = torch.repeat_interleave(torch.arange(degrees.shape[0], device=degrees.device), degrees,
                                  output_size=num_edges)  # [e]
    pos = row * width + torch.arange(num_edges, device=degrees.device) - starts[row]  # [e]
    return idx, pos


def _pad_rows(t: torch.Tensor) -> torch.Tensor:
    return torch.cat([t, t.new_zeros(1, t.shape[1])])  # [e + 1, .], last row zero


def padded_messages(h: torch.Tensor, q: torch.Tensor, idx: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """m [e, C]: row r of H_j Q_j for every edge. h [e, K'], q [n, K', C], idx [n, D], pos [e] from
    :func:`padded_index`."""
    mp = torch.bmm(_pad_rows(h)[idx], q)  # [n, D, K'] x [n, K', C] -> [n, D, C]
    return mp.reshape(-1, q.shape[2])[pos]  # [e, C], padding rows dropped


def padded_message_grads(h: torch.Tensor, q: torch.Tensor, gm: torch.Tensor, idx: torch.Tensor, pos: torch.Tensor,
                         k: int, want_q: bool, want_h: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Adjoint of :func:`padded_messages` for gm = dL/dm [e, C]: gq [n, K', C] and gh [e, k] (the first k rows
    of Q only: k = K' - 1 leaves out the bias row); entries not wanted are None."""
    gp = _pad_rows(gm)[idx]  # [n, D, C], zero on padding
    gq = torch.bmm(_pad_rows(h)[idx].transpose(1, 2), gp) if want_q else None  # [n, K', C]
    gh = torch.bmm(gp, q[:, :k].transpose(1, 2)).reshape(-1, k)[pos] if want_h else None  # [n, D, k] -> [e, k]
    return gq, gh


_COMPILED: dict[str, Callable] = {}


def maybe_compiled(name: str, device: torch.device) -> Callable:
    """:func:`padded_messages` or :func:`padded_message_grads`, compiled on CUDA when possible (see module)."""
    eager = {"messages": padded_messages, "grads": padded_message_grads}[name]
    if device.type != "cuda" or not COMPILE_ON_CUDA or importlib.util.find_spec("triton") is None:
        return eager
    if name not in _COMPILED:
        try:
            compiled = torch.compile(eager, dynamic=True)
        except Exception as err:  # noqa: BLE001 - any failure to compile leaves the eager path
            warnings.warn(f"torch.compile of the padded {name} failed ({err}); using eager PyTorch", stacklevel=2)
            compiled = eager

        def guarded(*args, _compiled=compiled, _name=name):
            try:
                return _compiled(*args)
            except Exception as err:  # noqa: BLE001 - e.g. an inductor/Triton error at the first call
                warnings.warn(f"compiled padded {_name} failed ({err}); using eager PyTorch", stacklevel=2)
                _COMPILED[_name] = eager
                return eager(*args)

        _COMPILED[name] = guarded
    return _COMPILED[name]
