"""Deployment: export to ONNX (fp32 and QDQ int8 with torchslim's own scales), the ONNX rewrite passes,
and ONNX Runtime (sessions, :func:`ort_optimize`, :class:`OrtModel`, latency).

Modules: :mod:`~torchslim.deploy.export` (torch → ONNX), :mod:`~torchslim.deploy.onnx_graph`
(helpers the passes share), :mod:`~torchslim.deploy.passes` (one module per rewrite, run from
ordered lists), :mod:`~torchslim.deploy.runtime` (ONNX Runtime), :mod:`~torchslim.deploy.speed`
(which layers to keep in float, by timing whole graphs).

Example:
    >>> from torchslim.deploy import OrtModel, export_qdq, ort_optimize
    >>> from torchslim.quant import quantize_
    >>> model = ts.create_model("lenet300", in_features=64)
    >>> x = torch.randn(8, 1, 8, 8)
    >>> report = quantize_(model, {"weight": {"bits": 8}}, calibration=[x])
    >>> proto = ort_optimize(export_qdq(model, x[:1]))     # QDQ graph with our scales -> integer kernels
    >>> OrtModel(proto, threads=2)(x).shape
    torch.Size([8, 10])
"""

from torchslim.deploy.export import (
    check_exportable,
    eager_attention,
    export_fp32,
    export_qdq,
    mha_slow_path,
    onnx_export_bytes,
)
from torchslim.deploy.onnx_graph import qdq_summary
from torchslim.deploy.passes import ORT_PASSES, QDQ_PASSES, Pass, run_passes
from torchslim.deploy.runtime import (
    OnnxSource,
    OrtModel,
    measure_ort_latency,
    ort_feed,
    ort_optimize,
    ort_session,
)
from torchslim.deploy.speed import SpeedChoice, choose_float_layers, layer_groups

__all__ = [
    "ORT_PASSES",
    "QDQ_PASSES",
    "OnnxSource",
    "OrtModel",
    "Pass",
    "SpeedChoice",
    "check_exportable",
    "choose_float_layers",
    "eager_attention",
    "export_fp32",
    "export_qdq",
    "layer_groups",
    "measure_ort_latency",
    "mha_slow_path",
    "onnx_export_bytes",
    "ort_feed",
    "ort_optimize",
    "ort_session",
    "qdq_summary",
    "run_passes",
]
