"""ONNX Runtime: sessions and feeds, the offline optimisation :func:`ort_optimize`, :class:`OrtModel`
(a session called like the torch model) and ONNX Runtime latency.

Example:
    >>> from torchslim.deploy import export_fp32
    >>> ort_model = OrtModel(export_fp32(nn.Linear(4, 2), torch.randn(1, 4)), threads=1)
    >>> ort_model(torch.zeros(3, 4)).shape
    torch.Size([3, 2])
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort  # type: ignore[import-untyped]
import torch
from torch import nn

from torchslim.deploy import passes
from torchslim.deploy.export import onnx_export_bytes
from torchslim.errors import TorchslimError
from torchslim.io import atomic_write_bytes
from torchslim.measure.latency import LatencyResult, latency_result
from torchslim.measure.macs import ExampleInput, repeat_sample

__all__ = ["OnnxSource", "OrtModel", "measure_ort_latency", "ort_feed", "ort_optimize", "ort_session"]

OnnxSource = nn.Module | str | os.PathLike | bytes | onnx.ModelProto


def ort_session(source: bytes | str | os.PathLike[str], *, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU ``InferenceSession`` with ``intra_op_num_threads = threads``.

    ``threads=None`` uses ``torch.get_num_threads()`` so eager and ONNX Runtime
    figures compare like with like. Execution is sequential (one inter-op thread)
    with every graph optimisation enabled.

    Example:
        >>> from torchslim.deploy import onnx_export_bytes
        >>> sess = ort_session(onnx_export_bytes(nn.Linear(4, 2), torch.randn(1, 4)), threads=1)
        >>> [i.name for i in sess.get_inputs()]
        ['input']
    """
    used = torch.get_num_threads() if threads is None else threads
    if isinstance(used, bool) or not isinstance(used, int) or used < 1:
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = used
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    model = source if isinstance(source, bytes) else os.fspath(source)
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def ort_feed(session: Any, inputs: ExampleInput) -> dict[str, Any]:
    """Map an example input onto a session's inputs (by name for a dict, else by position).

    Example:
        >>> from torchslim.deploy import onnx_export_bytes
        >>> sess = ort_session(onnx_export_bytes(nn.Linear(4, 2), torch.randn(1, 4)))
        >>> list(ort_feed(sess, torch.zeros(3, 4)))
        ['input']
    """
    names = [i.name for i in session.get_inputs()]
    types = {i.name: i.type for i in session.get_inputs()}
    if isinstance(inputs, Mapping):
        missing = [n for n in names if n not in inputs]
        if missing:
            raise TorchslimError(f"the ONNX model needs input(s) {missing}; example_input has {list(inputs)}")
        return {n: _array(inputs[n], types[n]) for n in names}
    tensors = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
    if len(tensors) != len(names):
        raise TorchslimError(f"the ONNX model takes {len(names)} input(s) {names}; example_input has {len(tensors)}")
    return {n: _array(t, types[n]) for n, t in zip(names, tensors)}


def _array(t: torch.Tensor, onnx_type: str) -> Any:
    """A numpy array of ``t``; a floating tensor the graph reads as float32 (``tensor(float)``: a graph exported
    from a float32 copy of a bfloat16 or float16 model) as float32."""
    t = t.detach().cpu()
    return (t.float() if t.is_floating_point() and onnx_type == "tensor(float)" else t).numpy()


