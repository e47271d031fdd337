""":func:`export`: a compressed model out as the artefact that is deployed, checked in ONNX Runtime first.

``format="onnx"`` writes one ``.onnx`` file: fp32 for a float model, the int8 QDQ graph run
through :func:`~torchslim.deploy.ort_optimize` for a quantized one. ``format="hf"`` writes a
directory that loads without torchslim (:func:`~torchslim.deploy.hf.save_pretrained`). With
``check`` batches, the graph runs in ONNX Runtime against the torch model first (top-1
agreement and cosine, :class:`~torchslim.deploy.check.ExportCheck`) and nothing is written
when it falls below the minimums. Files are written atomically.

Example:
    >>> import tempfile
    >>> model = ts.create_model("lenet300", in_features=64)
    >>> x = torch.randn(32, 1, 8, 8)
    >>> _ = ts.quantize_(model, {"weight": {"bits": 8}}, calibration=[x])
    >>> out = ts.export(model, f"{tempfile.mkdtemp()}/lenet.onnx", example_input=x[:1], check=[x], threads=1)
    >>> out.kind, out.check.top1_agreement >= 0.99, out.path.stat().st_size == out.bytes
    ('int8', True, True)
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from torch import nn

from torchslim.deploy.check import ExportResult, check_onnx, onnx_artefact, require_agreement
from torchslim.deploy.hf import example_from, save_pretrained
from torchslim.errors import TorchslimError
from torchslim.io.atomic import atomic_write_bytes
from torchslim.measure.macs import ExampleInput

__all__ = ["FORMATS", "export"]

#: the formats :func:`export` writes
FORMATS = ("onnx", "hf")


def export(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    format: Literal["onnx", "hf"] = "onnx",
    example_input: ExampleInput | None = None,
    source: Any = None,
    check: Iterable[Any] | None = None,
    threads: int | None = None,
    optimize: bool = True,
    opset: int = 17,
    min_agreement: float = 0.99,
    min_cosine: float = 0.99,
) -> ExportResult:
    """Write ``model`` as a deployable artefact; the model is not modified.

    Args:
        model: a float or quantized (:func:`~torchslim.quant.quantize_`) model, on any device.
        path: the ``.onnx`` file (``format="onnx"``) or the directory (``format="hf"``).
        format: ``onnx`` (fp32, or int8 QDQ + ``ort_optimize`` when quantized) or ``hf``
            (a Hugging Face directory; an ONNX directory for a quantized model).
        example_input: one batch the model takes (default: tokenized by ``source``'s tokenizer).
        source: the :class:`~torchslim.zoo.hf.ModelSource` the model came from (``RunResult.source``):
            its tokenizer fills in ``example_input`` and travels into an ``hf`` directory.
        check: batches (any form a loader gives) to compare the graph with the torch model on in
            ONNX Runtime; the figures are in ``result.check``.
        threads: ONNX Runtime intra-op threads of the check.
        optimize: run ``ort_optimize`` on an int8 graph (``False``: the portable QDQ graph).
        opset: ONNX opset.
        min_agreement: with ``check``, the least top-1 agreement accepted.
        min_cosine: with ``check``, the least mean cosine similarity accepted.

    Returns:
        An :class:`~torchslim.deploy.check.ExportResult`.

    Raises:
        TorchslimError: an unknown format, no example input, a model that cannot be exported or
            written in that format, or a check below the minimums (naming the figure; nothing is written).
    """
    if format not in FORMATS:
        raise TorchslimError(f"export format {format!r}: unknown; allowed: {', '.join(FORMATS)}")
    if format == "hf":
        return save_pretrained(
            model, path, source=source, example_input=example_input, check=check, threads=threads, optimize=optimize,
            opset=opset, min_agreement=min_agreement, min_cosine=min_cosine,
        )
    target = Path(path)
    if target.is_dir():
        raise TorchslimError(f"export format onnx writes one file and {target} is a directory; name a file (model.onnx)")
    data, kind = onnx_artefact(model, example_from(source, example_input), optimize=optimize, opset=opset)
    result = check_onnx(model, data, check, threads=threads, what="check batches") if check is not None else None
    if result is not None:
        require_agreement(result, min_agreement=min_agreement, min_cosine=min_cosine, what=str(target))
    atomic_write_bytes(target, data)
    return ExportResult(target, "onnx", kind, target, [target.name], len(data), result)
