"""Wall-clock latency of eager PyTorch and ONNX Runtime inference (median of repeated runs)."""

from __future__ import annotations

import io
import os
import statistics
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Union

import torch
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.measure.macs import ExampleInput, call_model, eval_mode, input_device, repeat_sample

if TYPE_CHECKING:
    import onnx


@dataclass(frozen=True)
class LatencyResult:
    """Timing of ``runs`` forwards of a batch of ``batch`` samples on ``threads`` threads.

    Attributes:
        median_ms: Median milliseconds per batch.
        p10_ms: 10th percentile (fast runs) in milliseconds.
        p90_ms: 90th percentile (slow runs) in milliseconds.
        runs: Timed runs (after warm-up).
        batch: Batch size.
        threads: Intra-op threads used.
    """

    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    batch: int
    threads: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the fields."""
        return asdict(self)


@contextmanager
def num_threads(threads: int | None) -> Iterator[int]:
    """Set ``torch.set_num_threads(threads)`` for the block, restoring the previous count.

    ``None`` keeps the current count. Yields the count in effect.

    Raises:
        ValueError: ``threads`` is not a positive integer.

    Example:
        >>> with num_threads(1) as n:
        ...     n
        1
    """
    previous = torch.get_num_threads()
    if threads is None:
        yield previous
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def _result(times: list[float], batch: int, threads: int) -> LatencyResult:
    """Median and 10th/90th percentiles of per-run times (ms)."""
    ordered = sorted(times)
    return LatencyResult(
        median_ms=float(statistics.median(ordered)),
        p10_ms=_percentile(ordered, 0.10),
        p90_ms=_percentile(ordered, 0.90),
        runs=len(ordered),
        batch=batch,
        threads=threads,
    )


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` in [0, 1] of already sorted values."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def measure_latency(
    model: nn.Module,
    example_input: ExampleInput,
    *,
    batch_size: int = 64,
    threads: int | None = None,
    runs: int = 20,
    warmup: int = 3,
) -> LatencyResult:
    """Median wall time of one eager forward of a batch, in eval mode under ``no_grad``.

    The batch repeats the first sample of ``example_input`` ``batch_size`` times.
    ``torch.set_num_threads(threads)`` is in effect only while measuring; the
    previous thread count and the model's training mode are restored.

    Args:
        model: The model (on the device of ``example_input``).
        example_input: An example batch; only its first sample is used.
        batch_size: Samples per timed forward.
        threads: Intra-op threads; ``None`` means ``torch.get_num_threads()``.
        runs: Timed forwards (the median is over these).
        warmup: Untimed forwards first.

    Returns:
        A :class:`LatencyResult`.

    Raises:
        ValueError: ``batch_size``, ``threads``, ``runs`` or ``warmup`` is out of range.

    Example:
        >>> r = measure_latency(nn.Linear(784, 10), torch.randn(1, 784), batch_size=32, runs=5)
        >>> r.median_ms > 0
        True
    """
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs must be a positive integer, got {runs!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative integer, got {warmup!r}")
    batch = repeat_sample(example_input, batch_size)
    sync = input_device(batch).type == "cuda"
    times: list[float] = []
    with num_threads(threads) as used, eval_mode(model), torch.no_grad():
        for _ in range(warmup):
            call_model(model, batch)
        if sync:
            torch.cuda.synchronize()
        for _ in range(runs):
            start = time.perf_counter()
            call_model(model, batch)
            if sync:
                torch.cuda.synchronize()
            times.append((time.perf_counter() - start) * 1000.0)
    return _result(times, batch_size, used)


# ----------------------------------------------------------------------------- ONNX Runtime

OnnxSource = Union[nn.Module, str, os.PathLike, bytes, "onnx.ModelProto"]


class _FlatIO(nn.Module):
    """Wraps a model so ONNX export sees positional tensors in and a tuple of tensors out."""

    def __init__(self, model: nn.Module, keys: list[str] | None) -> None:
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, *tensors: torch.Tensor) -> Any:
        out = self.model(**dict(zip(self.keys, tensors))) if self.keys is not None else self.model(*tensors)
        if isinstance(out, torch.Tensor):
            return out
        if isinstance(out, Mapping):  # Hugging Face ModelOutput and plain dicts
            return tuple(v for v in out.values() if isinstance(v, torch.Tensor))
        if isinstance(out, (tuple, list)):
            return tuple(v for v in out if isinstance(v, torch.Tensor))
        raise TorchslimError(f"cannot export a model returning {type(out).__name__} to ONNX")


def _flat_inputs(example_input: ExampleInput) -> tuple[list[str] | None, list[str], tuple[torch.Tensor, ...]]:
    """(keyword names or None, ONNX input names, tensors in order) of an example input."""
    if isinstance(example_input, torch.Tensor):
        return None, ["input"], (example_input,)
    if isinstance(example_input, Mapping):
        keys = [str(k) for k in example_input]
        return keys, keys, tuple(example_input[k] for k in keys)
    if isinstance(example_input, (tuple, list)) and example_input:
        return None, [f"input_{i}" for i in range(len(example_input))], tuple(example_input)
    raise TorchslimError(
        "example_input must be a tensor, a non-empty tuple/list of tensors or a dict of tensors, "
        f"got {type(example_input).__name__}"
    )


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Run Hugging Face modules with the plain ("eager") attention while exporting.

    Exported through the TorchScript exporter, SDPA attention becomes a graph with
    an ``IsNaN``/``Where`` guard over every attention probability tensor: measured
    here on all-MiniLM-L6-v2 (batch 32 x 128 tokens) that guard was about 30 % of the
    int8 model's ONNX Runtime time. The eager path (``QKᵀ·s + mask → softmax → ·V``)
    computes the same function (max difference 1.6e-7 on MiniLM) without it. Every
    ``config._attn_implementation`` found on a submodule is restored afterwards;
    models without one are untouched.

    Example:
        >>> import transformers
        >>> model = transformers.BertModel(transformers.BertConfig(
        ...     vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64))
        >>> model.config._attn_implementation
        'sdpa'
        >>> with eager_attention(model):      # export in here (onnx_export_bytes does)
        ...     model.config._attn_implementation
        'eager'
        >>> model.config._attn_implementation
        'sdpa'
    """
    configs = {id(c): c for m in model.modules() if (c := getattr(m, "config", None)) is not None
               and getattr(c, "_attn_implementation", None) not in (None, "eager")}
    saved = {k: c._attn_implementation for k, c in configs.items()}
    try:
        for c in configs.values():
            c._attn_implementation = "eager"
        yield
    finally:
        for k, c in configs.items():
            c._attn_implementation = saved[k]


