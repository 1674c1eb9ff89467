r"""A kernel MLP (Linear layers and pointwise activations) applied to a chunk of edges, with its own backward.

The fused aggregation (:func:`dsmpnn.nn.kernels.grouped.grouped_aggregate`) evaluates the edge kernel
:math:`h = \sigma(\dots \sigma(a W_1^\top + b_1) \dots)` one chunk of edges at a time, in the forward pass and
again in the backward pass, so no [E, H] tensor is kept. The backward of one chunk is written out here rather
than left to autograd for two reasons: the gradients of the weights are accumulated over chunks, and the weight
gradient of the first layer, whose input has only D = 2..4 columns, is an [e, D]^T [e, H] product that is ten
times faster in that orientation than in the [e, H]^T [e, D] one autograd uses on CPU.

.. math::
    g^{pre}_l = \sigma'(z_l) \odot g_l ,\qquad
    \partial L / \partial W_l = (g^{pre}_l)^\top a_{l-1} ,\qquad
    \partial L / \partial b_l = \textstyle\sum_e g^{pre}_l ,\qquad
    g_{l-1} = g^{pre}_l W_l

Shapes: a [e, D] -> h [e, H]; every Linear maps [e, in] -> [e, out].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dsmpnn.nn.kernels import native

__all__ = ["RowwiseKernel"]

_POINTWISE = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.ELU, nn.LeakyReLU, nn.Sigmoid, nn.Softplus, nn.Mish,
              nn.Hardtanh, nn.Identity)
"""Parameter-free activations applied elementwise: each edge's features are transformed on their own."""


_NATIVE_NAMES = {nn.ReLU: "relu", nn.GELU: "gelu", nn.SiLU: "silu"}
"""Activations the fused kernels evaluate themselves (:data:`dsmpnn.nn.kernels.native.ACTIVATIONS`)."""


