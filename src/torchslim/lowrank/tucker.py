"""Tucker-2 decomposition of a Conv2d: 1×1 (C_in → r_in) → k×k core (r_in → r_out) → 1×1 (r_out → C_out).

The factors come from truncated HOSVD of the weight's output- and input-channel
unfoldings, refined by a few HOOI sweeps (Kim et al. 2016, "Compression of deep
convolutional neural networks for fast and low power mobile applications").

Example:
    >>> seq = tucker2_conv(nn.Conv2d(64, 64, 3, padding=1), 16, 16)
    >>> [m.kernel_size for m in seq]
    [(1, 1), (3, 3), (1, 1)]
"""

from __future__ import annotations

import math

import torch
from torch import nn

from torchslim.errors import TransformRefusedError
from torchslim.lowrank.factored import LowRank


def _leading(mat: torch.Tensor, r: int) -> torch.Tensor:
    u, _, _ = torch.linalg.svd(mat, full_matrices=False)
    return u[:, :r]


def tucker2_factors(
    weight: torch.Tensor, r_out: int, r_in: int, iters: int = 5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(U_out (C_out, r_out), core (r_out, r_in, k, k), U_in (C_in, r_in))`` with ``W ≈ core ×₀ U_out ×₁ U_in``.

    Example:
        >>> u_out, core, u_in = tucker2_factors(torch.randn(8, 6, 3, 3), 4, 3)
        >>> core.shape
        torch.Size([4, 3, 3, 3])
    """
    w = weight.detach().double()
    c_out, c_in = w.shape[:2]
    r_out, r_in = min(r_out, c_out), min(r_in, c_in)
    u_out = _leading(w.flatten(1), r_out)  # mode-0 unfolding (C_out, C_in·k·k)
    u_in = _leading(w.transpose(0, 1).flatten(1), r_in)  # mode-1 unfolding
    for _ in range(iters):  # HOOI
        t = torch.einsum("oikl,ir->orkl", w, u_in)
        u_out = _leading(t.flatten(1), r_out)
        t = torch.einsum("oikl,or->irkl", w, u_out)
        u_in = _leading(t.flatten(1), r_in)
    core = torch.einsum("oikl,or,is->rskl", w, u_out, u_in)
    return u_out.to(weight.dtype), core.to(weight.dtype), u_in.to(weight.dtype)


def tucker2_ranks_for_ratio(c_in: int, c_out: int, kernel_elems: int, ratio: float) -> tuple[int, int]:
    """``(r_in, r_out)``, proportional to the channel counts, holding ``ratio`` of a conv's parameters.

    Solves ``a²·C_in·C_out·K + a·(C_in² + C_out²) = ratio·C_in·C_out·K`` (``K`` kernel
    elements, 9 for 3×3) for the fraction ``a`` of channels kept on each side.

    Example:
        >>> tucker2_ranks_for_ratio(64, 64, 9, 0.5)
        (38, 38)
    """
    a2 = c_in * c_out * kernel_elems
    b = c_in**2 + c_out**2
    a = (-b + math.sqrt(b * b + 4 * a2 * ratio * a2)) / (2 * a2)
    return max(1, math.floor(a * c_in)), max(1, math.floor(a * c_out))


def tucker2_conv(conv: nn.Conv2d, r_in: int, r_out: int, iters: int = 5) -> nn.Sequential:
    """Replace-ready ``Sequential(1×1, k×k core, 1×1)`` approximating an ungrouped Conv2d.

    The core keeps the conv's stride, padding and dilation; the last 1×1 carries its bias. It is a
    :class:`~torchslim.lowrank.factored.LowRank`: it keeps the conv's attributes and reads as ``weight``
    the product of its factors.

    Raises:
        TransformRefusedError: grouped conv or ranks below 1.

    Example:
        >>> tucker2_conv(nn.Conv2d(16, 32, 3, stride=2, padding=1), 8, 16)[1]
        Conv2d(8, 16, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), bias=False)
    """
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
        raise TransformRefusedError(f"Tucker-2 needs an ungrouped Conv2d, got {conv}")
    if r_in < 1 or r_out < 1:
        raise TransformRefusedError(f"Tucker-2 ranks must be >= 1, got ({r_in}, {r_out})")
    u_out, core, u_in = tucker2_factors(conv.weight, r_out, r_in, iters)
    r_out, r_in = u_out.shape[1], u_in.shape[1]
    first = nn.Conv2d(conv.in_channels, r_in, 1, bias=False)
    middle = nn.Conv2d(
        r_in, r_out, conv.kernel_size, stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
        bias=False, padding_mode=conv.padding_mode,
    )
    last = nn.Conv2d(r_out, conv.out_channels, 1, bias=conv.bias is not None)
    seq = LowRank(first, middle, last, like=conv).to(device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        first.weight.copy_(u_in.t()[:, :, None, None])
        middle.weight.copy_(core)
        last.weight.copy_(u_out[:, :, None, None])
        if conv.bias is not None:
            last.bias.copy_(conv.bias)
    return seq
