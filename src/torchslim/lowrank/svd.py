"""Truncated SVD of a Linear (or 1×1 conv): two thinner layers ``W ≈ U_r (Σ_r V_rᵀ)``.

Example:
    >>> low = svd_linear(nn.Linear(512, 256), rank=64)
    >>> [m.weight.shape for m in low]
    [torch.Size([64, 512]), torch.Size([256, 64])]
"""

from __future__ import annotations

import math

import torch
from torch import nn

from torchslim.errors import TransformRefusedError


def singular_values(weight: torch.Tensor) -> torch.Tensor:
    """Singular values (float64, descending) of a weight flattened to (out, rest).

    Example:
        >>> singular_values(torch.eye(3)).tolist()
        [1.0, 1.0, 1.0]
    """
    return torch.linalg.svdvals(weight.detach().double().flatten(1))


def rank_for_energy(s: torch.Tensor, energy: float) -> int:
    """Smallest rank whose squared singular values hold at least ``energy`` of the total.

    Example:
        >>> rank_for_energy(torch.tensor([3.0, 1.0, 0.1]), 0.9)
        1
    """
    e = torch.cumsum(s.double() ** 2, 0)
    return int(torch.searchsorted(e, energy * e[-1] * (1 - 1e-12)).item()) + 1


def svd_rank_for_ratio(in_features: int, out_features: int, ratio: float) -> int:
    """Rank making the factorised pair hold ``ratio`` of the dense weight's parameters.

    Example:
        >>> svd_rank_for_ratio(384, 1536, 0.5)
        153
    """
    return max(1, math.floor(ratio * in_features * out_features / (in_features + out_features)))


def svd_factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(first, second)`` with ``second @ first`` the best rank-``rank`` approximation of ``weight`` (out, in).

    The singular values are split evenly (√Σ on each side) so both factors are well scaled.

    Example:
        >>> a, b = svd_factors(torch.randn(8, 6), 2)
        >>> (b @ a).shape
        torch.Size([8, 6])
    """
    w = weight.detach().double()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    first = root[:, None] * vh[:r]  # (r, in)
    second = u[:, :r] * root[None, :]  # (out, r)
    return first.to(weight.dtype), second.to(weight.dtype)


def svd_linear(layer: nn.Module, rank: int) -> nn.Sequential:
    """Replace-ready ``Sequential(first, second)`` approximating a Linear or 1×1 Conv2d at ``rank``.

    Raises:
        TransformRefusedError: the layer is neither a Linear nor an ungrouped 1×1 Conv2d.

    Example:
        >>> svd_linear(nn.Conv2d(64, 64, 1), 16)[0]
        Conv2d(64, 16, kernel_size=(1, 1), stride=(1, 1), bias=False)
    """
    if rank < 1:
        raise TransformRefusedError(f"rank must be >= 1, got {rank}")
    if isinstance(layer, nn.Linear):
        first_w, second_w = svd_factors(layer.weight, rank)
        r = first_w.shape[0]
        first: nn.Module = nn.Linear(layer.in_features, r, bias=False)
        second: nn.Module = nn.Linear(r, layer.out_features, bias=layer.bias is not None)
    elif isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1) and layer.groups == 1:
        first_w, second_w = svd_factors(layer.weight.flatten(1), rank)
        r = first_w.shape[0]
        first = nn.Conv2d(layer.in_channels, r, 1, stride=layer.stride, padding=layer.padding, bias=False)
        second = nn.Conv2d(r, layer.out_channels, 1, bias=layer.bias is not None)
        first_w, second_w = first_w[:, :, None, None], second_w[:, :, None, None]
    else:
        raise TransformRefusedError(f"SVD needs a Linear or an ungrouped 1×1 Conv2d, got {layer}")
    first = first.to(device=layer.weight.device, dtype=layer.weight.dtype)
    second = second.to(device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        first.weight.copy_(first_w)
        second.weight.copy_(second_w)
        if layer.bias is not None:
            second.bias.copy_(layer.bias)
    return nn.Sequential(first, second)