def measure_ort_latency(
    model_or_onnx: OnnxSource,
    example_input: ExampleInput,
    *,
    batch_size: int = 64,
    threads: int | None = None,
    runs: int = 20,
    warmup: int = 3,
) -> LatencyResult:
    """Median wall time of one ONNX Runtime (CPU) run of a batch.

    A PyTorch model is first exported to fp32 ONNX (:func:`~torchslim.deploy.onnx_export_bytes`);
    an ONNX file path, serialized bytes or an ``onnx.ModelProto`` (e.g. a
    quantized QDQ model) is run as is. The batch repeats the first sample of
    ``example_input`` ``batch_size`` times; the session uses
    ``intra_op_num_threads = threads`` (``None``: ``torch.get_num_threads()``).

    Args:
        model_or_onnx: An ``nn.Module``, an ``.onnx`` path, ONNX bytes or an ``onnx.ModelProto``.
        example_input: An example batch; only its first sample is used.
        batch_size: Samples per timed run (the ONNX model must accept it).
        threads: ONNX Runtime intra-op threads.
        runs: Timed runs (the median is over these).
        warmup: Untimed runs first.

    Returns:
        A :class:`~torchslim.measure.LatencyResult` (``threads`` is the intra-op thread count used).

    Raises:
        ValueError: ``batch_size``, ``threads``, ``runs`` or ``warmup`` is out of range.
        TorchslimError: export failed or the inputs do not fit the ONNX model.

    Example:
        >>> r = measure_ort_latency(nn.Linear(784, 10), torch.randn(1, 784), batch_size=32, threads=2, runs=5)
        >>> (r.batch, r.threads)
        (32, 2)
    """
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs must be a positive integer, got {runs!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative integer, got {warmup!r}")
    used = torch.get_num_threads() if threads is None else threads
    batch = repeat_sample(example_input, batch_size)
    if isinstance(model_or_onnx, nn.Module):
        source: bytes | str = onnx_export_bytes(model_or_onnx, example_input)
    elif isinstance(model_or_onnx, (bytes, bytearray)):
        source = bytes(model_or_onnx)
    elif isinstance(model_or_onnx, (str, os.PathLike)):
        source = os.fspath(model_or_onnx)
    elif hasattr(model_or_onnx, "SerializeToString"):
        source = model_or_onnx.SerializeToString()
    else:
        raise TorchslimError(
            "model_or_onnx must be an nn.Module, an ONNX file path, ONNX bytes or an onnx.ModelProto, "
            f"got {type(model_or_onnx).__name__}"
        )
    session = ort_session(source, threads=used)
    feed = ort_feed(session, batch)
    for _ in range(warmup):
        session.run(None, feed)
    times: list[float] = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - start) * 1000.0)
    return latency_result(times, batch_size, used)


