r"""The edge aggregation over the chunks of an edge plan, as one autograd function, on the chosen backend.

.. math::
    \mathrm{out}_i = s_i \sum_{e = (j \to i)} w_e \, \tilde h_e^\top Q_j ,\qquad
    \tilde h_e = [\mathrm{kernel}(a_e), 1] \text{ or } \mathrm{kernel}(a_e),\qquad Q_j = x_j W \text{ (or given)}

(the maths, and the entry points the layers call: :mod:`dsmpnn.nn.aggregate`). The edges are grouped by source
and cut into chunks (:class:`dsmpnn.nn.kernels.edge_plan.EdgePlan`); each :math:`Q_j` is made once, for all edges of
source j, and Q and h are made per chunk, in forward and again in backward, so nothing per edge except one chunk
is ever held:

- ``Q_j = x_j W`` (``W`` [C_in, K', C]) is computed per chunk from x and recomputed in backward instead of
  storing the [N, K', C] tensor;
- ``h_e = kernel(a_e)`` (the kernel MLP on edge attributes, Linear layers and pointwise activations,
  :class:`dsmpnn.nn.kernels.rowwise.RowwiseKernel`) is computed per chunk and recomputed in backward, where the
  kernel's own backward on that chunk gives the gradients of its parameters and of the edge attributes.

The backward pass is the same loop:

.. math::
    g^M_e = w_e s_i g_i ,\qquad
    \partial L / \partial Q_j = \tilde H_j^\top G^M_j ,\qquad
    \partial L / \partial h_e = Q_j \, g^M_e .

A chunk runs on the backend :func:`dsmpnn.nn.kernels.backend.choose_backend` picks for the call (the backward pass
on the one its forward pass used):

- ``"fused"`` (CPU, by default; :mod:`dsmpnn.nn.kernels.fused`): one call of the C++ kernels per chunk does all
  of it, block by block of 16 sources in cache-sized buffers: the gather of x, Q = x W, the kernel MLP (when it is
  Linear layers with ReLU, GELU, SiLU or no activation; otherwise PyTorch evaluates it per chunk and hands h
  over), the products :math:`\tilde H_j Q_j` added row by row into their targets, and in backward every adjoint.
  Sources are in locality order, so the rows they add into are in cache. Memory: the output (per worker) and one
  block's buffers; nothing of size E is copied.
- ``"bmm"`` and ``"padded"`` (no compiler, switched off, CUDA; :mod:`dsmpnn.nn.kernels.bmm`): PyTorch batched
  products per out-degree or over degree-padded sources, the [e, C] messages added into their targets by
  ``index_add_``; with grad enabled one copy of the kernel's inputs ([E, F]) in sorted order is kept for backward.

Work: 2 N C_in K' C (dense) + 2 E K C (batched) multiply-adds forward; backward twice that, plus the recomputation
of Q and h.

Threads: on CPU the chunks are split between ``torch.get_num_threads()`` single-threaded workers
(:mod:`dsmpnn.nn.kernels.chunk_pool`; the fused kernels release the GIL): in forward one part per worker, in
backward :data:`BACKWARD_PARTS_PER_WORKER` parts per worker, taken by whichever worker is free.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from dsmpnn.nn.kernels import bmm, fused, native
from dsmpnn.nn.kernels.backend import choose_backend
from dsmpnn.nn.kernels.chunk_pool import run_chunks
from dsmpnn.nn.kernels.edge_plan import EdgePlan
from dsmpnn.nn.kernels.grads import Needs
from dsmpnn.nn.kernels.rowwise import RowwiseKernel

__all__ = ["grouped_aggregate", "BACKWARD_PARTS_PER_WORKER"]

BACKWARD_PARTS_PER_WORKER = 4
"""Backward splits the chunks into this many parts per worker thread, taken by whichever thread is free (its
partial sums, dL/dW and the kernel's parameter gradients, are small); forward keeps one part per worker, since
each holds a whole [N, C] partial output."""


class _GroupedAggregate(torch.autograd.Function):
    """out = s * (base + sum_e w_e [kernel(a_e), (1)]^T Q_src(e)), Q = x W (or Q = x when W is None), in chunks.
    ``grad``: whether grad mode was on at the call (inside ``forward`` it is always off); without it the PyTorch
    path gathers the kernel's inputs per chunk instead of sorting them once for the backward pass."""

    @staticmethod
    def forward(ctx, plan: EdgePlan, kernel: RowwiseKernel | None, grad: bool, x, wb, feats, edge_weight,
                node_weight, base, *params):
        c = wb.shape[2] if wb is not None else x.shape[2]
        ws = edge_weight.index_select(0, plan.perm) if edge_weight is not None else None  # [E] in sorted order
        backend = choose_backend(x.device, x.dtype)
        fs = None
        if backend == "fused":
            work = fused.forward_work(native.kernels(), plan, kernel, x, wb, feats, ws)
        else:
            # With a backward to come, the kernel's inputs (edge attributes: few columns) are sorted once and
            # kept for it; without (inference), each chunk gathers its own rows, so no [E, F] copy is made.
            keep = kernel is not None and grad and any(ctx.needs_input_grad)
            fs = torch.index_select(feats, 0, plan.perm) if keep else None  # [E, F] or None
            work = bmm.forward_work(plan, kernel, x, wb, feats, fs, ws, padded=backend == "padded")
        parts = run_chunks(work, plan.chunks, x.device) if plan.num_edges else [x.new_zeros(plan.num_nodes, c)]
        out = parts[0]
        for part in parts[1:]:
            out.add_(part)
        if base is not None:
            out.add_(base)
        if node_weight is not None:
            out.mul_(node_weight[:, None])
        ctx.plan, ctx.kernel, ctx.backend = plan, kernel, backend  # backward runs where forward ran
        ctx.save_for_backward(x, wb, feats, fs, edge_weight, node_weight, *params)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        plan, kernel, backend = ctx.plan, ctx.kernel, ctx.backend
        x, wb, feats, fs, edge_weight, node_weight, *params = ctx.saved_tensors
        need = Needs(*ctx.needs_input_grad[3:6], tuple(ctx.needs_input_grad[9:]))
        # rows of gx and gf belong to one chunk each: workers write them in place, disjointly
        gx = torch.zeros_like(x) if need.x else None
        gf = torch.zeros_like(feats) if need.f else None
        g = g * node_weight[:, None] if node_weight is not None else g.contiguous()
        ws = edge_weight.index_select(0, plan.perm) if edge_weight is not None else None
        if backend == "fused":
            work = fused.backward_work(native.kernels(), plan, kernel, need, x, wb, feats, ws, params, g, gx, gf)
        else:
            work = bmm.backward_work(plan, kernel, need, x, wb, feats, fs, ws, params, g, gx, gf,
                                     padded=backend == "padded")
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
        gbase = g if ctx.needs_input_grad[8] else None  # d out / d base = s
        return (None, None, None, gx, gwb, gf, None, None, gbase, *gp)



def grouped_aggregate(plan: EdgePlan, kernel: RowwiseKernel | None, x: torch.Tensor, wb: torch.Tensor | None,
                      feats: torch.Tensor, edge_weight: torch.Tensor | None = None,
                      node_weight: torch.Tensor | None = None, base: torch.Tensor | None = None) -> torch.Tensor:
    """out [N, C] = node_weight * (base + the sum over the plan's edges of edge_weight [kernel(feats), (1)]^T Q_src),
    with Q = x wb ([N_src, C_in] x [C_in, K', C]) or Q = x ([N_src, K', C]) when ``wb`` is None; differentiable in
    x, wb, feats, base [N, C] (a partial sum to add to, e.g. the other edges' of a split graph) and the kernel's
    parameters (not in the weights, which are taken as constants). Shapes are the caller's to check
    (:mod:`dsmpnn.nn.aggregate`)."""
    params = kernel.parameters() if kernel is not None else ()
    return _GroupedAggregate.apply(plan, kernel, torch.is_grad_enabled(), x, wb, feats, edge_weight, node_weight,
                                   base, *params)
