"""Measure in one place: every figure in a report, a test or a benchmark comes from here.

Example:
    >>> from torchslim.measure import evaluate, format_value
    >>> data = ts.load_data("digits")
    >>> model = ts.create_model("lenet300", in_features=64)
    >>> test_loader, x = data.loader("test"), data.test.x
    >>> m = evaluate(model, test_loader, example_input=x[:1], latency_runs=5)
    >>> format_value(m.params, "int"), 0.0 <= m.accuracy <= 1.0
    ('50,610', True)

    :func:`evaluate` (``ts.evaluate``) was ``ts.measure`` before, a function that
    shadowed this subpackage; ``ts.measure(...)`` and ``torchslim.measure.measure``
    still work for one release, with a DeprecationWarning.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from torchslim._compat import callable_module, deprecated_alias, moved_names
from torchslim.measure.accuracy import evaluate_accuracy, evaluate_loss_and_accuracy, logits_of
from torchslim.measure.latency import (
    MAX_RUNS,
    MAX_THREADS,
    LatencyResult,
    MeasureArgumentError,
    measure_latency,
    num_threads,
)
from torchslim.measure.macs import ExampleInput, count_macs
from torchslim.measure.memory import model_state_bytes, peak_inference_memory
from torchslim.measure.probe import ProbeResult, linear_probe
from torchslim.measure.record import FIELDS, Measurement, format_change, format_value
from torchslim.measure.size import (
    count_nonzeros,
    count_params,
    dense_bytes,
    effective_parameters,
    file_bytes,
    sparse_bytes,
    tensor_sparse_bytes,
)

__all__ = [
    "FIELDS",
    "MAX_RUNS",
    "MAX_THREADS",
    "ExampleInput",
    "LatencyResult",
    "LayerStat",
    "MeasureArgumentError",
    "Measurement",
    "ProbeResult",
    "count_macs",
    "count_nonzeros",
    "count_params",
    "dense_bytes",
    "effective_parameters",
    "evaluate_accuracy",
    "evaluate_loss_and_accuracy",
    "file_bytes",
    "format_change",
    "format_value",
    "layer_stats",
    "linear_probe",
    "logits_of",
    "evaluate",
    "measure",
    "measure_latency",
    "model_state_bytes",
    "num_threads",
    "peak_inference_memory",
    "sparse_bytes",
    "tensor_sparse_bytes",
]

# ONNX export and ONNX Runtime moved to torchslim.deploy: forwarded lazily (measure imports no package above it)
__getattr__ = moved_names(
    __name__, {name: f"torchslim.deploy:{name}" for name in ("measure_ort_latency", "onnx_export_bytes", "ort_session")}
)


def evaluate(
    model: nn.Module,
    loader: Iterable[Any] | None = None,
    *,
    example_input: ExampleInput,
    latency_batch: int = 64,
    threads: int | None = None,
    latency_runs: int = 20,
    with_latency: bool = True,
    with_memory: bool = True,
) -> Measurement:
    """Measure every figure of ``model``: accuracy, sizes, MACs, latency, peak memory.

    Args:
        model: The model (its training mode is restored afterwards).
        loader: ``(inputs, targets)`` batches for top-1 accuracy; ``None`` skips accuracy.
        example_input: An example batch (its first sample drives MACs, latency, memory).
        latency_batch: Batch size for latency and peak memory.
        threads: Intra-op threads for latency (``None``: the current count).
        latency_runs: Timed runs for the latency median.
        with_latency: Measure latency (``latency_ms`` is ``None`` otherwise).
        with_memory: Measure peak memory (``peak_memory_bytes`` is ``None`` otherwise).

    Returns:
        A :class:`Measurement`.

    Example:
        >>> mlp = nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100),
        ...                     nn.ReLU(), nn.Linear(100, 10))
        >>> m = evaluate(mlp, example_input=torch.randn(1, 784), with_latency=False)
        >>> m.params, m.macs
        (266610, 266200)
    """
    accuracy = evaluate_accuracy(model, loader) if loader is not None else None
    latency_ms: float | None = None
    runs = 0
    used_threads = torch.get_num_threads() if threads is None else threads
    if with_latency:
        result = measure_latency(
            model, example_input, batch_size=latency_batch, threads=threads, runs=latency_runs
        )
        latency_ms, runs, used_threads = result.median_ms, result.runs, result.threads
    peak = peak_inference_memory(model, example_input, latency_batch) if with_memory else None
    return Measurement(
        accuracy=accuracy,
        params=count_params(model),
        nonzeros=count_nonzeros(model),
        macs=count_macs(model, example_input),
        bytes_dense=dense_bytes(model),
        bytes_sparse=sparse_bytes(model),
        latency_ms=latency_ms,
        latency_batch=latency_batch,
        latency_threads=used_threads,
        latency_runs=runs,
        peak_memory_bytes=peak,
    )


@dataclass(frozen=True)
class LayerStat:
    """Size of one layer's weight (the bias is not included).

    Attributes:
        name: Qualified module name (``features.0``).
        kind: Module class name (``Conv2d``).
        shape: Weight shape.
        params: Weight elements.
        nonzeros: Weight elements that are not zero (masks applied).
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    params: int
    nonzeros: int

    @property
    def sparsity(self) -> float:
        """Fraction of weight elements that are zero."""
        return 0.0 if self.params <= 0 else 1.0 - self.nonzeros / self.params

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the fields plus ``sparsity``."""
        out = asdict(self)
        out["shape"] = list(self.shape)
        out["sparsity"] = self.sparsity
        return out


def _owns_weight(module: nn.Module) -> bool:
    own = dict(module.named_parameters(recurse=False))
    if "weight" in own:
        return True
    if "weight_orig" in own and "weight_mask" in dict(module.named_buffers(recurse=False)):
        return True
    parametrizations = getattr(module, "parametrizations", None)
    return parametrizations is not None and "weight" in parametrizations


def _kind(module: nn.Module) -> str:
    name = type(module).__name__
    # torch.nn.utils.parametrize swaps the class for a "Parametrized<Class>" subclass
    if getattr(module, "parametrizations", None) is not None and name.startswith("Parametrized"):
        return name[len("Parametrized") :]
    return name


def layer_stats(model: nn.Module) -> list[LayerStat]:
    """Per-layer weight statistics for every module owning a ``weight`` parameter of dim >= 2.

    Covers Linear, Conv*, Embedding and any custom module with a matrix/kernel
    ``weight``; a weight pruned with ``torch.nn.utils.prune`` or parametrised is
    counted as the forward sees it. Modules appear in ``named_modules`` order.

    Example:
        >>> [s.name for s in layer_stats(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)))]
        ['0', '2']
    """
    stats: list[LayerStat] = []
    for name, module in model.named_modules():
        if not _owns_weight(module):
            continue
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
            continue
        stats.append(
            LayerStat(
                name=name,
                kind=_kind(module),
                shape=tuple(int(s) for s in weight.shape),
                params=weight.numel(),
                nonzeros=int(torch.count_nonzero(weight.detach())),
            )
        )
    return stats


measure = deprecated_alias(evaluate, "torchslim.measure.measure", "torchslim.evaluate")
callable_module(__name__, evaluate, "ts.measure", "ts.evaluate")
