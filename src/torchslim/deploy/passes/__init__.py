"""The ONNX rewrite passes, one module each, and the ordered lists that run them.

:data:`QDQ_PASSES` is what :func:`~torchslim.deploy.export_qdq` runs on the
exporter's graph, in order; :data:`ORT_PASSES` is what
:func:`~torchslim.deploy.ort_optimize` runs after ONNX Runtime's own offline
optimisation. Each :class:`Pass` takes the ``onnx.ModelProto``, rewrites it in
place and returns how many rewrites it made; :func:`run_passes` runs a list,
skipping the names it is told to.

Example:
    >>> for p in QDQ_PASSES:
    ...     print(p.name)
    fold_weight_quantizers
    dedupe_smoothing_mul
    dedupe_quantize_linear
    hoist_quantize_linear
    space_to_depth
    pad_channels
    >>> [p.name for p in ORT_PASSES]
    ['fuse_matmul_bias', 'fuse_attention']
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import onnx

from torchslim.deploy.onnx_graph import drop_unused_initializers
from torchslim.deploy.passes.attention import fuse_attention
from torchslim.deploy.passes.dedupe import dedupe_quantize_linear
from torchslim.deploy.passes.fold_casts import fold_casts
from torchslim.deploy.passes.fold_weights import fold_weight_quantizers
from torchslim.deploy.passes.hoist import hoist_quantize_linear
from torchslim.deploy.passes.matmul_bias import fuse_matmul_bias
from torchslim.deploy.passes.pad_channels import pad_conv_input_channels
from torchslim.deploy.passes.space_to_depth import space_to_depth_conv_pool
from torchslim.errors import TorchslimError

__all__ = [
    "ORT_PASSES",
    "QDQ_PASSES",
    "Pass",
    "dedupe_quantize_linear",
    "fold_casts",
    "fold_weight_quantizers",
    "fuse_attention",
    "fuse_matmul_bias",
    "hoist_quantize_linear",
    "pad_conv_input_channels",
    "run_passes",
    "space_to_depth_conv_pool",
]


@dataclass(frozen=True)
class Pass:
    """One rewrite of an ONNX model, in place.

    Attributes:
        name: The name :func:`run_passes` reports its count under and skips it by.
        run: Rewrites the model; returns how many rewrites it made.
    """

    name: str
    run: Callable[[onnx.ModelProto], int]


def _dedupe_smoothing_mul(proto: onnx.ModelProto) -> int:
    """The smoothing scales that Q, K and V share (one ``Mul`` per tensor), their spare constants dropped."""
    merged = dedupe_quantize_linear(proto.graph, "Mul")
    if merged:
        drop_unused_initializers(proto.graph)
    return merged


QDQ_PASSES: tuple[Pass, ...] = (
    Pass("fold_weight_quantizers", fold_weight_quantizers),
    Pass("dedupe_smoothing_mul", _dedupe_smoothing_mul),
    Pass("dedupe_quantize_linear", lambda proto: dedupe_quantize_linear(proto.graph)),
    Pass("hoist_quantize_linear", lambda proto: hoist_quantize_linear(proto.graph)),
    Pass("space_to_depth", space_to_depth_conv_pool),
    Pass("pad_channels", pad_conv_input_channels),
)
"""What :func:`~torchslim.deploy.export_qdq` runs, in this order (``space_to_depth`` and
``pad_channels`` can be turned off by its arguments)."""

ORT_PASSES: tuple[Pass, ...] = (
    Pass("fuse_matmul_bias", lambda proto: fuse_matmul_bias(proto.graph)),
    Pass("fuse_attention", fuse_attention),
)
"""What :func:`~torchslim.deploy.ort_optimize` runs after ONNX Runtime's optimisation, in this order
(``fuse_attention`` can be turned off by its argument)."""


def run_passes(proto: onnx.ModelProto, passes: Sequence[Pass], *, skip: Collection[str] = ()) -> dict[str, int]:
    """Run ``passes`` on ``proto`` in order, except those named in ``skip``.

    Returns:
        How many rewrites each pass that ran made, by name.

    Raises:
        TorchslimError: ``skip`` names a pass that is not in ``passes``.

    Example:
        >>> from torchslim.deploy import export_fp32
        >>> proto = export_fp32(nn.Linear(4, 2), torch.randn(1, 4))
        >>> run_passes(proto, ORT_PASSES, skip={"fuse_attention"})
        {'fuse_matmul_bias': 0}
        >>> try:
        ...     run_passes(proto, ORT_PASSES, skip={"fuse_attn"})
        ... except TorchslimError as error:
        ...     print(error)
        unknown pass(es) ['fuse_attn'] in skip: the passes are ['fuse_matmul_bias', 'fuse_attention']
    """
    names = [p.name for p in passes]
    unknown = sorted(set(skip) - set(names))
    if unknown:
        raise TorchslimError(f"unknown pass(es) {unknown} in skip: the passes are {names}")
    return {p.name: p.run(proto) for p in passes if p.name not in skip}
