"""Truncated SVD of a Linear (or 1×1 conv): two thinner layers ``W ≈ U_r (Σ_r V_rᵀ)``.

With a *whitener* ``L`` (the Cholesky factor of the layer's input second moment
``C = Σ x xᵀ = L Lᵀ``, :func:`whitening_factor`) the truncation is the SVD of
``W L`` instead of ``W``, which minimises the output error ``‖(W − W')X‖_F`` on the
calibration inputs rather than the weight error ``‖W − W'‖_F`` (SVD-LLM's
truncation-aware data whitening, Wang et al. 2024, arXiv:2403.07378).

Example:
    >>> low = svd_linear(nn.Linear(512, 256), rank=64)
    >>> [m.weight.shape for m in low]
    [torch.Size([64, 512]), torch.Size([256, 64])]
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn

from torchslim.errors import TransformRefusedError
from torchslim.graph.surgery import is_conv1d
from torchslim.lowrank.factored import LowRank


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
        >>> s = torch.tensor([3.0, 1.0, 0.1])      # squares 9, 1, 0.01: the first holds 89.9 %
        >>> rank_for_energy(s, 0.85), rank_for_energy(s, 0.9)
        (1, 2)
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


def whitening_factor(gram: torch.Tensor, eps: float = 1e-6, max_tries: int = 8) -> tuple[torch.Tensor, float]:
    """Lower Cholesky factor ``L`` (float64) of ``gram + eps·mean(diag(gram))·I``, and the ``eps`` used.

    ``gram`` is an input second-moment matrix ``Σ x xᵀ`` (in, in). When the
    factorisation fails (a numerically singular ``gram``), ``eps`` is multiplied
    by 10 and the factorisation retried, at most ``max_tries`` times.

    Raises:
        TransformRefusedError: ``gram`` is not square or holds NaN/inf, or no ``eps``
            made it positive definite.

    Example:
        >>> l, used = whitening_factor(torch.diag(torch.tensor([4.0, 1.0])), eps=0.0)
        >>> l.diagonal().tolist(), used
        ([2.0, 1.0], 0.0)
    """
    c = gram.detach().double()
    if c.dim() != 2 or c.shape[0] != c.shape[1]:
        raise TransformRefusedError(f"the input second-moment matrix must be square, got shape {tuple(c.shape)}")
    if not bool(torch.isfinite(c).all()):
        raise TransformRefusedError("the input second-moment matrix holds NaN or inf (non-finite activations)")
    c = (c + c.T) / 2
    scale = float(c.diagonal().mean())
    scale = scale if scale > 0 else 1.0  # all-zero inputs: regularise with the identity
    eye = torch.eye(c.shape[0], dtype=c.dtype, device=c.device)
    tried = eps
    for _ in range(max_tries):
        l, info = torch.linalg.cholesky_ex(c + tried * scale * eye)
        if int(info) == 0:
            return l, tried
        tried = tried * 10 if tried > 0 else 1e-12
    raise TransformRefusedError(
        f"the input second-moment matrix stayed singular after regularising up to eps={tried / 10:g} "
        "(relative to its mean diagonal)"
    )


def svd_factors(
    weight: torch.Tensor, rank: int, *, whitener: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(first, second)`` with ``second @ first`` the best rank-``rank`` approximation of ``weight`` (out, in).

    The singular values are split evenly (√Σ on each side) so both factors are well scaled.
    Without ``whitener`` "best" is in the weight's Frobenius norm (Eckart–Young). With a
    lower-triangular ``whitener`` ``L`` (:func:`whitening_factor` of the inputs'
    ``C = X Xᵀ``) it is in the output error ``‖(W − second·first) X‖_F``: with
    ``W L ≈ U_r Σ_r V_rᵀ``, ``first = √Σ_r V_rᵀ L⁻¹`` (a triangular solve) and
    ``second = U_r √Σ_r``.

    Example:
        >>> a, b = svd_factors(torch.randn(8, 6), 2)
        >>> (b @ a).shape
        torch.Size([8, 6])
    """
    w = weight.detach().double()
    l = None if whitener is None else whitener.detach().to(device=w.device, dtype=torch.float64)
    if l is not None and l.shape != (w.shape[1], w.shape[1]):
        raise TransformRefusedError(f"whitener shape {tuple(l.shape)} does not match the weight's {w.shape[1]} inputs")
    u, s, vh = torch.linalg.svd(w if l is None else w @ l, full_matrices=False)
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    first = root[:, None] * vh[:r]  # (r, in)
    if l is not None:
        first = torch.linalg.solve_triangular(l, first, upper=False, left=False)  # first · L = √Σ_r V_rᵀ
    second = u[:, :r] * root[None, :]  # (out, r)
    return first.to(weight.dtype), second.to(weight.dtype)


def svd_linear(layer: nn.Module, rank: int, *, whitener: torch.Tensor | None = None) -> nn.Sequential:
    """Replace-ready ``Sequential(first, second)`` approximating a Linear or 1×1 Conv2d at ``rank``.

    It is a :class:`~torchslim.lowrank.factored.LowRank`: it keeps the layer's ``in_features``/``out_features``
    (``in_channels``...) and reads as ``weight`` the product of its factors.

    ``whitener`` (optional): the Cholesky factor of the layer's input second moment
    (:func:`whitening_factor`), making the truncation data-aware (see :func:`svd_factors`).

    Raises:
        TransformRefusedError: the layer is neither a Linear nor an ungrouped 1×1 Conv2d.

    Example:
        >>> svd_linear(nn.Conv2d(64, 64, 1), 16)[0]
        Conv2d(64, 16, kernel_size=(1, 1), stride=(1, 1), bias=False)
    """
    if rank < 1:
        raise TransformRefusedError(f"rank must be >= 1, got {rank}")
    weight, bias = cast(torch.Tensor, layer.weight), cast("torch.Tensor | None", layer.bias)
    if isinstance(layer, nn.Linear) or is_conv1d(layer):  # a Hugging Face Conv1D holds its weight (in, out)
        dense = weight if isinstance(layer, nn.Linear) else weight.t()
        first_w, second_w = svd_factors(dense, rank, whitener=whitener)
        r = first_w.shape[0]
        first: nn.Module = nn.Linear(dense.shape[1], r, bias=False)
        second: nn.Module = nn.Linear(r, dense.shape[0], bias=bias is not None)
    elif isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1) and layer.groups == 1:
        first_w, second_w = svd_factors(layer.weight.flatten(1), rank, whitener=whitener)
        r = first_w.shape[0]
        first = nn.Conv2d(
            layer.in_channels, r, 1, stride=layer.stride, padding=layer.padding, padding_mode=layer.padding_mode,
            bias=False,
        )
        second = nn.Conv2d(r, layer.out_channels, 1, bias=layer.bias is not None)
        first_w, second_w = first_w[:, :, None, None], second_w[:, :, None, None]
    else:
        raise TransformRefusedError(f"SVD needs a Linear, a Hugging Face Conv1D or an ungrouped 1×1 Conv2d, got {layer}")
    first = first.to(device=weight.device, dtype=weight.dtype)
    second = second.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        first.weight.copy_(first_w)
        second.weight.copy_(second_w)
        if bias is not None:
            second.bias.copy_(bias)
    return LowRank(first, second, like=layer)
