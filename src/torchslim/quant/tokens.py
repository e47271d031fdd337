"""Padding-aware calibration: statistics over real tokens only.

A batch of sentences padded to its longest has positions that hold no token:
their hidden states are computed but never used downstream (attention masks
them as keys, pooling skips them), yet a plain observer counts them. In MiniLM
calibration batches more than half the positions can be padding. While
:func:`token_mask` is active, :func:`real_tokens` restricts an activation whose
two leading dimensions are the mask's ``[batch, tokens]`` to the positions the
mask marks as real, so observers and SmoothQuant's channel maxima see only
those. Anything else (weights, pooled ``[batch, features]`` outputs, other
shapes) passes through unchanged.

Example:
    >>> x = torch.arange(12.0).reshape(1, 3, 4)          # [batch, tokens, features]
    >>> with token_mask(torch.tensor([[1, 1, 0]])):
    ...     real_tokens(x).shape
    torch.Size([2, 4])
    >>> real_tokens(x).shape                             # no mask active: unchanged
    torch.Size([1, 3, 4])
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch

_MASK: ContextVar[torch.Tensor | None] = ContextVar("torchslim_token_mask", default=None)


@contextmanager
def token_mask(mask: torch.Tensor | None) -> Iterator[None]:
    """Make ``mask`` (``[batch, tokens]``, nonzero = real token) the active token mask inside the block.

    ``None`` (or a mask with no real token) makes every position count.
    """
    active = None
    if mask is not None and mask.dim() == 2 and bool(mask.any()):
        active = mask.detach().bool()
    token = _MASK.set(active)
    try:
        yield
    finally:
        _MASK.reset(token)


def real_tokens(x: torch.Tensor) -> torch.Tensor:
    """``x`` at the active mask's real-token positions (``[n_real, *features]``), or ``x`` itself when no
    mask is active or ``x``'s two leading dimensions are not the mask's shape (then it is not per token).

    Example:
        >>> real_tokens(torch.ones(2, 5, 8)).shape
        torch.Size([2, 5, 8])
    """
    mask = _MASK.get()
    if mask is None or x.dim() < 3 or tuple(x.shape[:2]) != tuple(mask.shape):
        return x
    return x[mask.to(x.device)]


def mask_of(inputs: Any, key: str | None) -> torch.Tensor | None:
    """The ``[batch, tokens]`` mask stored under ``key`` in a dict of model inputs (``None`` otherwise).

    Example:
        >>> mask_of({"input_ids": torch.ones(2, 3), "attention_mask": torch.ones(2, 3)}, "attention_mask").shape
        torch.Size([2, 3])
        >>> mask_of(torch.ones(2, 3), "attention_mask") is None
        True
    """
    if key is None or not isinstance(inputs, Mapping):
        return None
    mask = inputs.get(key)
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        return None
    return mask
