"""Exact merges of adjacent linear maps with nothing non-linear between.

``second(first(x))`` with ``first`` = ``W₁x + b₁`` and ``second`` = ``W₂y + b₂`` is
the single map ``(W₂W₁)x + (W₂b₁ + b₂)``. For convolutions the second one must be a
1×1, stride-1, unpadded, ungrouped convolution; the first may be any ungrouped
convolution (its padding and stride are kept).

Example:
    >>> merged = merge_linear(nn.Linear(16, 8), nn.Linear(8, 4))
    >>> merged.weight.shape
    torch.Size([4, 16])
"""

from __future__ import annotations

import torch
from torch import nn

from torchslim.errors import TransformRefusedError

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def merge_reason(first: nn.Module, second: nn.Module) -> str | None:
    """Why ``first`` → ``second`` cannot merge exactly, or ``None`` when it can.

    Example:
        >>> merge_reason(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 3))
        'second conv is not 1×1 (kernel (3, 3))'
    """
    if isinstance(first, nn.Linear) and isinstance(second, nn.Linear):
        if first.out_features != second.in_features:
            return f"shapes do not chain ({first.out_features} → {second.in_features})"
        return None
    if isinstance(first, CONVS) and type(second) is type(first):
        if any(k != 1 for k in second.kernel_size):
            return f"second conv is not 1×1 (kernel {tuple(second.kernel_size)})"
        if any(s != 1 for s in second.stride):
            return f"second conv has stride {tuple(second.stride)}"
        if isinstance(second.padding, str) and second.padding != "valid" or (
            not isinstance(second.padding, str) and any(p != 0 for p in second.padding)
        ):
            return f"second conv is padded ({second.padding})"
        if first.groups != 1 or second.groups != 1:
            return f"grouped convolution (groups {first.groups}, {second.groups})"
        if first.out_channels != second.in_channels:
            return f"channels do not chain ({first.out_channels} → {second.in_channels})"
        return None
    return f"{type(first).__name__} → {type(second).__name__} is not a mergeable pair"


def merged_params(first: nn.Module, second: nn.Module) -> int:
    """Parameters of the merged layer (weight + bias), to compare with the pair's.

    Example:
        >>> merged_params(nn.Linear(16, 8), nn.Linear(8, 4))
        68
    """
    if isinstance(first, nn.Linear):
        return first.in_features * second.out_features + second.out_features
    return second.out_channels * first.weight[0].numel() + second.out_channels


def merge_linear(first: nn.Module, second: nn.Module) -> nn.Module:
    """One layer equal to ``second(first(x))`` (Linear→Linear or conv→1×1 conv); inputs are not modified.

    Raises:
        TransformRefusedError: the pair cannot merge exactly (see :func:`merge_reason`).

    Example:
        >>> merge_linear(nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 1))
        Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
    """
    reason = merge_reason(first, second)
    if reason is not None:
        raise TransformRefusedError(f"cannot merge: {reason}")
    w1 = first.weight.detach().double()
    w2 = second.weight.detach().double().flatten(1)  # (out2, mid)
    b1 = first.bias.detach().double() if first.bias is not None else torch.zeros(w1.shape[0], dtype=torch.float64)
    b2 = second.bias.detach().double() if second.bias is not None else torch.zeros(w2.shape[0], dtype=torch.float64)
    w = (w2 @ w1.flatten(1)).view(w2.shape[0], *w1.shape[1:])
    b = w2 @ b1 + b2
    if isinstance(first, nn.Linear):
        new: nn.Module = nn.Linear(first.in_features, second.out_features, bias=True)
    else:
        new = type(first)(
            first.in_channels,
            second.out_channels,
            first.kernel_size,
            stride=first.stride,
            padding=first.padding,
            dilation=first.dilation,
            groups=1,
            bias=True,
            padding_mode=first.padding_mode,
        )
    new = new.to(device=first.weight.device, dtype=first.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(w.to(first.weight.dtype))
        new.bias.copy_(b.to(first.weight.dtype))
    new.train(first.training)
    return new
