r"""The PyTorch backends, ``"bmm"`` and ``"padded"``: a worker's forward or backward over its chunks.

Per chunk: Q of its sources (``x[nodes] @ W``), h~ of its edges (the kernel MLP, or the edge inputs), the
per-source products :math:`M_j = \tilde H_j Q_j` and the messages added into their targets by ``index_add_``.
``"bmm"``: the sources of a chunk sorted by out-degree, one ``bmm`` per out-degree d ([n_d, d, K'] x
[n_d, K', C]) on views, no padding (:meth:`EdgePlan.groups`). ``"padded"``: one ``bmm`` per chunk over sources
padded to its largest out-degree (:mod:`dsmpnn.nn.kernels.padded`), compiled on CUDA when possible.
Memory: one chunk of [e, K'], [e, C] and [n, K', C] temporaries per worker.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dsmpnn.nn.kernels.edge_plan import Chunk, EdgePlan, Group
from dsmpnn.nn.kernels.grads import Needs, grad_accumulators
from dsmpnn.nn.kernels.padded import maybe_compiled
from dsmpnn.nn.kernels.rowwise import RowwiseKernel

__all__ = ["forward_work", "backward_work"]


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



def forward_work(plan: EdgePlan, kernel: RowwiseKernel | None, x: torch.Tensor, wb: torch.Tensor | None,
                 feats: torch.Tensor, fs: torch.Tensor | None, ws: torch.Tensor | None, padded: bool):
    """A worker's forward over its chunks with PyTorch operations (one ``bmm`` per out-degree, or the padded
    product on CUDA)."""
    k1, c = (wb.shape[1], wb.shape[2]) if wb is not None else (x.shape[1], x.shape[2])
    k = feats.shape[1] if kernel is None else kernel.out_features
    padded = maybe_compiled("messages", x.device) if padded else None

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
            h = _edge_features(kernel, feats, fs, plan.rows(ch), ch, h_buf[:e], k, None, f_buf)  # [e, K']
            if padded is not None:
                m = padded(h, q, *plan.padded(ch))  # [e, C]
            else:
                m = m_buf[:e]  # [e, C]
                _messages(h, q, plan.groups(ch), m)
            if ws is not None:
                m.mul_(ws[ch.e0:ch.e1, None])
            out.index_add_(0, plan.targets(ch), m)
        return out

    return work


def backward_work(plan: EdgePlan, kernel: RowwiseKernel | None, need: Needs, x: torch.Tensor,
                  wb: torch.Tensor | None, feats: torch.Tensor, fs: torch.Tensor | None, ws: torch.Tensor | None,
                  params: Sequence[torch.Tensor], g: torch.Tensor, gx: torch.Tensor | None,
                  gf: torch.Tensor | None, padded: bool):
    """A worker's backward over its chunks with PyTorch operations."""
    k1, c = (wb.shape[1], wb.shape[2]) if wb is not None else (x.shape[1], x.shape[2])
    k = feats.shape[1] if kernel is None else kernel.out_features
    wb2 = wb.reshape(wb.shape[0], k1 * c) if wb is not None else None  # [C_in, K' C]
    padded = maybe_compiled("grads", x.device) if padded else None

    def work(chunks: Sequence[Chunk]) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
        gwb, gp = grad_accumulators(x, wb, params, need)
        if not chunks:
            return gwb, gp
        q_buf = x.new_empty(plan.max_chunk_nodes, k1 * c)
        h_buf = _feature_buffer(x, plan.max_chunk_edges, k, k1)
        gm_buf = x.new_empty(plan.max_chunk_edges, c)
        gq_buf = x.new_empty(plan.max_chunk_nodes, k1 * c) if need.q and padded is None else None
        gh_buf = x.new_empty(plan.max_chunk_edges, k) if need.h and padded is None else None
        for ch in chunks:
            n, e = ch.n1 - ch.n0, ch.e1 - ch.e0
            nodes, rows = plan.sources[ch.n0:ch.n1], plan.rows(ch)
            tape: list | None = [] if need.h else None
            h = _edge_features(kernel, feats, fs, rows, ch, h_buf[:e], k, tape)  # [e, K'], recomputed
            q = _node_kernels(x, wb, nodes, q_buf)  # [n, K', C], recomputed
            gm = torch.index_select(g, 0, plan.targets(ch), out=gm_buf[:e])  # [e, C]
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


def _edge_features(kernel: RowwiseKernel | None, feats: torch.Tensor, fs: torch.Tensor | None, rows: torch.Tensor,
                   ch: Chunk, h_buf: torch.Tensor, k: int, tape: list | None,
                   f_buf: torch.Tensor | None = None) -> torch.Tensor:
    """h~ of the chunk's edges in h_buf [e, K'] (first K columns): kernel(fs[chunk]) with fs the kernel's inputs
    in sorted order (or, when fs is None, kernel(feats[rows]) gathered into f_buf), or feats[rows] when there is no
    kernel; ``rows [e]``: the chunk's original edge ids (:meth:`EdgePlan.rows`)."""
    if kernel is not None:
        if fs is None:
            a = torch.index_select(feats, 0, rows, out=f_buf[:ch.e1 - ch.e0])  # [e, F]
        else:
            a = fs[ch.e0:ch.e1]
        kernel.forward(a, tape, out=h_buf[:, :k])
    elif h_buf.device.type == "cpu":
        torch.index_select(feats, 0, rows, out=h_buf[:, :k])  # strided out: fine on CPU
    else:
        h_buf[:, :k] = torch.index_select(feats, 0, rows)
    return h_buf


def _node_kernels(x: torch.Tensor, wb: torch.Tensor | None, nodes: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
    """Q_j for the chunk's sources: x[nodes] @ W -> [n, K', C] (or x[nodes] itself when W is None)."""
    n = nodes.shape[0]
    if wb is None:
        return torch.index_select(x.reshape(x.shape[0], -1), 0, nodes, out=buf[:n]).view(n, *x.shape[1:])
    q = torch.mm(torch.index_select(x, 0, nodes), wb.reshape(wb.shape[0], -1), out=buf[:n])  # [n, K' C]
    return q.view(n, wb.shape[1], wb.shape[2])

