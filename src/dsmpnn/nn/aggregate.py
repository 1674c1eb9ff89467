r"""The edge-conditioned aggregation at the heart of :class:`dsmpnn.nn.ECConv`.

.. math::
    \mathrm{out}_i = s_i \sum_{e = (j \to i)} w_e \, \tilde h_e^\top Q_j ,\qquad
    \tilde h_e = [h_e, 1] \text{ or } h_e ,\quad
    h \in \mathbb{R}^{E \times K},\; Q \in \mathbb{R}^{N \times K' \times C}

with :math:`K' = K + 1` when Q carries a last "bias" row (multiplied by a constant 1) and :math:`K' = K`
otherwise; :math:`w_e` are per-edge weights and :math:`s_i` per-target weights (``1/deg(i)`` for a mean).

How it is evaluated (:class:`dsmpnn.nn.kernels.edge_plan.EdgePlan`): the edges are grouped by source and cut into
chunks of at most ``chunk`` edges; each :math:`Q_j` is made once, for all edges of source j. The backward pass is
the same loop:

.. math::
    g^M_e = w_e s_i g_i ,\qquad
    \partial L / \partial Q_j = \tilde H_j^\top G^M_j ,\qquad
    \partial L / \partial h_e = Q_j \, g^M_e .

:func:`ecconv_aggregate` fuses the two ends of the convolution into the same loop, so that nothing per edge
except one chunk is ever held, in the forward or the backward pass:

- ``Q_j = x_j W`` (``W`` [C_in, K', C]) is computed per chunk from x and recomputed in backward instead of
  storing the [N, K', C] tensor;
- ``h_e = kernel(a_e)`` (the kernel MLP on edge attributes, Linear layers and pointwise activations,
  :class:`dsmpnn.nn.kernels.rowwise.RowwiseKernel`) is computed per chunk and recomputed in backward, where the
  kernel's own backward on that chunk gives the gradients of its parameters and of the edge attributes.

Two implementations of a chunk compute the same sums:

- **fused** (CPU, by default): one call of the C++ kernels (:class:`dsmpnn.nn.kernels.native.FusedPass`) per chunk does
  all of it, block by block of 16 sources in cache-sized buffers: the gather of x, Q = x W, the kernel MLP (when
  it is Linear layers with ReLU, GELU, SiLU or no activation; otherwise PyTorch evaluates it per chunk and hands
  h over), the products :math:`\tilde H_j Q_j` added row by row into their targets, and in backward every
  adjoint (:math:`Q^\top` recomputed in the layout its product needs). Sources are in locality order, so the
  rows they add into are in cache. Memory: the output (per worker) and one block's buffers; nothing of size E
  is copied.
- **PyTorch** (no compiler, ``native.ENABLED = False``, CUDA): the sources are sorted by out-degree, the messages
  of all sources of out-degree d are one batched product ([n_d, d, K] x [n_d, K, C]) and the [e, C] messages
  are added into their targets by ``index_add_``; memory: one chunk of [e, K], [e, C] and [n, K', C]
  temporaries per worker, and with grad enabled one copy of the kernel's inputs ([E, F]) in sorted order, kept
  for backward.

Work: 2 N C_in K' C (dense) + 2 E K C (batched) multiply-adds forward; backward twice that, plus the recomputation
of Q and h.

Threads: on CPU the chunks are split between ``torch.get_num_threads()`` single-threaded workers
(:mod:`dsmpnn.nn.kernels.chunk_pool`; the fused kernels release the GIL): in forward one part per worker, in backward
:data:`BACKWARD_PARTS_PER_WORKER` parts per worker, taken by whichever worker is free. Devices: the code is
device-generic; on CUDA the per-degree products of a chunk become one padded ``bmm``, compiled when possible
(:mod:`dsmpnn.nn.kernels.padded`, UNTESTED ON GPU).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from dsmpnn.nn.kernels import native
from dsmpnn.nn.kernels.chunk_pool import run_chunks
from dsmpnn.nn.kernels.edge_plan import DEFAULT_EDGE_CHUNK, Chunk, EdgePlan, Group
from dsmpnn.nn.kernels.padded import maybe_compiled
from dsmpnn.nn.kernels.rowwise import RowwiseKernel

__all__ = ["edge_kernel_aggregate", "ecconv_aggregate", "edge_weights", "DEFAULT_EDGE_CHUNK", "PADDED"]

PADDED: bool | None = None
"""Per-chunk products as one degree-padded ``bmm`` (:mod:`dsmpnn.nn.kernels.padded`) instead of one ``bmm`` per
out-degree; None: on CUDA only (where it is also compiled when possible; UNTESTED ON GPU)."""


BACKWARD_PARTS_PER_WORKER = 4
"""Backward splits the chunks into this many parts per worker thread, taken by whichever thread is free (its
partial sums, dL/dW and the kernel's parameter gradients, are small); forward keeps one part per worker, since
each holds a whole [N, C] partial output."""


def _use_padded(device: torch.device) -> bool:
    return PADDED if PADDED is not None else device.type == "cuda"


def _native_kernels(x: torch.Tensor) -> native.NativeKernels | None:
    """The fused CPU kernels (:mod:`dsmpnn.nn.kernels.native`) when this call should use them, else None."""
    return None if _use_padded(x.device) else native.kernels_for(x.device, x.dtype)


def edge_weights(dst: torch.Tensor, num_nodes: int, aggr: str, dtype: torch.dtype) -> torch.Tensor:
    """Per-edge aggregation weights ``w [E]``: ``1 / deg(dst)`` for "mean", ones for "sum"."""
    if aggr == "sum":
        return torch.ones(dst.shape[0], dtype=dtype, device=dst.device)
    deg = torch.zeros(num_nodes, dtype=dtype, device=dst.device).index_add_(
        0, dst, torch.ones(dst.shape[0], dtype=dtype, device=dst.device))
    return deg.clamp(min=1).reciprocal()[dst]


def _messages(h: torch.Tensor, q: torch.Tensor, groups: Sequence[Group], m: torch.Tensor) -> None:
    """m [e, C] <- the rows of H_j Q_j for each source j: h [e, K'] (contiguous), q [n, K', C]."""
    k, c = h.shape[1], q.shape[2]
    for g in groups:
        nb = g.b - g.a
        torch.bmm(h[g.s:g.t].view(nb, g.d, k), q[g.a:g.b], out=m[g.s:g.t].view(nb, g.d, c))


def _message_grads(h: torch.Tensor, q: torch.Tensor, gm: torch.Tensor, groups: Sequence[Group],
                   gq: torch.Tensor | None, gh: torch.Tensor | None) -> None:
    """Adjoint of :func:`_messages` for gm = dL/dm [e, C]: gq [n, K', C] <- H_j^T G_j and gh [e, K] <- G_j Q_j^T
    restricted to the first K rows of Q_j (K = K' - 1 leaves out the bias row, whose h is the constant 1).
    gq and gh must be contiguous: ``bmm`` into a strided output falls back to a loop over the batch."""
    k1, c = h.shape[1], q.shape[2]
    k = gh.shape[1] if gh is not None else k1
    for g in groups:
        nb = g.b - g.a
        gmv = gm[g.s:g.t].view(nb, g.d, c)  # [nb, d, C]
        if gq is not None:
            torch.bmm(h[g.s:g.t].view(nb, g.d, k1).transpose(1, 2), gmv, out=gq[g.a:g.b])
        if gh is not None:
            torch.bmm(gmv, q[g.a:g.b, :k].transpose(1, 2), out=gh[g.s:g.t].view(nb, g.d, k))


class _GroupedAggregate(torch.autograd.Function):
    """out = s * sum_e w_e [kernel(a_e), (1)]^T Q_src(e), Q = x W (or Q = x when W is None), in chunks.
    ``grad``: whether grad mode was on at the call (inside ``forward`` it is always off); without it the PyTorch
    path gathers the kernel's inputs per chunk instead of sorting them once for the backward pass."""

    @staticmethod
    def forward(ctx, plan: EdgePlan, kernel: RowwiseKernel | None, grad: bool, x, wb, feats, edge_weight,
                node_weight, *params):
        c = wb.shape[2] if wb is not None else x.shape[2]
        ws = edge_weight[plan.perm] if edge_weight is not None else None  # [E] in sorted order
        fused = _native_kernels(x)
        fs = None
        if fused is not None:
            work = _fused_forward(fused, plan, kernel, x, wb, feats, ws)
        else:
            # With a backward to come, the kernel's inputs (edge attributes: few columns) are sorted once and
            # kept for it; without (inference), each chunk gathers its own rows, so no [E, F] copy is made.
            keep = kernel is not None and grad and any(ctx.needs_input_grad)
            fs = torch.index_select(feats, 0, plan.perm) if keep else None  # [E, F] or None
            work = _torch_forward(plan, kernel, x, wb, feats, fs, ws)
        parts = run_chunks(work, plan.chunks, x.device) if plan.num_edges else [x.new_zeros(plan.num_nodes, c)]
        out = parts[0]
        for part in parts[1:]:
            out.add_(part)
        if node_weight is not None:
            out.mul_(node_weight[:, None])
        ctx.plan, ctx.kernel = plan, kernel
        ctx.save_for_backward(x, wb, feats, fs, edge_weight, node_weight, *params)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        plan, kernel = ctx.plan, ctx.kernel
        x, wb, feats, fs, edge_weight, node_weight, *params = ctx.saved_tensors
        need = _Needs(*ctx.needs_input_grad[3:6], tuple(ctx.needs_input_grad[8:]))
        # rows of gx and gf belong to one chunk each: workers write them in place, disjointly
        gx = torch.zeros_like(x) if need.x else None
        gf = torch.zeros_like(feats) if need.f else None
        g = g * node_weight[:, None] if node_weight is not None else g.contiguous()
        ws = edge_weight[plan.perm] if edge_weight is not None else None
        fused = _native_kernels(x)
        if fused is not None:
            work = _fused_backward(fused, plan, kernel, need, x, wb, feats, ws, params, g, gx, gf)
        else:
            work = _torch_backward(plan, kernel, need, x, wb, feats, fs, ws, params, g, gx, gf)
        if plan.num_edges and (need.q or need.h):  # small partial sums: several parts per worker, for balance
            parts = run_chunks(work, plan.chunks, x.device, parts_per_worker=BACKWARD_PARTS_PER_WORKER)
        else:
            parts = [work(())]
        gwb, gp = parts[0]
        for gwb_t, gp_t in parts[1:]:
            if gwb is not None:
                gwb.add_(gwb_t)
            for a, b in zip(gp, gp_t):
                if a is not None:
                    a.add_(b)
        gwb = gwb.view(wb.shape) if gwb is not None else None
        gp = [gr.T if gr is not None and gr.dim() == 2 else gr for gr in gp]
        return (None, None, None, gx, gwb, gf, None, None, *gp)


@dataclass(frozen=True)
class _Needs:
    """Which gradients backward computes: of x, wb, feats and of each kernel parameter."""

    x: bool
    wb: bool
    f: bool
    p: tuple[bool, ...]

    @property
    def q(self) -> bool:  # dL/dQ is needed
        return self.x or self.wb

    @property
    def h(self) -> bool:  # dL/dh is needed
        return self.f or any(self.p)


def _grad_accumulators(x: torch.Tensor, wb: torch.Tensor | None, params: Sequence[torch.Tensor],
                       need: _Needs) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
    """One worker's partial sums: dL/dW [C_in, K' C], and the kernel's parameter gradients (Linear weights
    transposed, [in, out], see RowwiseKernel.backward)."""
    gwb = x.new_zeros(wb.shape[0], wb.shape[1] * wb.shape[2]) if need.wb else None
    gp = [(p.new_zeros(p.shape[::-1]) if p.dim() == 2 else torch.zeros_like(p)) if n else None
          for p, n in zip(params, need.p)]
    return gwb, gp


def _fused_forward(fused: native.NativeKernels, plan: EdgePlan, kernel: RowwiseKernel | None, x: torch.Tensor,
                   wb: torch.Tensor | None, feats: torch.Tensor, ws: torch.Tensor | None):
    """A worker's forward over its chunks with the fused kernels: one C++ call per chunk does all of it (the
    kernel MLP too, when :meth:`RowwiseKernel.native_layers` can describe it; else PyTorch evaluates it per chunk
    and hands h over)."""
    k = feats.shape[1] if kernel is None else kernel.out_features
    c = wb.shape[2] if wb is not None else x.shape[2]
    layers = kernel.native_layers() if kernel is not None else []

    def work(chunks: Sequence[Chunk]) -> torch.Tensor:
        out = x.new_zeros(plan.num_nodes, c)  # [N, C] partial sum of this worker
        run = native.FusedPass(fused, x, wb, k, layers or (), out=out)
        for ch in chunks:
            a, rows = feats, plan.perm[ch.e0:ch.e1]
            if layers is None:  # the kernel MLP by PyTorch
                a, rows = kernel.forward(torch.index_select(feats, 0, rows)), None  # [e, K]
            run.chunk(plan.source_degree[ch.n0:ch.n1], plan.sources[ch.n0:ch.n1], plan.dst_sorted[ch.e0:ch.e1],
                      ws[ch.e0:ch.e1] if ws is not None else None, a, rows)
        return out

    return work


def _fused_backward(fused: native.NativeKernels, plan: EdgePlan, kernel: RowwiseKernel | None, need: _Needs,
                    x: torch.Tensor, wb: torch.Tensor | None, feats: torch.Tensor, ws: torch.Tensor | None,
                    params: Sequence[torch.Tensor], g: torch.Tensor, gx: torch.Tensor | None,
                    gf: torch.Tensor | None):
    """A worker's backward over its chunks with the fused kernels (h and Q recomputed per block in C++; the
    adjoints of the kernel MLP and of Q = x W applied there too)."""
    k = feats.shape[1] if kernel is None else kernel.out_features
    layers = kernel.native_layers() if kernel is not None else []

    def work(chunks: Sequence[Chunk]) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
        gwb, gp = _grad_accumulators(x, wb, params, need)
        if not chunks:
            return gwb, gp
        glw, glb, i = [], [], 0
        for layer in layers or ():  # parameters() order: each Linear's weight, then its bias
            glw.append(gp[i])
            glb.append(gp[i + 1] if layer.bias is not None else None)
            i += 1 + (layer.bias is not None)
        run = native.FusedPass(fused, x, wb, k, layers or (), g=g, gx=gx, gw=gwb, glw=glw, glb=glb,
                               need_dh=need.h)
        gh_buf = x.new_empty(plan.max_chunk_edges, k) if layers is None and need.h else None
        for ch in chunks:
            rows = plan.perm[ch.e0:ch.e1]
            args = (plan.source_degree[ch.n0:ch.n1], plan.sources[ch.n0:ch.n1], plan.dst_sorted[ch.e0:ch.e1],
                    ws[ch.e0:ch.e1] if ws is not None else None)
            if layers is not None:
                run.chunk(*args, feats, rows, gf)
                continue
            tape: list | None = [] if need.h else None  # the kernel MLP by PyTorch: recomputed, then its backward
            h = kernel.forward(torch.index_select(feats, 0, rows), tape)  # [e, K]
            gh = gh_buf[:ch.e1 - ch.e0] if need.h else None
            run.chunk(*args, h, None, gh)
            if need.h:
                ga = kernel.backward(tape, gh, gp, need.f)  # dL/da [e, F] or None
                if need.f:
                    gf.index_copy_(0, rows, ga)
        return gwb, gp

    return work


def _torch_forward(plan: EdgePlan, kernel: RowwiseKernel | None, x: torch.Tensor, wb: torch.Tensor | None,
                   feats: torch.Tensor, fs: torch.Tensor | None, ws: torch.Tensor | None):
    """A worker's forward over its chunks with PyTorch operations (one ``bmm`` per out-degree, or the padded
    product on CUDA)."""
    k1, c = (wb.shape[1], wb.shape[2]) if wb is not None else (x.shape[1], x.shape[2])
    k = feats.shape[1] if kernel is None else kernel.out_features
    padded = maybe_compiled("messages", x.device) if _use_padded(x.device) else None

    def work(chunks: Sequence[Chunk]) -> torch.Tensor:
        out = x.new_zeros(plan.num_nodes, c)  # [N, C] partial sum of this worker
        q_buf = x.new_empty(plan.max_chunk_nodes, k1 * c)
        h_buf = _feature_buffer(x, plan.max_chunk_edges, k, k1)
        m_buf = x.new_empty(plan.max_chunk_edges, c) if padded is None else None
        f_buf = feats.new_empty(plan.max_chunk_edges, feats.shape[1]) if kernel is not None and fs is None \
            else None
        for ch in chunks:
            e = ch.e1 - ch.e0
            q = _node_kernels(x, wb, plan.sources[ch.n0:ch.n1], q_buf)  # [n, K', C]
            h = _edge_features(kernel, feats, fs, plan.perm, ch, h_buf[:e], k, None, f_buf)  # [e, K']
            if padded is not None:
                m = padded(h, q, *plan.padded(ch))  # [e, C]
            else:
                m = m_buf[:e]  # [e, C]
                _messages(h, q, plan.groups(ch), m)
            if ws is not None:
                m.mul_(ws[ch.e0:ch.e1, None])
            out.index_add_(0, plan.dst_sorted[ch.e0:ch.e1], m)
        return out

    return work


def _torch_backward(plan: EdgePlan, kernel: RowwiseKernel | None, need: _Needs, x: torch.Tensor,
                    wb: torch.Tensor | None, feats: torch.Tensor, fs: torch.Tensor | None, ws: torch.Tensor | None,
                    params: Sequence[torch.Tensor], g: torch.Tensor, gx: torch.Tensor | None,
                    gf: torch.Tensor | None):
    """A worker's backward over its chunks with PyTorch operations."""
    k1, c = (wb.shape[1], wb.shape[2]) if wb is not None else (x.shape[1], x.shape[2])
    k = feats.shape[1] if kernel is None else kernel.out_features
    wb2 = wb.reshape(wb.shape[0], k1 * c) if wb is not None else None  # [C_in, K' C]
    padded = maybe_compiled("grads", x.device) if _use_padded(x.device) else None

    def work(chunks: Sequence[Chunk]) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
        gwb, gp = _grad_accumulators(x, wb, params, need)
        if not chunks:
            return gwb, gp
        q_buf = x.new_empty(plan.max_chunk_nodes, k1 * c)
        h_buf = _feature_buffer(x, plan.max_chunk_edges, k, k1)
        gm_buf = x.new_empty(plan.max_chunk_edges, c)
        gq_buf = x.new_empty(plan.max_chunk_nodes, k1 * c) if need.q and padded is None else None
        gh_buf = x.new_empty(plan.max_chunk_edges, k) if need.h and padded is None else None
        for ch in chunks:
            n, e = ch.n1 - ch.n0, ch.e1 - ch.e0
            nodes, rows = plan.sources[ch.n0:ch.n1], plan.perm[ch.e0:ch.e1]
            tape: list | None = [] if need.h else None
            h = _edge_features(kernel, feats, fs, plan.perm, ch, h_buf[:e], k, tape)  # [e, K'], recomputed
            q = _node_kernels(x, wb, nodes, q_buf)  # [n, K', C], recomputed
            gm = torch.index_select(g, 0, plan.dst_sorted[ch.e0:ch.e1], out=gm_buf[:e])  # [e, C]
            if ws is not None:
                gm.mul_(ws[ch.e0:ch.e1, None])
            if padded is not None:
                gq, gh = padded(h, q, gm, *plan.padded(ch), k, need.q, need.h)
            else:
                gq = gq_buf[:n].view(n, k1, c) if need.q else None  # [n, K', C]
                gh = gh_buf[:e] if need.h else None  # [e, K]
                _message_grads(h, q, gm, plan.groups(ch), gq, gh)
            if need.q and wb is None:  # Q given: its gradient is the result
                gx.index_copy_(0, nodes, gq)
            elif need.q:
                gq2 = gq.reshape(n, k1 * c)  # [n, K' C]
                if need.x:
                    gx.index_copy_(0, nodes, gq2 @ wb2.T)  # [n, C_in]
                if need.wb:
                    gwb.addmm_(torch.index_select(x, 0, nodes).T, gq2)  # [C_in, K' C]
            if kernel is not None and need.h:
                gh = kernel.backward(tape, gh, gp, need.f)  # overwrites gh; dL/da [e, F] or None
            if need.f:
                gf.index_copy_(0, rows, gh)
        return gwb, gp

    return work


def _feature_buffer(x: torch.Tensor, rows: int, k: int, k1: int) -> torch.Tensor:
    """[rows, K'] buffer for the chunk's h; when K' = K + 1 its last column is the constant 1 of h~ = [h, 1]."""
    buf = x.new_empty(rows, k1)
    if k1 == k + 1:
        buf[:, k] = 1
    return buf


def _edge_features(kernel: RowwiseKernel | None, feats: torch.Tensor, fs: torch.Tensor | None, perm: torch.Tensor,
                   ch: Chunk, h_buf: torch.Tensor, k: int, tape: list | None,
                   f_buf: torch.Tensor | None = None) -> torch.Tensor:
    """h~ of the chunk's edges in h_buf [e, K'] (first K columns): kernel(fs[chunk]) with fs the kernel's inputs
    in sorted order (or, when fs is None, kernel(feats[perm[chunk]]) gathered into f_buf), or feats[perm[chunk]]
    when there is no kernel."""
    if kernel is not None:
        if fs is None:
            a = torch.index_select(feats, 0, perm[ch.e0:ch.e1], out=f_buf[:ch.e1 - ch.e0])  # [e, F]
        else:
            a = fs[ch.e0:ch.e1]
        kernel.forward(a, tape, out=h_buf[:, :k])
    elif h_buf.device.type == "cpu":
        torch.index_select(feats, 0, perm[ch.e0:ch.e1], out=h_buf[:, :k])  # strided out: fine on CPU
    else:
        h_buf[:, :k] = torch.index_select(feats, 0, perm[ch.e0:ch.e1])
    return h_buf


def _node_kernels(x: torch.Tensor, wb: torch.Tensor | None, nodes: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
    """Q_j for the chunk's sources: x[nodes] @ W -> [n, K', C] (or x[nodes] itself when W is None)."""
    n = nodes.shape[0]
    if wb is None:
        return torch.index_select(x.reshape(x.shape[0], -1), 0, nodes, out=buf[:n]).view(n, *x.shape[1:])
    q = torch.mm(torch.index_select(x, 0, nodes), wb.reshape(wb.shape[0], -1), out=buf[:n])  # [n, K' C]
    return q.view(n, wb.shape[1], wb.shape[2])


def ecconv_aggregate(x: torch.Tensor, wb: torch.Tensor, feats: torch.Tensor, plan: EdgePlan,
                     kernel: RowwiseKernel | None = None, node_weight: torch.Tensor | None = None) -> torch.Tensor:
    r"""Fused edge-conditioned aggregation :math:`\mathrm{out}_i = s_i \sum_{e=(j \to i)} \tilde h_e^\top (x_j W)`.

    ``h = kernel(feats)`` chunk by chunk (``feats`` itself when ``kernel`` is None), :math:`\tilde h = [h, 1]`
    when W has K + 1 rows, ``s = node_weight`` (or 1). Differentiable in x, wb, feats, node_weight excepted, and
    the kernel's parameters (recomputed per chunk in backward); not twice differentiable.

    Shapes:
        x [N_src, C_in], wb [C_in, K', C], feats [E, F] (edge order of the plan's edge_index),
        node_weight [N] or None -> out [N, C]
    """
    k = kernel.out_features if kernel is not None else feats.shape[1]
    if wb.dim() != 3 or wb.shape[0] != x.shape[1] or wb.shape[1] not in (k, k + 1):
        raise ValueError(f"wb has shape {list(wb.shape)}, expected [C_in={x.shape[1]}, K' in ({k}, {k + 1}), C]")
    if feats.shape[0] != plan.num_edges or x.shape[0] != plan.num_src:
        raise ValueError(f"x has {x.shape[0]} rows and feats {feats.shape[0]}; the plan has {plan.num_src} "
                         f"sources and {plan.num_edges} edges")
    params = kernel.parameters() if kernel is not None else ()
    node_weight = node_weight.detach() if node_weight is not None else None
    return _GroupedAggregate.apply(plan, kernel, torch.is_grad_enabled(), x, wb, feats, None, node_weight, *params)


def edge_kernel_aggregate(h: torch.Tensor, q: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
                          w: torch.Tensor | None, num_nodes: int, chunk: int = DEFAULT_EDGE_CHUNK) -> torch.Tensor:
    r""":math:`\mathrm{out}_i = \sum_{e=(j \to i)} w_e h_e^\top Q_j` (Q given; differentiable in h and q, not w).

    Shapes: h [E, K], q [N_src, K, C], src/dst [E] int64, w [E] or None -> out [num_nodes, C].
    """
    if h.shape[0] != src.shape[0] or q.dim() != 3 or h.shape[1] != q.shape[1]:
        raise ValueError(f"h {list(h.shape)} and q {list(q.shape)} do not match: expected [E, K] and [N, K, C]")
    plan = EdgePlan.build(torch.stack([src, dst]), num_nodes, q.shape[0], chunk)
    w = w.detach() if w is not None else None
    return _GroupedAggregate.apply(plan, None, torch.is_grad_enabled(), q, None, h, w, None)
