"""The module a factorised layer becomes: its factors in sequence, still readable as the layer it replaced.

Code around a layer often reads more than its output: ``self.q_proj.out_features // head_dim``, a head
tied to an encoder through ``F.linear(h, self.enc.weight.t())``, a parent that passes ``out_proj.weight``
to a functional kernel. :class:`LowRank` is an ``nn.Sequential`` of the factors (what runs in its
forward) that keeps the replaced layer's shape attributes (``in_features``/``out_features``,
``in_channels``/``out_channels``, ``kernel_size``, ``stride``...) and offers ``weight`` (the dense
product of the factors, computed when read, with gradients) and ``bias`` (the last factor's), so such
readers compute with the factorised layer instead of failing or reading a stale tensor.

Example:
    >>> dense = nn.Linear(6, 4)
    >>> low = LowRank(nn.Linear(6, 2, bias=False), nn.Linear(2, 4), like=dense)
    >>> low.in_features, low.out_features, tuple(low.weight.shape)
    (6, 4, (4, 6))
    >>> x = torch.randn(3, 6)
    >>> torch.allclose(low(x), torch.nn.functional.linear(x, low.weight, low.bias), atol=1e-6)
    True
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from torchslim.graph.surgery import is_conv1d

__all__ = ["KEPT_ATTRIBUTES", "LowRank"]

#: the attributes of the replaced layer a :class:`LowRank` keeps (those it has)
KEPT_ATTRIBUTES = ("in_features", "out_features", "in_channels", "out_channels", "kernel_size", "stride", "padding",
                   "dilation", "groups", "padding_mode", "nf", "nx")


class LowRank(nn.Sequential):
    """A factorised Linear or Conv2d: ``Sequential`` of its factors with the dense layer's attributes.

    Args:
        *factors: the factor layers, applied in order (SVD: two; Tucker-2: 1×1, core, 1×1).
        like: the layer replaced; its :data:`KEPT_ATTRIBUTES` are copied (``None``: none). A Hugging Face
            ``Conv1D`` (GPT-2's Linear) is read back as one: ``weight`` is ``(in, out)``.
    """

    def __init__(self, *factors: Any, like: nn.Module | None = None) -> None:
        super().__init__(*factors)
        self.transposed = like is not None and is_conv1d(like)
        for attr in KEPT_ATTRIBUTES:
            value = getattr(like, attr, None) if like is not None else None
            if isinstance(value, (int, str, tuple)):
                setattr(self, attr, value)

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight the factors multiply to (shape of the replaced layer's weight).

        Example:
            >>> low = LowRank(nn.Conv2d(4, 2, 1, bias=False), nn.Conv2d(2, 8, 1), like=nn.Conv2d(4, 8, 1))
            >>> tuple(low.weight.shape)
            (8, 4, 1, 1)
        """
        factors = [cast(torch.Tensor, m.weight) for m in self]
        first, last = factors[0].flatten(1), factors[-1].flatten(1)
        if len(factors) == 2:
            dense = last @ first
            if self.transposed:
                return dense.t()
            return dense if factors[0].dim() == 2 else dense[:, :, None, None]
        return torch.einsum("ob,bakl,ai->oikl", last, factors[1], first)

    @property
    def bias(self) -> torch.Tensor | None:
        """The bias of the replaced layer (carried by the last factor)."""
        bias = getattr(self[-1], "bias", None)
        return bias if isinstance(bias, torch.Tensor) else None
