"""Weight-only quantized layers: ``nn.Embedding`` (per row) and ``nn.GRU``/``nn.LSTM`` (per gate row).

Their inputs and outputs stay float in every mode (an embedding reads token ids;
ONNX Runtime has no integer recurrent kernel), so they take no activation
quantization points; their weights are quantized like a Linear's, one scale per
output row (``granularity: channel``): for an embedding that is one scale per
token vector.

Exported to ONNX (:func:`~torchslim.deploy.export_qdq`) an embedding keeps its
table as int8: the token rows are gathered from the int8 table and from the
per-row scales and dequantized (``(q - zero_point) * scale``, the simulation's
arithmetic, so outputs are equal). A recurrent layer's weights go through
QuantizeLinear/DequantizeLinear into the ONNX GRU/LSTM (int8 initializers,
dequantized when the graph runs).

Example:
    >>> from torchslim.quant.config import WeightQuantConfig
    >>> emb = nn.Embedding(10, 4)
    >>> swap_weight_only(emb, WeightQuantConfig())
    >>> ids = torch.tensor([[1, 2, 3]])
    >>> type(emb).__name__, emb(ids).shape, emb.weight_fq.qparams().scale.shape    # one scale per token row
    ('QuantEmbedding', torch.Size([1, 3, 4]), torch.Size([10]))
    >>> gru = nn.GRU(4, 8, batch_first=True)
    >>> swap_weight_only(gru, WeightQuantConfig())
    >>> [n for n, _, _ in gru.quantized_weights()]
    ['weight_ih_l0', 'weight_hh_l0']
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.quant.affine import quantize
from torchslim.quant.config import WeightQuantConfig
from torchslim.quant.fake import FakeQuantize

__all__ = ["QuantEmbedding", "QuantGRU", "QuantLSTM", "WEIGHT_ONLY_CLASS", "swap_weight_only"]


def fitted_weight_quantizer(weight: torch.Tensor, config: WeightQuantConfig, learn_scale: bool) -> FakeQuantize:
    """A per-call weight quantizer for ``weight``, fitted to it once and then no longer observing.

    Example:
        >>> from torchslim.quant.config import WeightQuantConfig
        >>> fq = fitted_weight_quantizer(torch.randn(6, 4), WeightQuantConfig(), False)
        >>> fq.observing, fq.qparams().scale.shape
        (False, torch.Size([6]))
    """
    fq = FakeQuantize(config.spec(), observer=config.observer, learn_scale=learn_scale, per_call=True)
    with torch.no_grad():
        fq.observe(weight)
    fq.observing = False
    return fq


class QuantEmbedding(nn.Embedding):
    """``nn.Embedding`` with a fake-quantized table (``weight_fq``, one scale per row by default)."""

    weight_fq: FakeQuantize
    _export_int: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def quantized_weights(self) -> list[tuple[str, torch.Tensor, FakeQuantize]]:
        """``[("weight", table, its quantizer)]``."""
        return [("weight", self.weight, self.weight_fq)]

    def begin_export(self) -> None:
        """Hold the int8 table, its scales and zero points as constants (not parameters) for the exporter."""
        qp = self.weight_fq.qparams()
        table = quantize(self.weight.detach(), qp).to(torch.int8 if qp.signed else torch.uint8)
        self._export_int = (table, qp.scale.detach().float().clone(), qp.zero_point.detach().float().clone())

    def end_export(self) -> None:
        """Drop the constants of :meth:`begin_export`."""
        self._export_int = None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export() and self.weight_fq.spec.granularity != "group" and self.weight_fq.enabled:
            return self._int8_rows(input)
        return F.embedding(input, self.weight_fq(self.weight), self.padding_idx, self.max_norm, self.norm_type,
                           self.scale_grad_by_freq, self.sparse)

    def _int8_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Gather int8 rows and their scales, then dequantize: the table stays int8 in the exported graph."""
        if self._export_int is None:
            self.begin_export()
        table, scale, zp = self._export_int  # type: ignore[misc]  # set just above
        rows = table[ids].float()
        if scale.dim() == 0:  # per tensor
            return (rows - zp) * scale
        return (rows - zp[ids].unsqueeze(-1)) * scale[ids].unsqueeze(-1)


class _QuantRNN:
    """Forward of a weight-only quantized GRU/LSTM: its ``_flat_weights`` fake-quantized for the call."""

    _flat_weights: list[torch.Tensor | None]
    _flat_weights_names: list[str]
    weight_fqs: nn.ModuleDict

    def quantized_weights(self) -> list[tuple[str, torch.Tensor, FakeQuantize]]:
        """``(parameter name, float weight, its quantizer)`` of every input and hidden weight matrix."""
        return [(n, getattr(self, n), self.weight_fqs[n]) for n in self._flat_weights_names  # type: ignore[misc]
                if n in self.weight_fqs]

    def forward(self, input: Any, hx: Any = None) -> Any:
        saved = self._flat_weights
        self._flat_weights = [
            self.weight_fqs[n](w) if n in self.weight_fqs and w is not None else w
            for n, w in zip(self._flat_weights_names, saved)
        ]
        try:
            return super().forward(input, hx)  # type: ignore[misc]
        finally:
            self._flat_weights = saved


class QuantGRU(_QuantRNN, nn.GRU):
    """``nn.GRU`` with fake-quantized weight matrices (``weight_fqs``, keyed by parameter name)."""


class QuantLSTM(_QuantRNN, nn.LSTM):
    """``nn.LSTM`` with fake-quantized weight matrices (``weight_fqs``, keyed by parameter name)."""


#: float class -> its weight-only quantized subclass
WEIGHT_ONLY_CLASS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Embedding: QuantEmbedding,
    nn.GRU: QuantGRU,
    nn.LSTM: QuantLSTM,
}


def swap_weight_only(module: nn.Module, weight: WeightQuantConfig, *, learn_scale: bool = False) -> None:
    """Turn an ``nn.Embedding``/``nn.GRU``/``nn.LSTM`` into its weight-only quantized subclass in place.

    Raises:
        TorchslimError: another type.
    """
    cls = WEIGHT_ONLY_CLASS.get(type(module))
    if cls is None:
        raise TorchslimError(f"cannot quantize a {type(module).__name__} weight-only")
    if isinstance(module, nn.Embedding):
        fq = fitted_weight_quantizer(module.weight, weight, learn_scale)
        module.__class__ = cls  # type: ignore[assignment]  # a subclass of the module's own class
        module.add_module("weight_fq", fq)
        return
    names: list[str] = list(getattr(module, "_flat_weights_names", []))
    fqs = nn.ModuleDict({n: fitted_weight_quantizer(getattr(module, n), weight, learn_scale) for n in names if n.startswith("weight_")})
    module.__class__ = cls
    module.add_module("weight_fqs", fqs)