@dataclass(frozen=True)
class RowwiseKernel:
    """The layers of a kernel MLP, in order: ``nn.Linear`` or a pointwise activation module.

    Build it with :meth:`from_module`, which returns None for modules it cannot evaluate chunk by chunk
    (dropout in training mode, normalisation, anything unknown): those are left to autograd over all edges.
    """

    layers: tuple[nn.Module, ...]

    @classmethod
    def from_module(cls, module: nn.Module) -> "RowwiseKernel | None":
        layers: list[nn.Module] = []
        stack = [module]
        while stack:
            m = stack.pop(0)
            if type(m) is nn.Sequential or (isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward):
                stack = list(m) + stack
            elif type(m) is nn.Linear or isinstance(m, _POINTWISE):
                layers.append(m)
            elif isinstance(m, nn.Dropout) and (m.p == 0 or not m.training):
                continue  # the identity
            else:
                return None
        if not any(isinstance(m, nn.Linear) for m in layers):
            return None
        return cls(tuple(layers))

    @property
    def out_features(self) -> int:
        """H, the width of the last Linear layer."""
        return [m for m in self.layers if isinstance(m, nn.Linear)][-1].out_features

    def parameters(self) -> list[torch.Tensor]:
        """The weights and biases of the Linear layers, in layer order (weight, then bias when present)."""
        return [p for m in self.layers if isinstance(m, nn.Linear) for p in (m.weight, m.bias) if p is not None]

    def native_layers(self) -> list[native.Layer] | None:
        """The MLP as Linear layers, each followed by at most one activation that the fused CPU kernels evaluate
        themselves (ReLU, exact GELU, SiLU: :data:`dsmpnn.nn.kernels.native.ACTIVATIONS`), or None when it has another
        form (then PyTorch evaluates it and hands its output to the kernels)."""
        layers: list[native.Layer] = []
        for m in self.layers:
            if isinstance(m, nn.Identity):
                continue
            name = _NATIVE_NAMES.get(type(m)) if not isinstance(m, nn.GELU) or m.approximate == "none" else None
            if type(m) is nn.Linear:
                layers.append(native.Layer(m.weight, m.bias, "identity"))
            elif name is not None and layers and layers[-1].act == "identity":
                layers[-1] = native.Layer(layers[-1].weight, layers[-1].bias, name)
            else:
                return None
        return layers

    def forward(self, a: torch.Tensor, tape: list | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        """h = kernel(a) for a chunk a [e, D] -> [e, H] (no autograd), written into ``out`` when given (any
        strides); with a ``tape`` list, record what :meth:`backward` needs."""
        # a final ReLU writes straight into `out` (possibly strided: cheaper there than a strided matmul)
        final_relu = out is not None and isinstance(self.layers[-1], nn.ReLU)
        own = False  # whether `a` is a temporary made here (then ReLU may work in place)
        for i, m in enumerate(self.layers):
            if isinstance(m, nn.Linear):
                if tape is not None:
                    tape.append(a)  # input of the Linear, for its weight gradient
                w = m.weight.detach()
                a = torch.addmm(m.bias.detach(), a, w.T) if m.bias is not None else a @ w.T  # [e, out]
                own = True
            elif isinstance(m, nn.ReLU):
                if final_relu and i == len(self.layers) - 1:
                    a = torch.clamp_min(a, 0, out=out)
                else:
                    a = a.relu_() if own else a.relu()
                own = True
                if tape is not None:
                    tape.append(a)  # ReLU's output carries its derivative
            elif isinstance(m, nn.Identity):
                continue
            else:
                if tape is not None:
                    tape.append(a)  # pre-activation
                # (not written into a strided `out` directly: gelu's out= variant ignores a strided out in
                # torch 2.13; the copy below is cheap)
                inplace = getattr(m, "inplace", False) and (tape is not None or not own)
                a, own = m(a.clone() if inplace else a), True
        if out is not None and (a.data_ptr() != out.data_ptr() or a.stride() != out.stride()):
            out.copy_(a)
            if tape is not None and tape and tape[-1] is a and isinstance(self.layers[-1], nn.ReLU):
                tape[-1] = out
            a = out
        return a

    def backward(self, tape: list, gh: torch.Tensor, grads: list[torch.Tensor | None],
                 need_input: bool) -> torch.Tensor | None:
        """Backward of one chunk recorded in ``tape`` for gh = dL/dh [e, H] (overwritten). Adds the parameter
        gradients into ``grads`` (same order as :meth:`parameters`, None entries skipped; weight gradients
        TRANSPOSED, as [in, out] accumulators, the layout the fast product writes) and returns dL/da when
        ``need_input``."""
        g = gh
        p = len(grads)
        for i, m in reversed(list(enumerate(self.layers))):
            if isinstance(m, nn.Linear):
                a = tape.pop()  # [e, in]
                if m.bias is not None:
                    p -= 1
                    if grads[p] is not None:
                        grads[p].add_(g.sum(0))
                p -= 1
                if grads[p] is not None:
                    grads[p].addmm_(a.T, g)  # dW^T [in, out] += a^T g: the fast orientation (see module doc)
                first = not any(isinstance(mm, nn.Linear) for mm in self.layers[:i])
                if first and not need_input:
                    return None
                g = g @ m.weight.detach()  # [e, in]
            elif isinstance(m, nn.ReLU):
                torch.ops.aten.threshold_backward.grad_input(g, tape.pop(), 0, grad_input=g)  # in place
            elif isinstance(m, nn.Identity):
                continue
            elif type(m) is nn.GELU:
                g = torch.ops.aten.gelu_backward(g, tape.pop(), approximate=m.approximate)
            elif type(m) is nn.SiLU:
                g = torch.ops.aten.silu_backward(g, tape.pop())
            else:
                z = tape.pop().detach().requires_grad_()
                with torch.enable_grad():
                    (g,) = torch.autograd.grad(m(z.clone() if getattr(m, "inplace", False) else z), z, g)
        return g if need_input else None
