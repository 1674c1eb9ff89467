r"""Edge-conditioned convolution (NNConv, Gilmer et al. 2017), evaluated in factorised form."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from dsmpnn.nn.aggregate import ecconv_aggregate
from dsmpnn.nn.kernels.edge_plan import DEFAULT_EDGE_CHUNK, EdgePlan, EdgeSplit, cached_edge_plan
from dsmpnn.nn.kernels.rowwise import RowwiseKernel
from dsmpnn.nn.mlp import MLP

__all__ = ["ECConv"]


class ECConv(nn.Module):
    r"""Edge-conditioned convolution, equal to ``torch_geometric.nn.NNConv`` to round-off.

    .. math::
        x'_i = W_r x_i + b + \operatorname{aggr}_{j \to i} \Theta(e_{ij})^\top x_j ,\qquad
        \Theta(e) = \operatorname{reshape}_{C_{in} \times C_{out}}\!\big(W h(e) + b_\Theta\big)

    where :math:`h(e) \in \mathbb{R}^H` is the last hidden layer of the kernel MLP and
    :math:`W \in \mathbb{R}^{C_{in} C_{out} \times H}`. Writing :math:`W_k, B \in \mathbb{R}^{C_{in} \times C_{out}}`
    for the slices of W and :math:`b_\Theta`, the message is

    .. math::
        m_{ij} = \textstyle\sum_k h_k(e_{ij}) \, W_k^\top x_j + B^\top x_j = \tilde h(e_{ij})^\top Q_j ,

    with :math:`\tilde h = [h, 1]` and :math:`Q_j = [W_1^\top x_j, \dots, W_H^\top x_j, B^\top x_j]`
    (one dense [N, C_in] x [C_in, (H+1) C_out] matmul). Per edge only an (H+1)-by-C_out product remains:
    O(E H C_out) work instead of O(E H C_in C_out), and no [E, C_in, C_out] tensor.

    Evaluation (:func:`dsmpnn.nn.aggregate.ecconv_aggregate`): edges grouped by source
    (:class:`~dsmpnn.nn.kernels.edge_plan.EdgePlan`, cached per ``edge_index`` tensor so the layers of a model
    share it), in chunks of ``edge_chunk`` edges; per chunk Q_j of its sources, h(e) of its edges (kernel MLP) and
    the per-source products, the messages added into their targets. Backward recomputes Q and h per chunk, so
    neither pass stores anything per edge (no [E, H] tensor either) when the kernel MLP is made of Linear layers
    and pointwise activations; other kernel modules (dropout, batch norm) are evaluated once over all edges by
    autograd and only the aggregation is chunked. Which implementation runs (fused C++ kernels on CPU, batched
    PyTorch products, degree-padded on CUDA: UNTESTED ON GPU) is :func:`dsmpnn.nn.kernels.backend.choose_backend`'s
    choice; on CPU the chunks are shared by ``torch.get_num_threads()`` worker threads. A larger ``edge_chunk``
    (e.g. 2**20) suits a GPU.

    Args:
        in_channels, out_channels: C_in, C_out.
        edge_dim: D, the number of edge attributes.
        kernel_hidden: hidden sizes of the kernel MLP (at least one); the last one is H.
        aggr: "mean" (default) or "sum".
        act: activation of the kernel MLP.
        root_weight, bias: the root term W_r x_i and bias b, as in NNConv.
        edge_chunk: edges per chunk in the aggregation (at most edge_chunk / 8 sources); bounds the temporary
            memory of each worker thread to about edge_chunk x (2 H + 2 C_out + D) +
            min(edge_chunk / d, edge_chunk / 8) x 2 (H + 1) C_out floats (d: out-degree of the sources).

    Shapes:
        x: [N, C_in], edge_index: [2, E] (row 0 source j, row 1 target i, any order), edge_attr: [E, D]
        -> [N, C_out]
    """

    def __init__(self, in_channels: int, out_channels: int, edge_dim: int, kernel_hidden: Sequence[int] = (64,),
                 aggr: str = "mean", act: str = "relu", root_weight: bool = True, bias: bool = True,
                 edge_chunk: int = DEFAULT_EDGE_CHUNK) -> None:
        super().__init__()
        if aggr not in ("mean", "sum"):
            raise ValueError(f"aggr must be 'mean' or 'sum', got {aggr!r}")
        if len(kernel_hidden) < 1:
            raise ValueError("kernel_hidden needs at least one hidden layer")
        self.in_channels, self.out_channels, self.edge_dim = in_channels, out_channels, edge_dim
        self.aggr, self.edge_chunk = aggr, edge_chunk
        self.kernel_hidden = MLP([edge_dim, *kernel_hidden], act=act, act_last=True)  # e -> h(e)
        self.kernel_out = nn.Linear(kernel_hidden[-1], in_channels * out_channels)  # h -> vec(Theta)
        self.root = nn.Linear(in_channels, out_channels, bias=False) if root_weight else None
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.kernel_hidden:
            if isinstance(m, nn.Linear):
                m.reset_parameters()
        self.kernel_out.reset_parameters()
        if self.root is not None:
            bound = 1.0 / math.sqrt(self.in_channels)
            nn.init.uniform_(self.root.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def node_kernel_weights(self) -> torch.Tensor:
        """W such that Q_j = x_j W: [C_in, H + 1, C_out] (the last row holds the bias of the kernel's Linear)."""
        cin, cout = self.in_channels, self.out_channels
        hdim = self.kernel_out.in_features
        w = self.kernel_out.weight.view(cin, cout, hdim).transpose(1, 2)  # [C_in, H, C_out]
        b = self.kernel_out.bias.view(cin, 1, cout)  # [C_in, 1, C_out]
        return torch.cat([w, b], dim=1)  # [C_in, H + 1, C_out]

    def node_kernels(self, x: torch.Tensor) -> torch.Tensor:
        """Q_j for every node: x [N, C_in] -> [N, H + 1, C_out]."""
        wb = self.node_kernel_weights()
        return (x @ wb.reshape(wb.shape[0], -1)).view(x.shape[0], *wb.shape[1:])

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor,
                plan: EdgePlan | None = None) -> torch.Tensor:
        """``plan``: an :class:`EdgePlan` of ``edge_index`` built with ``num_nodes = x.shape[0]``, to skip the
        (cached) lookup; by default :func:`~dsmpnn.nn.kernels.edge_plan.cached_edge_plan` finds or builds it."""
        n = x.shape[0]
        _check_attr(edge_index, edge_attr)
        if plan is None:
            plan = cached_edge_plan(edge_index, n, n, self.edge_chunk)
        node_weight = plan.mean_weights(x.dtype) if self.aggr == "mean" else None  # [N] or None
        return self._root_and_bias(x, self._aggregate(x, edge_attr, plan, node_weight))

    def forward_overlapped(self, x: torch.Tensor, split: EdgeSplit, attrs: tuple[torch.Tensor, torch.Tensor],
                           refresh: Callable[[], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        r""":meth:`forward` on the edges of ``split``, with x's halo rows refreshed while the interior edges'
        messages are summed:

        .. math:: x'_i = s_i \Big(\sum_{e \in I,\, e \to i} m_e(x) + \sum_{e \in B,\, e \to i} m_e(\tilde x)\Big)
            + W_r \tilde x_i + b ,\qquad \tilde x = \mathrm{refresh}()

        in this order: the interior sum (its sources are rows ``< split.first_halo_row``, where x and
        :math:`\tilde x` agree), then ``refresh()`` (x itself when None; the wait for the halo exchange), then the
        boundary edges' sum added to the interior one, then the mean weight :math:`s_i` of the whole in-degree (1 for
        a sum), the root term and the bias. Equal to ``forward(x̃, edge_index, edge_attr)`` up to the order of the
        additions.

        Shapes: x [N, C_in], attrs ([E_I, D], [E_B, D]) (``split.split_attr(edge_attr)``)
        -> (x' [N, C_out], x̃ [N, C_in])
        """
        n = x.shape[0]
        for index, attr in zip((split.interior_index, split.boundary_index), attrs):
            _check_attr(index, attr)
        weights = self._weights()
        plan = cached_edge_plan(split.interior_index, n, n, self.edge_chunk)
        interior = self._aggregate(x, attrs[0], plan, None, weights=weights)  # [N, C_out], halo rows unread
        if refresh is not None:
            x = refresh()  # halo rows current
        plan = cached_edge_plan(split.boundary_index, n, n, self.edge_chunk)
        node_weight = split.mean_weights(x.dtype) if self.aggr == "mean" else None  # [N] or None
        out = self._aggregate(x, attrs[1], plan, node_weight, interior, weights)  # [N, C_out]
        return self._root_and_bias(x, out), x

    def _weights(self) -> tuple[torch.Tensor, RowwiseKernel | None]:
        """W of the node kernels [C_in, H + 1, C_out] and the kernel MLP as a :class:`RowwiseKernel` (None when
        it is not made of Linear layers and pointwise activations)."""
        return self.node_kernel_weights(), RowwiseKernel.from_module(self.kernel_hidden)

    def _aggregate(self, x: torch.Tensor, edge_attr: torch.Tensor, plan: EdgePlan, node_weight: torch.Tensor | None,
                   base: torch.Tensor | None = None,
                   weights: tuple[torch.Tensor, RowwiseKernel | None] | None = None) -> torch.Tensor:
        """node_weight * (base + the sum of the messages along the plan's edges): [N, C_out]."""
        wb, kernel = self._weights() if weights is None else weights  # [C_in, H + 1, C_out], kernel MLP
        if kernel is not None:  # Linear layers and pointwise activations: evaluated chunk by chunk
            return ecconv_aggregate(x, wb, edge_attr, plan, kernel, node_weight, base)
        h = self.kernel_hidden(edge_attr)  # [E, H]
        return ecconv_aggregate(x, wb, h, plan, node_weight=node_weight, base=base)

    def _root_and_bias(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """out + W_r x + b (each when present): [N, C_out]. Without autograd ``out`` (the aggregation's fresh
        output) is added to in place: no [N, C_out] copies."""
        inplace = not torch.is_grad_enabled()
        if self.root is not None:
            out = out.add_(self.root(x)) if inplace else out + self.root(x)
        if self.bias is not None:
            out = out.add_(self.bias) if inplace else out + self.bias
        return out

    @classmethod
    def from_pyg(cls, conv: nn.Module) -> "ECConv":
        """Build an ECConv with the same weights as a ``torch_geometric.nn.NNConv`` whose ``nn`` is a
        ``Sequential`` ending in a ``Linear`` layer (the hidden part may hold any modules)."""
        seq = conv.nn
        if not isinstance(seq, nn.Sequential) or not isinstance(seq[-1], nn.Linear) or len(seq) < 2:
            raise ValueError("NNConv.nn must be an nn.Sequential of at least two modules ending in nn.Linear")
        aggr = {"add": "sum", "sum": "sum", "mean": "mean"}.get(str(conv.aggr))
        if aggr is None:
            raise ValueError(f"NNConv aggregation {conv.aggr!r} is not supported (use 'add'/'sum' or 'mean')")
        last = seq[-1]
        hidden = [m.out_features for m in seq if isinstance(m, nn.Linear)][:-1]
        root = getattr(conv, "lin", None) if conv.root_weight else None
        out = cls(conv.in_channels_l, conv.out_channels, seq[0].in_features, hidden, aggr,
                  root_weight=root is not None, bias=conv.bias is not None).to(last.weight.dtype)
        out.kernel_hidden = copy.deepcopy(seq[:-1])
        with torch.no_grad():
            out.kernel_out.weight.copy_(last.weight)
            if last.bias is not None:
                out.kernel_out.bias.copy_(last.bias)
            else:
                out.kernel_out.bias.zero_()
            if root is not None:
                out.root.weight.copy_(root.weight)
            if conv.bias is not None:
                out.bias.copy_(conv.bias)
        return out

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, edge_dim={self.edge_dim}, "
                f"kernel_hidden={self.kernel_out.in_features}, aggr={self.aggr}")


def _check_attr(edge_index: torch.Tensor, edge_attr: torch.Tensor) -> None:
    if edge_attr.dim() != 2 or edge_attr.shape[0] != edge_index.shape[-1]:
        raise ValueError(f"edge_attr has shape {list(edge_attr.shape)}, expected [E={edge_index.shape[-1]}, D]")
