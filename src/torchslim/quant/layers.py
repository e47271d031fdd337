"""Quantized layer classes and the swap that makes them: Linear/Conv (weights and activations), and the
weight-only and attention layers of :mod:`torchslim.quant.weight_only` and :mod:`torchslim.quant.attention`.

A layer is quantized by swapping its class for a quantized subclass that keeps
the parameter names and adds weight quantizers (:class:`FakeQuantize`):
``Linear`` → :class:`QuantLinear` (``weight_fq``), ``Embedding`` →
:class:`~torchslim.quant.weight_only.QuantEmbedding`, ``GRU``/``LSTM`` → their
weight-only subclasses, ``MultiheadAttention`` →
:class:`~torchslim.quant.attention.QuantMultiheadAttention`.

Example:
    >>> model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 4))
    >>> for name, module in quantizable_modules(model):
    ...     swap_module(module, WeightQuantConfig())
    >>> [type(m).__name__ for m in model], [n for n, _, _ in weights_of(model[0])]
    (['QuantEmbedding', 'QuantLinear'], ['weight'])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.quant.attention import QuantMultiheadAttention, swap_attention
from torchslim.quant.config import WeightQuantConfig
from torchslim.quant.fake import FakeQuantize
from torchslim.quant.weight_only import WEIGHT_ONLY_CLASS, fitted_weight_quantizer, swap_weight_only


class _QuantMixin:
    """Forward of a quantized layer: optional input fake-quant, fake-quantized weight."""

    weight_fq: FakeQuantize
    input_fq: nn.Module | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        smooth = getattr(self, "input_smooth", None)  # SmoothQuant input scale, before the input quantizer
        if smooth is not None:
            x = smooth(x)
        if self.input_fq is not None:
            x = self.input_fq(x)
        exported = getattr(self, "_export_weight", None)
        if torch.onnx.is_in_onnx_export() and exported is not None:
            if self.weight_fq.spec.granularity == "group":  # no int8 kernel: a float constant on the grid
                return self._qforward(x, exported)  # type: ignore[attr-defined]
            return self._qforward(x, self.weight_fq(exported))  # type: ignore[attr-defined]
        return self._qforward(x, self.weight_fq(self.weight))  # type: ignore[attr-defined]


class QuantLinear(_QuantMixin, nn.Linear):
    """``nn.Linear`` with a fake-quantized weight."""

    def _qforward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.linear(x, w, self.bias)


class QuantConv1d(_QuantMixin, nn.Conv1d):
    """``nn.Conv1d`` with a fake-quantized weight."""

    def _qforward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, w, self.bias)


class QuantConv2d(_QuantMixin, nn.Conv2d):
    """``nn.Conv2d`` with a fake-quantized weight."""

    def _qforward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, w, self.bias)


class QuantConv3d(_QuantMixin, nn.Conv3d):
    """``nn.Conv3d`` with a fake-quantized weight."""

    def _qforward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, w, self.bias)


QUANT_CLASS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: QuantLinear,
    nn.Conv1d: QuantConv1d,
    nn.Conv2d: QuantConv2d,
    nn.Conv3d: QuantConv3d,
}
QUANT_LAYERS = tuple(QUANT_CLASS.values())


class SharedFakeQuantize(nn.Module):
    """Applies another :class:`FakeQuantize`'s current scale without observing (holds no state)."""

    def __init__(self, ref: FakeQuantize) -> None:
        super().__init__()
        self.__dict__["ref"] = ref

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ref: FakeQuantize = self.__dict__["ref"]
        if not ref.enabled or not bool(ref.initialized):
            return x
        observing = ref.observing
        ref.observing = False
        try:
            return ref(x)
        finally:
            ref.observing = observing


def is_quantized(module: nn.Module | None) -> bool:
    """Whether ``module`` is a quantized layer (any class of :data:`QUANT_MODULES`).

    Example:
        >>> is_quantized(nn.Linear(2, 2))
        False
    """
    return isinstance(module, QUANT_MODULES)


