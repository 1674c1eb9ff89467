"""A plain multilayer perceptron and the activation registry shared by the model."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["MLP", "activation"]

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
