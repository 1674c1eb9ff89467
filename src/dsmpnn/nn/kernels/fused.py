"""The ``"fused"`` backend: a worker's forward or backward over its chunks, one C++ call per chunk
(:class:`dsmpnn.nn.kernels.native.FusedPass`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dsmpnn.nn.kernels import native
from dsmpnn.nn.kernels.edge_plan import Chunk, EdgePlan
from dsmpnn.nn.kernels.grads import Needs, grad_accumulators
from dsmpnn.nn.kernels.rowwise import RowwiseKernel

__all__ = ["forward_work", "backward_work"]


def forward_work(fused: native.NativeKernels, plan: EdgePlan, kernel: RowwiseKernel | None, x: torch.Tensor,
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
            a, rows = feats, plan.rows(ch)
            if layers is None:  # the kernel MLP by PyTorch
                a, rows = kernel.forward(torch.index_select(feats, 0, rows)), None  # [e, K]
            run.chunk(plan.source_degree[ch.n0:ch.n1], plan.sources[ch.n0:ch.n1], plan.targets(ch),
                      ws[ch.e0:ch.e1] if ws is not None else None, a, rows)
        return out

    return work


def backward_work(fused: native.NativeKernels, plan: EdgePlan, kernel: RowwiseKernel | None, need: Needs,
                  x: torch.Tensor, wb: torch.Tensor | None, feats: torch.Tensor, ws: torch.Tensor | None,
                  params: Sequence[torch.Tensor], g: torch.Tensor, gx: torch.Tensor | None,
                  gf: torch.Tensor | None):
    """A worker's backward over its chunks with the fused kernels (h and Q recomputed per block in C++; the
    adjoints of the kernel MLP and of Q = x W applied there too)."""
    k = feats.shape[1] if kernel is None else kernel.out_features
    layers = kernel.native_layers() if kernel is not None else []

    def work(chunks: Sequence[Chunk]) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
        gwb, gp = grad_accumulators(x, wb, params, need)
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
            rows = plan.rows(ch)
            args = (plan.source_degree[ch.n0:ch.n1], plan.sources[ch.n0:ch.n1], plan.targets(ch),
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