def onnx_export_bytes(
    model: nn.Module, example_input: ExampleInput, *, opset: int = 17, constant_folding: bool = True
) -> bytes:
    """Export ``model`` (eval mode, float) to ONNX and return the serialized model.

    Uses torch's TorchScript-based exporter (the dynamo exporter needs onnxscript,
    which is not a dependency). Inputs are named ``input`` (one tensor),
    ``input_<i>`` (positional tensors) or by their keys (a dict, e.g. a tokenizer
    output); every input and output has a dynamic batch axis 0, and integer inputs
    (token ids, attention masks) a dynamic sequence axis 1. Hugging Face
    attention is exported in its eager form (:func:`eager_attention`). The model's
    training mode is restored afterwards.

    Args:
        model: The model to export (on CPU).
        example_input: An example batch (tensor, tuple/list of tensors or dict of tensors).
        opset: ONNX opset version.
        constant_folding: let the exporter fold constant sub-graphs.

    Returns:
        The ONNX model as bytes.

    Raises:
        TorchslimError: the model or its output cannot be exported.

    Example:
        >>> data = onnx_export_bytes(nn.Linear(4, 2), torch.randn(1, 4))
        >>> len(data) > 0
        True
    """
    keys, names, tensors = _flat_inputs(example_input)
    wrapper = _FlatIO(model, keys)
    with eval_mode(model), torch.no_grad(), eager_attention(model):
        probe = wrapper(*tensors)
        n_out = 1 if isinstance(probe, torch.Tensor) else len(probe)
        out_names = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
        axes: dict[str, dict[int, str]] = {n: {0: "batch"} for n in [*names, *out_names]}
        for n, t in zip(names, tensors):  # token ids / masks: the sequence length varies too
            if t.dim() >= 2 and not t.is_floating_point():
                axes[n][1] = "sequence"
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notices
            try:
                torch.onnx.export(
                    wrapper,
                    tensors,
                    buffer,
                    dynamo=False,
                    opset_version=opset,
                    input_names=names,
                    output_names=out_names,
                    dynamic_axes=axes,
                    do_constant_folding=constant_folding,
                )
            except Exception as exc:  # the exporter raises many unrelated types
                raise TorchslimError(f"ONNX export of {type(model).__name__} failed: {exc}") from exc
    return buffer.getvalue()


def ort_session(source: bytes | str | os.PathLike[str], *, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU ``InferenceSession`` with ``intra_op_num_threads = threads``.

    ``threads=None`` uses ``torch.get_num_threads()`` so eager and ONNX Runtime
    figures compare like with like. Execution is sequential (one inter-op thread)
    with every graph optimisation enabled.

    Example:
        >>> sess = ort_session(onnx_export_bytes(nn.Linear(4, 2), torch.randn(1, 4)), threads=1)
        >>> [i.name for i in sess.get_inputs()]
        ['input']
    """
    import onnxruntime as ort

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
        >>> sess = ort_session(onnx_export_bytes(nn.Linear(4, 2), torch.randn(1, 4)))
        >>> list(ort_feed(sess, torch.zeros(3, 4)))
        ['input']
    """
    names = [i.name for i in session.get_inputs()]
    if isinstance(inputs, Mapping):
        missing = [n for n in names if n not in inputs]
        if missing:
            raise TorchslimError(f"the ONNX model needs input(s) {missing}; example_input has {list(inputs)}")
        return {n: inputs[n].detach().cpu().numpy() for n in names}
    tensors = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
    if len(tensors) != len(names):
        raise TorchslimError(f"the ONNX model takes {len(names)} input(s) {names}; example_input has {len(tensors)}")
    return {n: t.detach().cpu().numpy() for n, t in zip(names, tensors)}


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

    A PyTorch model is first exported to fp32 ONNX (:func:`onnx_export_bytes`);
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
        A :class:`LatencyResult` (``threads`` is the intra-op thread count used).

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
    return _result(times, batch_size, used)