def _ort_extended(source: bytes) -> onnx.ModelProto:
    """ONNX Runtime's hardware-independent (``ORT_ENABLE_EXTENDED``) optimisation of ``source``, saved offline."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "optimized.onnx")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = out
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])
        return onnx.load(out)


def ort_optimize(
    source: Any, path: str | os.PathLike[str] | None = None, *, fuse_attention: bool = True
) -> onnx.ModelProto:
    """ONNX Runtime's own graph optimisation of an exported model, plus the fusions it leaves out.

    ONNX Runtime rewrites a QDQ graph when it loads it (QuantizeLinear →
    integer kernel → float, ``MatMulIntegerToFloat`` for a Linear whose output
    stays float) but leaves each Linear's bias as a separate ``Add`` over the
    whole activation, although ``MatMulIntegerToFloat`` takes a bias input.
    This runs ONNX Runtime's hardware-independent (``ORT_ENABLE_EXTENDED``)
    optimisation offline, then moves every such bias into its matmul and
    (``fuse_attention``) replaces each BERT-style self-attention core
    (reshape/transpose of Q, K and V, scaled scores, additive mask, softmax,
    context) by one ``MultiHeadAttention`` node, run without the mask (through
    an ``If``) when no token is padded: the passes of
    :data:`~torchslim.deploy.passes.ORT_PASSES`, in order. Outputs are unchanged: bit for bit
    (tests check it) except that a batch without padding takes the unmasked
    kernel, equal to float rounding (about 1e-6 relative in fp32; in an int8
    graph such a difference can move a value across a rounding boundary, one
    quantization step). The result uses ``com.microsoft`` operators, so it is
    for ONNX Runtime (CPU) only: keep the :func:`~torchslim.deploy.export_qdq` file as the
    portable artefact.

    Args:
        source: an ``onnx.ModelProto``, ONNX bytes or a path.
        path: where to write the optimised model (atomically); ``None`` writes nothing.
        fuse_attention: fuse self-attention cores into ``MultiHeadAttention``
            (``proto.metadata_props`` records how many under ``torchslim.fused_attention``);
            ``False`` keeps every output bit-identical to the unoptimised graph.

    Returns:
        The optimised ``onnx.ModelProto``.

    Raises:
        TorchslimError: ``source`` is none of the accepted kinds.

    Example:
        >>> from torchslim.deploy import export_qdq, qdq_summary
        >>> from torchslim.quant import quantize_
        >>> qmodel = ts.create_model("lenet300", in_features=64)
        >>> x = torch.randn(8, 1, 8, 8)
        >>> report = quantize_(qmodel, {"weight": {"bits": 8}}, calibration=[x])
        >>> proto = export_qdq(qmodel, x[:1])
        >>> fast = ort_optimize(proto)
        >>> qdq_summary(fast)["QGemm"]                     # the hidden Linears as integer GEMMs
        2
        >>> torch.equal(OrtModel(fast, threads=2)(x), OrtModel(proto, threads=2)(x))
        True
    """
    if hasattr(source, "SerializeToString"):
        source = source.SerializeToString()
    elif isinstance(source, (str, os.PathLike)):
        source = Path(source).read_bytes()
    elif not isinstance(source, (bytes, bytearray)):
        raise TorchslimError(f"ort_optimize takes an onnx.ModelProto, bytes or a path, got {type(source).__name__}")
    proto = _ort_extended(bytes(source))
    counts = passes.run_passes(proto, passes.ORT_PASSES, skip=() if fuse_attention else ("fuse_attention",))
    if fuse_attention:
        entry = proto.metadata_props.add()
        entry.key, entry.value = "torchslim.fused_attention", str(counts["fuse_attention"])
    if path is not None:
        atomic_write_bytes(Path(path), proto.SerializeToString())
    return proto


class OrtModel:
    """A callable ONNX Runtime session: tensors in, tensors out (like the torch model).

    Args:
        source: an ``onnx.ModelProto``, ONNX bytes or a path.
        threads: intra-op threads (``None``: ``torch.get_num_threads()``).

    Example:
        >>> from torchslim.deploy import export_fp32
        >>> ort_model = OrtModel(export_fp32(nn.Linear(4, 2), torch.randn(1, 4)), threads=1)
        >>> ort_model(torch.zeros(3, 4)).shape
        torch.Size([3, 2])
    """

    def __init__(self, source: Any, *, threads: int | None = None) -> None:
        if hasattr(source, "SerializeToString"):
            source = source.SerializeToString()
        self.session = ort_session(source, threads=threads)

    def __call__(self, inputs: ExampleInput) -> torch.Tensor | tuple[torch.Tensor, ...]:
        outs = self.session.run(None, ort_feed(self.session, inputs))
        tensors = tuple(torch.from_numpy(np.asarray(o)) for o in outs)
        return tensors[0] if len(tensors) == 1 else tensors

    @torch.no_grad()
    def accuracy(self, loader: Any) -> float:
        """Top-1 accuracy over ``(inputs, labels)`` batches.

        Example:
            >>> from torchslim.deploy import export_fp32
            >>> ort_model = OrtModel(export_fp32(nn.Linear(4, 2), torch.randn(1, 4)))
            >>> ort_model.accuracy([(torch.zeros(2, 4), torch.tensor([0, 1]))])   # same logits twice: one right
            0.5
        """
        correct = total = 0
        for x, y in loader:
            out = self(x)
            logits = out[0] if isinstance(out, tuple) else out
            correct += int((logits.argmax(-1) == y).sum())
            total += int(y.numel())
        if total == 0:
            raise TorchslimError("the loader is empty")
        return correct / total
