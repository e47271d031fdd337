"""Wall-clock latency of eager PyTorch inference (median of repeated runs).

ONNX export and ONNX Runtime timing (``onnx_export_bytes``, ``ort_session``,
``ort_feed``, ``measure_ort_latency``, ``eager_attention``) moved to
:mod:`torchslim.deploy`; the old names here still work and warn.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from torchslim._compat import moved_names
from torchslim.errors import TorchslimError
from torchslim.measure.macs import ExampleInput, call_model, eval_mode, input_device, repeat_sample

__all__ = ["MAX_RUNS", "MAX_THREADS", "LatencyResult", "MeasureArgumentError", "latency_result", "measure_latency", "num_threads"]

#: the most intra-op threads torchslim asks torch for (a fixed cap, the same on every machine: a recipe that
#: validates here validates everywhere); torch's thread pools crash the process on absurd counts
MAX_THREADS = 256
#: the most timed runs of one latency measurement
MAX_RUNS = 10_000


class MeasureArgumentError(TorchslimError, ValueError):
    """A measuring argument (``threads``, ``runs``, ``warmup``) is out of range; also a ``ValueError``."""


def _bounded_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise MeasureArgumentError(f"{name} must be an integer in {low}..{high}, got {value!r}")
    return value


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
        MeasureArgumentError: ``threads`` is not an integer in 1..:data:`MAX_THREADS`
            (checked before torch sees it: torch's thread pools crash on absurd counts).

    Example:
        >>> with num_threads(1) as n:
        ...     n
        1
    """
    previous = torch.get_num_threads()
    if threads is None:
        yield previous
        return
    torch.set_num_threads(_bounded_int("threads", threads, 1, MAX_THREADS))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def latency_result(times: list[float], batch: int, threads: int) -> LatencyResult:
    """Median and 10th/90th percentiles of per-run times (ms): the result of any timing loop.

    Example:
        >>> r = latency_result([3.0, 1.0, 2.0], batch=8, threads=1)
        >>> r.median_ms, r.p10_ms, r.runs
        (2.0, 1.2, 3)
    """
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
        ValueError: ``batch_size``, ``threads``, ``runs`` (1..:data:`MAX_RUNS`) or ``warmup``
            (0..:data:`MAX_RUNS`) is out of range (:class:`MeasureArgumentError` for the last three).

    Example:
        >>> r = measure_latency(nn.Linear(784, 10), torch.randn(1, 784), batch_size=32, runs=5)
        >>> r.median_ms > 0
        True
    """
    _bounded_int("runs", runs, 1, MAX_RUNS)
    _bounded_int("warmup", warmup, 0, MAX_RUNS)
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
    return latency_result(times, batch_size, used)


# names that moved to torchslim.deploy (ONNX export and ONNX Runtime): forwarded lazily, with a warning,
# because measure imports no package above it
__getattr__ = moved_names(
    __name__,
    {
        **{name: f"torchslim.deploy:{name}" for name in (
            "OnnxSource", "eager_attention", "onnx_export_bytes", "measure_ort_latency", "ort_feed", "ort_session",
        )},
        "_FlatIO": "torchslim.deploy.export:_FlatIO",
        "_flat_inputs": "torchslim.deploy.export:_flat_inputs",
    },
)
