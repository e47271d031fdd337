"""A family of fully connected classifiers (``mlp``) with configurable widths and dropout.

Used for the Hinton et al. (2015) distillation experiment: a 784-1200-1200-10
teacher with dropout and a 784-800-800-10 student.

Example:
    >>> from torchslim.zoo import create_model
    >>> teacher = create_model("mlp", hidden=(1200, 1200), dropout=0.5, input_dropout=0.2)
    >>> student = create_model("mlp", hidden=(800, 800))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.zoo.registry import MODELS


class MLP(nn.Module):
    """``in_features``-h1-...-hk-``num_classes`` with ReLU, optional dropout on the input and hidden units.

    Layers are named ``fc1`` ... ``fc{k+1}`` (hidden activations after ReLU are
    the outputs of ``act1`` ... ``act{k}``, handy as hint layers). Accepts images
    (N, C, H, W) or flat vectors (N, in_features).
    """

    def __init__(
        self,
        in_features: int = 784,
        num_classes: int = 10,
        hidden: Sequence[int] = (300, 100),
        dropout: float = 0.0,
        input_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        hidden = [int(h) for h in hidden]
        if in_features < 1 or num_classes < 1 or any(h < 1 for h in hidden):
            raise TorchslimError(f"mlp widths must be >= 1, got in_features={in_features}, hidden={hidden}, num_classes={num_classes}")
        for name, p in (("dropout", dropout), ("input_dropout", input_dropout)):
            if not 0.0 <= p < 1.0:
                raise TorchslimError(f"mlp {name} must be in [0, 1), got {p}")
        self.hidden = tuple(hidden)
        self.input_dropout = nn.Dropout(input_dropout) if input_dropout > 0 else nn.Identity()
        widths = [in_features, *hidden, num_classes]
        for i in range(len(widths) - 1):
            self.add_module(f"fc{i + 1}", nn.Linear(widths[i], widths[i + 1]))
            if i < len(hidden):
                self.add_module(f"act{i + 1}", nn.ReLU())
                self.add_module(f"drop{i + 1}", nn.Dropout(dropout) if dropout > 0 else nn.Identity())
        self.depth = len(widths) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_dropout(x.flatten(1))
        for i in range(1, self.depth):
            x = getattr(self, f"drop{i}")(getattr(self, f"act{i}")(getattr(self, f"fc{i}")(x)))
        return getattr(self, f"fc{self.depth}")(x)


@MODELS.register("mlp")
def mlp(
    in_features: int = 784,
    num_classes: int = 10,
    hidden: Sequence[int] = (300, 100),
    dropout: float = 0.0,
    input_dropout: float = 0.0,
) -> nn.Module:
    """Fully connected classifier with hidden widths ``hidden`` and dropout ``dropout`` (hidden) / ``input_dropout``.

    Example:
        >>> from torchslim.zoo import create_model
        >>> create_model("mlp", hidden=[800, 800]).fc2.weight.shape
        torch.Size([800, 800])
    """
    return MLP(in_features, num_classes, hidden, dropout, input_dropout)