def quantizable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Float Linear/Conv layers (exact classes) in registration order.

    Example:
        >>> [n for n, _ in quantizable_layers(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))]
        ['0']
    """
    return [(n, m) for n, m in model.named_modules() if n and type(m) in QUANT_CLASS]


def swap_layer(module: nn.Module, weight: WeightQuantConfig, *, learn_scale: bool = False) -> None:
    """Turn a float layer into its quantized subclass in place and fit its weight quantizer.

    Example:
        >>> lin = nn.Linear(4, 3); swap_layer(lin, WeightQuantConfig(bits=4))
        >>> type(lin).__name__, lin.weight_fq.qparams().qmax
        ('QuantLinear', 7)
    """
    cls = QUANT_CLASS.get(type(module))
    if cls is None:
        raise TorchslimError(f"cannot quantize a {type(module).__name__}")
    fq = fitted_weight_quantizer(module.get_parameter("weight"), weight, learn_scale)  # fixed until QAT observes per call
    module.__class__ = cls
    module.add_module("weight_fq", fq)
    module.add_module("input_fq", None)
    module.__dict__["_export_weight"] = None



#: every quantized module class: Linear/Conv (:data:`QUANT_LAYERS`), attention, weight-only layers
QUANT_MODULES: tuple[type[nn.Module], ...] = (*QUANT_LAYERS, QuantMultiheadAttention, *WEIGHT_ONLY_CLASS.values())
#: float classes :func:`quantizable_modules` offers besides Linear/Conv
OTHER_QUANTIZABLE: tuple[type[nn.Module], ...] = (nn.MultiheadAttention, *WEIGHT_ONLY_CLASS)


def quantizable_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Float Linear/Conv, ``MultiheadAttention``, ``Embedding``, ``GRU`` and ``LSTM`` modules (exact classes).

    An ``Embedding`` with ``max_norm`` (it renormalises its table in place when called) is left out;
    :func:`unquantizable_reason` says why.

    Example:
        >>> [n for n, _ in quantizable_modules(nn.Sequential(nn.Embedding(5, 2), nn.ReLU(), nn.Linear(2, 2)))]
        ['0', '2']
    """
    return [(n, m) for n, m in model.named_modules()
            if n and (type(m) in QUANT_CLASS or type(m) in OTHER_QUANTIZABLE) and unquantizable_reason(m) is None]


def unquantizable_reason(module: nn.Module) -> str | None:
    """Why a module of a quantizable class cannot be quantized (``None`` when it can).

    Example:
        >>> unquantizable_reason(nn.Embedding(5, 2, max_norm=1.0))
        'Embedding with max_norm renormalises its table in place when called: kept in float'
    """
    if isinstance(module, nn.Embedding) and module.max_norm is not None:
        return "Embedding with max_norm renormalises its table in place when called: kept in float"
    return None


def float_weights(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``(parameter name, tensor)`` of the weights quantizing ``module`` would quantize.

    Example:
        >>> [(n, tuple(w.shape)) for n, w in float_weights(nn.MultiheadAttention(8, 2))]
        [('in_proj_weight', (24, 8)), ('out_proj.weight', (8, 8))]
    """
    if isinstance(module, nn.MultiheadAttention):
        names = ["in_proj_weight"] if module._qkv_same_embed_dim else ["q_proj_weight", "k_proj_weight", "v_proj_weight"]
        return [(n, module.get_parameter(n)) for n in [*names, "out_proj.weight"]]
    if isinstance(module, (nn.GRU, nn.LSTM)):
        return [(n, getattr(module, n)) for n in module._flat_weights_names if n.startswith("weight_")]
    return [("weight", module.get_parameter("weight"))]


def weights_of(module: nn.Module) -> list[tuple[str, torch.Tensor, FakeQuantize]]:
    """``(parameter name, float weight, its quantizer)`` of every quantized weight of a quantized module.

    Example:
        >>> lin = nn.Linear(4, 3); swap_layer(lin, WeightQuantConfig())
        >>> [n for n, _, _ in weights_of(lin)]
        ['weight']
    """
    if isinstance(module, QUANT_LAYERS):
        return [("weight", module.get_parameter("weight"), module.weight_fq)]  # type: ignore[list-item]
    if isinstance(module, QUANT_MODULES):
        return module.quantized_weights()  # type: ignore[operator]
    return []


def swap_module(module: nn.Module, weight: WeightQuantConfig, *, learn_scale: bool = False) -> None:
    """Quantize any module :func:`quantizable_modules` offers, in place (its weights fitted).

    Raises:
        TorchslimError: a module of another class.
    """
    if type(module) in QUANT_CLASS:
        swap_layer(module, weight, learn_scale=learn_scale)
    elif type(module) is nn.MultiheadAttention:
        swap_attention(module, weight, learn_scale=learn_scale)
    elif type(module) in WEIGHT_ONLY_CLASS:
        swap_weight_only(module, weight, learn_scale=learn_scale)
    else:
        raise TorchslimError(f"cannot quantize a {type(module).__name__}")
