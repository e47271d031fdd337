"""``nn.MultiheadAttention`` with fewer heads than its ``embed_dim`` holds.

``nn.MultiheadAttention`` assumes ``num_heads * head_dim == embed_dim``: the width
inside the attention is the width of its input and output. Once heads are pruned
the inside is narrower (``num_heads * head_dim < embed_dim``) while the model's
width is not, and torch's forward (and its fused fast paths) refuse the shapes.
:class:`PrunedMultiheadAttention` is the same module with a forward in plain
operations (projections, scaled dot-product attention, output projection) that
reads the sizes from its weights. Its projections are kept as separate
``q_proj_weight``/``k_proj_weight``/``v_proj_weight`` (``_qkv_same_embed_dim`` is
``False``, the layout torch itself uses when ``kdim``/``vdim`` differ), which also
turns off ``nn.TransformerEncoderLayer``'s fused path that would read a packed
``in_proj_weight``. ``embed_dim`` is the model's width; ``num_heads`` and
``head_dim`` describe the heads left, and ``scaling`` keeps the softmax temperature
``1/sqrt(head_dim)`` of the heads as they were built (features pruned inside the
heads leave it as it was).

Example:
    >>> _ = torch.manual_seed(0)
    >>> mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    >>> x = torch.randn(3, 5, 8)
    >>> ref, _ = mha(x, x, x, need_weights=False)
    >>> pruned = to_pruned(copy.deepcopy(mha))
    >>> torch.allclose(pruned(x, x, x)[0], ref, atol=1e-6), pruned.in_proj_weight is None
    (True, True)
"""

from __future__ import annotations

import copy  # noqa: F401 - used by the doctest
import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PrunedMultiheadAttention", "to_pruned"]


def _float_mask(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """An additive float mask (``True`` in a boolean mask means *not allowed*)."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=like.dtype, device=like.device).masked_fill(mask, float("-inf"))
    return mask.to(like.dtype)


class PrunedMultiheadAttention(nn.MultiheadAttention):
    """An ``nn.MultiheadAttention`` whose heads were pruned (see the module docstring); same call and outputs."""

    scaling: float | None = None

    def _projections(self) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        inner = self.num_heads * self.head_dim
        if self.in_proj_weight is not None:
            weights = list(self.in_proj_weight.split(inner))
        else:
            weights = [self.q_proj_weight, self.k_proj_weight, self.v_proj_weight]
        biases = list(self.in_proj_bias.split(inner)) if self.in_proj_bias is not None else [None, None, None]
        return list(zip(weights, biases))

    def _mask(
        self, attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, is_causal: bool,
        batch: int, length: int, source: int, like: torch.Tensor,
    ) -> torch.Tensor | None:
        """``attn_mask`` (``(L, S)`` or ``(B*heads, L, S)``) and ``key_padding_mask`` (``(B, S)``) as one additive mask."""
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(length, source, dtype=torch.bool, device=like.device).triu(1)
        mask = _float_mask(attn_mask, like)
        if mask is not None:
            mask = mask.view(batch, self.num_heads, length, source) if mask.dim() == 3 else mask.view(1, 1, length, source)
        pad = _float_mask(key_padding_mask, like)
        if pad is not None:
            pad = pad.view(batch, 1, 1, source)
            mask = pad if mask is None else mask + pad
        return mask

    def forward(  # type: ignore[override]  # the signature of nn.MultiheadAttention.forward
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            key_padding_mask = key_padding_mask.unsqueeze(0) if key_padding_mask is not None else None
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        (wq, bq), (wk, bk), (wv, bv) = self._projections()
        batch, length, source, h, d = query.shape[0], query.shape[1], key.shape[1], self.num_heads, self.head_dim
        q = F.linear(query, wq, bq).view(batch, length, h, d).transpose(1, 2)
        k = F.linear(key, wk, bk).view(batch, source, h, d).transpose(1, 2)
        v = F.linear(value, wv, bv).view(batch, source, h, d).transpose(1, 2)
        mask = self._mask(attn_mask, key_padding_mask, is_causal, batch, length, source, q)
        scale = float(self.scaling or 1.0 / math.sqrt(d))
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) * scale
            weights = (scores + mask if mask is not None else scores).softmax(-1)
            attended = F.dropout(weights, p=p) @ v if p > 0 else weights @ v
        else:
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, scale=scale)
        out = self.out_proj(attended.transpose(1, 2).reshape(batch, length, h * d))
        if unbatched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if weights is None:
            return out, None
        w = weights.mean(1) if average_attn_weights else weights
        return out, (w.squeeze(0) if unbatched else w)


def to_pruned(mha: nn.MultiheadAttention) -> PrunedMultiheadAttention:
    """Turn ``mha`` (in place) into a :class:`PrunedMultiheadAttention` with separate q/k/v weights; returns it."""
    if mha.in_proj_weight is not None:
        inner = mha.num_heads * mha.head_dim
        wq, wk, wv = (w.detach().clone() for w in mha.in_proj_weight.split(inner))
        grad = mha.in_proj_weight.requires_grad
        mha.in_proj_weight = None  # type: ignore[assignment]
        mha.q_proj_weight = nn.Parameter(wq, requires_grad=grad)
        mha.k_proj_weight = nn.Parameter(wk, requires_grad=grad)
        mha.v_proj_weight = nn.Parameter(wv, requires_grad=grad)
    scaling = 1.0 / math.sqrt(mha.head_dim)  # the softmax temperature of the heads as they were built
    if not isinstance(mha, PrunedMultiheadAttention):
        mha.__class__ = PrunedMultiheadAttention
        pruned = cast(PrunedMultiheadAttention, mha)
        pruned.scaling = scaling
    mha._qkv_same_embed_dim = False
    return cast(PrunedMultiheadAttention, mha)
