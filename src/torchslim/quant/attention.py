"""``nn.MultiheadAttention`` quantized: its input projection and output projection weights, and its inputs.

``nn.MultiheadAttention`` does not call its ``out_proj`` module: it passes
``in_proj_weight`` and ``out_proj.weight`` to ``F.multi_head_attention_forward``.
Swapping ``out_proj`` for a quantized Linear would change nothing, so the whole
module becomes a :class:`QuantMultiheadAttention` that fake-quantizes those
weights (per output row, each of the ``3 * embed_dim`` input-projection rows and
each output-projection row with its own scale) and, in ``static`` mode, its
query input (and key and value where they are the query tensor: self-attention;
a cross-attention's key and value inputs stay float). The attention scores,
softmax and the context read by the output projection stay float: the output
projection is weight-only. The exported graph
carries those weights as int8 initializers feeding DequantizeLinear.

Example:
    >>> from torchslim.quant.config import WeightQuantConfig
    >>> mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    >>> x = torch.randn(2, 5, 16)
    >>> ref = mha(x, x, x)[0]
    >>> swap_attention(mha, WeightQuantConfig())
    >>> type(mha).__name__, [n for n, _, _ in mha.quantized_weights()]
    ('QuantMultiheadAttention', ['in_proj_weight', 'out_proj.weight'])
    >>> float((mha(x, x, x)[0] - ref).abs().max()) < 0.05
    True
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.quant.config import ActQuantConfig, WeightQuantConfig
from torchslim.quant.fake import FakeQuantize
from torchslim.quant.weight_only import fitted_weight_quantizer

__all__ = ["QuantMultiheadAttention", "quantize_attention_input", "swap_attention"]

_SEPARATE = ("q_proj_weight", "k_proj_weight", "v_proj_weight")


class QuantMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` with fake-quantized projection weights (and inputs in ``static`` mode).

    Weight quantizers are children named after their parameter (``in_proj_weight_fq``,
    ``out_proj_weight_fq``, or ``q_proj_weight_fq``... when query, key and value have different
    sizes); ``input_fq`` is the activation quantizer of ``static`` mode (the query, and key and
    value when they are the query tensor), ``None`` otherwise.
    """

    input_fq: FakeQuantize | None

    def _weight_names(self) -> list[str]:
        return ["in_proj_weight", "out_proj.weight"] if self._qkv_same_embed_dim else [*_SEPARATE, "out_proj.weight"]

    def quantized_weights(self) -> list[tuple[str, torch.Tensor, FakeQuantize]]:
        """``(parameter name, float weight, its quantizer)`` of every quantized weight."""
        out: list[tuple[str, torch.Tensor, FakeQuantize]] = []
        for name in self._weight_names():
            weight = self.get_parameter(name)
            out.append((name, weight, getattr(self, name.replace(".", "_") + "_fq")))
        return out

    def _inputs(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The query quantized once, and key/value where they are the query (``query is key is value`` kept)."""
        if self.input_fq is None:
            return query, key, value
        q = self.input_fq(query)
        return q, q if key is query else key, q if value is query else value

    def forward(  # type: ignore[override]  # nn.MultiheadAttention's signature, keywords as there
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
        query, key, value = self._inputs(query, key, value)
        w = {name: fq(weight) for name, weight, fq in self.quantized_weights()}
        key_padding_mask = F._canonical_mask(mask=key_padding_mask, mask_name="key_padding_mask",
                                             other_type=F._none_or_dtype(attn_mask), other_name="attn_mask",
                                             target_type=query.dtype)
        attn_mask = F._canonical_mask(mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="",
                                      target_type=query.dtype, check_other=False)
        batched = query.dim() == 3
        if self.batch_first and batched:
            query, key, value = _to_sequence_first(query, key, value)
        separate: dict[str, Any] = {}
        if not self._qkv_same_embed_dim:
            separate = {"use_separate_proj_weight": True, **{n: w[n] for n in _SEPARATE}}
        out, weights = F.multi_head_attention_forward(
            query, key, value, self.embed_dim, self.num_heads, w.get("in_proj_weight"), self.in_proj_bias,
            self.bias_k, self.bias_v, self.add_zero_attn, self.dropout, w["out_proj.weight"], self.out_proj.bias,
            training=self.training, key_padding_mask=key_padding_mask, need_weights=need_weights,
            attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal, **separate,
        )
        if self.batch_first and batched:
            out = out.transpose(1, 0)
        return out, weights


def _to_sequence_first(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``batch_first`` inputs as ``[sequence, batch, features]``, one transpose per distinct tensor."""
    q = query.transpose(1, 0)
    k = q if key is query else key.transpose(1, 0)
    v = k if value is key else (q if value is query else value.transpose(1, 0))
    return q, k, v


def swap_attention(module: nn.Module, weight: WeightQuantConfig, *, learn_scale: bool = False) -> None:
    """Turn an ``nn.MultiheadAttention`` into a :class:`QuantMultiheadAttention` in place (weights fitted)."""
    module.__class__ = QuantMultiheadAttention
    mha: QuantMultiheadAttention = module  # type: ignore[assignment]
    for name in mha._weight_names():
        mha.add_module(name.replace(".", "_") + "_fq", fitted_weight_quantizer(mha.get_parameter(name), weight, learn_scale))
    mha.add_module("input_fq", None)


def quantize_attention_input(module: QuantMultiheadAttention, act: ActQuantConfig, *, learn_scale: bool = False) -> None:
    """Give a :class:`QuantMultiheadAttention` its input quantizer (``static`` mode)."""
    module.add_module("input_fq", FakeQuantize(act.spec(), observer=act.observer, observer_args=act.observer_args(),
                                               learn_scale=learn_scale))


def keep_off_fast_path_(model: nn.Module) -> list[str]:
    """Keep every ``nn.TransformerEncoderLayer`` of ``model`` that holds a quantizer off torch's fused inference path.

    In eval mode without gradients the layer (and ``nn.TransformerEncoder`` around it) runs
    ``torch._transformer_encoder_layer_fwd``, which reads ``self_attn``'s, ``linear1``'s and
    ``linear2``'s float weights directly and never calls those modules: a quantized layer inside
    would be skipped without a word (its quantizers never observed, its weights float). Its
    ``activation_relu_or_gelu`` flag, which only gates that path, is cleared; the layer then runs
    its own modules (same activation). Returns the names of the layers changed.

    Example:
        >>> from torchslim.quant.config import WeightQuantConfig
        >>> layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True).eval()
        >>> layer.linear1.add_module("weight_fq", FakeQuantize(WeightQuantConfig().spec()))
        >>> keep_off_fast_path_(nn.Sequential(layer)), layer.activation_relu_or_gelu
        (['0'], 0)
    """
    changed = []
    for name, module in model.named_modules():
        if isinstance(module, nn.TransformerEncoderLayer) and module.activation_relu_or_gelu and any(
                isinstance(m, FakeQuantize) for m in module.modules()):
            module.activation_relu_or_gelu = 0
            changed.append(name)
    return changed
