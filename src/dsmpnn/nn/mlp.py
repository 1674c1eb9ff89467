"""A plain multilayer perceptron and the activation registry shared by the model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MLP", "activation", "rowwise", "INFERENCE_ROWS"]

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "elu": nn.ELU}


def activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation '{name}', expected one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


class MLP(nn.Sequential):
    """Linear -> act -> ... -> Linear, with ``act_last`` adding an activation after the last layer.

    Shapes: [*, sizes[0]] -> [*, sizes[-1]].
    """

    def __init__(self, sizes: Sequence[int], act: str = "relu", act_last: bool = False) -> None:
        layers: list[nn.Module] = []
        for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if k < len(sizes) - 2 or act_last:
                layers.append(activation(act))
        super().__init__(*layers)


INFERENCE_ROWS = 1 << 16
"""Rows per piece of a row-wise module applied without autograd (:func:`rowwise`)."""


def rowwise(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` for a module that maps each row of ``x [N, C]`` on its own (an MLP over nodes). Without
    autograd (inference) and for more than :data:`INFERENCE_ROWS` rows it runs that many rows at a time into one
    output tensor, so its hidden layers' temporaries ([N, 64] and their activations: 5 GB on a 1e7-node mesh)
    stay one piece's size."""
    if torch.is_grad_enabled() or x.dim() != 2 or x.shape[0] <= INFERENCE_ROWS:
        return module(x)
    first = module(x[:INFERENCE_ROWS])
    out = first.new_empty(x.shape[0], *first.shape[1:])  # [N, ...]
    out[:INFERENCE_ROWS] = first
    for s in range(INFERENCE_ROWS, x.shape[0], INFERENCE_ROWS):
        out[s:s + INFERENCE_ROWS] = module(x[s:s + INFERENCE_ROWS])
    return out
