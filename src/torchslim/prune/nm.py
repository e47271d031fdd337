"""N:M semi-structured sparsity: keep ``n`` of every ``m`` consecutive weights.

Groups run along the input dimension: for a Linear weight ``(out, in)`` each row
is cut into ``in / m`` groups of ``m`` consecutive inputs; for a convolution
``(out, in/groups, kh, kw)`` each output channel's weights are flattened in
storage order (input channel major, kernel position minor) and cut the same
way. The ``n`` highest-scoring weights of every group are kept (ties broken by
position, lowest first), so any criterion of :mod:`torchslim.prune.importance`
drives the choice. 2:4 is the pattern of NVIDIA's sparse tensor cores.

A weight stored ``(in, out)`` (Hugging Face ``Conv1D``, GPT-2's Linear) is passed
with ``transposed=True``: its groups are ``m`` consecutive inputs of one output,
i.e. run down dimension 0.
"""

from __future__ import annotations

import torch

from torchslim.errors import TransformRefusedError


def nm_incompatibility(shape: tuple[int, ...] | torch.Size, m: int) -> str | None:
    """Why a weight of ``shape`` cannot take an N:M pattern with group size ``m`` (``None`` if it can).

    Example:
        >>> nm_incompatibility((10, 30), 4)
        'input length 30 per output unit is not a multiple of m=4'
    """
    if len(shape) < 2:
        return f"weight has {len(shape)} dimension(s); N:M needs an (out, in, ...) weight"
    row = 1
    for s in shape[1:]:
        row *= int(s)
    if row % m:
        return f"input length {row} per output unit is not a multiple of m={m}"
    return None


def nm_mask(scores: torch.Tensor, n: int, m: int, *, transposed: bool = False) -> torch.Tensor:
    """Boolean keep-mask shaped like ``scores`` keeping the ``n`` best of every ``m`` consecutive inputs.

    Args:
        scores: one score per weight, shaped like the weight.
        n: weights kept per group.
        m: the group size.
        transposed: the weight is stored ``(in, out)`` (Hugging Face ``Conv1D``): groups run down dimension 0.

    Raises:
        TransformRefusedError: ``n`` not in ``[1, m)`` or the shape does not split into groups of ``m``.

    Example:
        >>> nm_mask(torch.tensor([[4.0, 1.0, 3.0, 2.0]]), 2, 4)
        tensor([[ True, False,  True, False]])
        >>> nm_mask(torch.tensor([[4.0], [1.0], [3.0], [2.0]]), 2, 4, transposed=True).flatten()
        tensor([ True, False,  True, False])
    """
    if transposed:
        return nm_mask(scores.t(), n, m).t().contiguous()
    if not 1 <= n < m:
        raise TransformRefusedError(f"N:M needs 1 <= n < m, got n={n}, m={m}")
    why = nm_incompatibility(scores.shape, m)
    if why is not None:
        raise TransformRefusedError(why)
    groups = scores.detach().float().reshape(scores.shape[0], -1, m)
    order = torch.sort(groups, dim=-1, descending=True, stable=True).indices[..., :n]
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, order, True)
    return keep.view(scores.shape)


def satisfies_nm(weight: torch.Tensor, n: int, m: int, *, transposed: bool = False) -> bool:
    """True when every group of ``m`` consecutive inputs of ``weight`` has at most ``n`` non-zeros.

    ``transposed``: the weight is stored ``(in, out)`` (Hugging Face ``Conv1D``), its groups run down dimension 0.

    Example:
        >>> satisfies_nm(torch.tensor([[1.0, 0.0, 2.0, 0.0]]), 2, 4)
        True
        >>> satisfies_nm(torch.tensor([[1.0, 0.0, 2.0, 0.0]]).t(), 2, 4, transposed=True)
        True
    """
    if transposed:
        weight = weight.t()
    if nm_incompatibility(weight.shape, m) is not None:
        return False
    nz = (weight.detach() != 0).reshape(weight.shape[0], -1, m).sum(-1)
    return bool((nz <= n).all())
