"""Quantization: affine math, observers, fake quantization, PTQ, QAT, mixed precision.

The technique objects are :data:`QUANTIZE` (:func:`quantize_`) and
:data:`MIXED_PRECISION` (:func:`mixed_precision_`), run by :func:`torchslim.technique.run`.

ONNX export (``export_fp32``, ``export_qdq``, ``ort_optimize``, ``OrtModel``) lives in
:mod:`torchslim.deploy`; the names here still work and warn.

Example:
    >>> import torchslim as ts
    >>> from torchslim.deploy import OrtModel, export_qdq
    >>> data = ts.load_data("digits")
    >>> model = ts.create_model("lenet300", in_features=64)
    >>> report = ts.quantize_(model, {"weight": {"bits": 8}}, calibration=data.loader("train"))
    >>> proto = export_qdq(model, data.example_input())
    >>> OrtModel(proto, threads=1)(data.test.x[:4]).shape       # int8 in ONNX Runtime
    torch.Size([4, 10])
"""

from torchslim._compat import moved_names
from torchslim.quant.affine import (
    QParams,
    QuantSpec,
    dequantize,
    fake_quantize,
    qparams_from_range,
    qparams_from_tensor,
    quantize,
)
from torchslim.quant.config import ActQuantConfig, LayerQuantConfig, QuantizeConfig, WeightQuantConfig
from torchslim.quant.fake import FakeQuantize, ste_fake_quantize
from torchslim.quant.mixed import (
    MIXED_PRECISION,
    MixedPrecisionConfig,
    allocate_bits,
    layer_sensitivity,
    mixed_precision_,
)
from torchslim.quant.observers import OBSERVERS, Observer, make_observer
from torchslim.quant.packed import load_packed, packed_bytes, save_packed
from torchslim.quant.ptq import QUANTIZE, quantize_
from torchslim.quant.qat import KDConfig, QATCallback, qat_finetune

__all__ = [
    "MIXED_PRECISION",
    "OBSERVERS",
    "QUANTIZE",
    "ActQuantConfig",
    "FakeQuantize",
    "KDConfig",
    "LayerQuantConfig",
    "MixedPrecisionConfig",
    "Observer",
    "QATCallback",
    "QParams",
    "QuantSpec",
    "QuantizeConfig",
    "WeightQuantConfig",
    "allocate_bits",
    "dequantize",
    "fake_quantize",
    "layer_sensitivity",
    "load_packed",
    "make_observer",
    "mixed_precision_",
    "packed_bytes",
    "qat_finetune",
    "qparams_from_range",
    "qparams_from_tensor",
    "quantize",
    "quantize_",
    "save_packed",
    "ste_fake_quantize",
]

# ONNX export moved to torchslim.deploy, which imports this package: forwarded lazily, with a warning
__getattr__ = moved_names(
    __name__, {name: f"torchslim.deploy:{name}" for name in ("OrtModel", "export_fp32", "export_qdq", "ort_optimize")}
)
