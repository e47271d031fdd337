"""The :class:`Measurement` record and the formatting of its figures.

A ``Measurement`` is the one set of numbers every report, test, benchmark and
CLI command prints. ``FIELDS`` lists them in display order with a label and a
format kind; :func:`format_value` turns one value into display text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from torchslim.errors import TorchslimError

#: Keys of :meth:`Measurement.to_dict` that are derived from other fields.
DERIVED_KEYS: tuple[str, ...] = ("sparsity",)
#: Fields added after the first release: absent in older records, read as ``None``.
_OPTIONAL_KEYS: tuple[str, ...] = ("bytes_file",)


@dataclass(frozen=True)
class Measurement:
    """Every figure torchslim reports about one model at one point of a run.

    Attributes:
        accuracy: Top-1 accuracy as a fraction in ``[0, 1]`` on the given loader;
            ``None`` when no loader was given.
        params: Parameter elements (``nn.Parameter.numel()`` summed; buffers such as
            pruning masks are not counted).
        nonzeros: Parameter elements that are not zero (with ``torch.nn.utils.prune``
            style ``*_orig``/``*_mask`` pairs, the masked weight is counted).
        macs: Dense multiply-accumulates for ONE sample, from
            ``torch.utils.flop_counter.FlopCounterMode`` (``flops // 2``).
        bytes_dense: Parameters stored dense at their dtype (fp32: 4 bytes each).
        bytes_sparse: Parameters stored sparse: the sum over tensors of
            ``min(dense, nnz * itemsize + index_bytes)`` where
            ``index_bytes = min(ceil(numel / 8), nnz * index_width)`` (a bitmap or a
            list of indices, whichever is smaller) and ``index_width`` is 2 bytes when
            ``numel <= 65536`` else 4.
        latency_ms: Median wall time in milliseconds of one eager forward of a batch
            of ``latency_batch`` samples under ``torch.no_grad()`` in eval mode;
            ``None`` when latency was not measured.
        latency_batch: Batch size of the latency (and peak memory) measurement.
        latency_threads: ``torch.get_num_threads()`` during the latency measurement.
        latency_runs: Number of timed runs the median is taken over.
        peak_memory_bytes: Peak bytes live during one inference forward of
            ``latency_batch`` samples: parameter + buffer + input bytes plus the peak
            of activation allocations recorded by the profiler; ``None`` when not
            measured.

    Example:
        >>> m = Measurement(accuracy=0.98, params=10, nonzeros=5, macs=8,
        ...                 bytes_dense=40, bytes_sparse=22, latency_ms=None,
        ...                 latency_batch=1, latency_threads=1, latency_runs=0,
        ...                 peak_memory_bytes=None)
        >>> m.sparsity
        0.5
        >>> Measurement.from_dict(m.to_dict()) == m
        True
    """

    accuracy: float | None
    params: int
    nonzeros: int
    macs: int
    bytes_dense: int
    bytes_sparse: int
    latency_ms: float | None
    latency_batch: int
    latency_threads: int
    latency_runs: int
    peak_memory_bytes: int | None
    bytes_file: int | None = None

    @property
    def sparsity(self) -> float:
        """Fraction of parameter elements that are zero (0.0 for a model without parameters)."""
        if self.params <= 0:
            return 0.0
        return 1.0 - self.nonzeros / self.params

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of every field plus the derived ``sparsity``.

        Example:
            >>> import json
            >>> measurement = Measurement(accuracy=0.98, params=10, nonzeros=5, macs=8,
            ...                           bytes_dense=40, bytes_sparse=22, latency_ms=None,
            ...                           latency_batch=1, latency_threads=1, latency_runs=0,
            ...                           peak_memory_bytes=None)
            >>> d = measurement.to_dict()
            >>> d["sparsity"], d["latency_ms"]
            (0.5, None)
            >>> json.loads(json.dumps(d)) == d
            True
        """
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["sparsity"] = self.sparsity
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Measurement:
        """Rebuild a ``Measurement`` from :meth:`to_dict` output (derived keys ignored).

        Raises:
            TorchslimError: A field is missing, a key is unknown, or a value has the
                wrong type.

        Example:
            >>> m = Measurement(accuracy=None, params=10, nonzeros=10, macs=8,
            ...                 bytes_dense=40, bytes_sparse=40, latency_ms=0.5,
            ...                 latency_batch=64, latency_threads=2, latency_runs=20,
            ...                 peak_memory_bytes=1024)
            >>> Measurement.from_dict(m.to_dict()) == m
            True
        """
        if not isinstance(d, dict):
            raise TorchslimError(f"a measurement must be a mapping, got {type(d).__name__}")
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in d and n not in _OPTIONAL_KEYS]
        unknown = sorted(set(d) - set(names) - set(DERIVED_KEYS))
        if missing or unknown:
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing)}")
            if unknown:
                parts.append(f"unknown {', '.join(unknown)}")
            raise TorchslimError(f"invalid measurement: {'; '.join(parts)}")
        values: dict[str, Any] = {}
        for name in names:
            value = d.get(name)
            optional = name in ("accuracy", "latency_ms", "peak_memory_bytes", *_OPTIONAL_KEYS)
            as_float = name in ("accuracy", "latency_ms")
            if value is None:
                if not optional:
                    raise TorchslimError(f"invalid measurement: {name} must not be null")
                values[name] = None
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TorchslimError(f"invalid measurement: {name} must be a number, got {value!r}")
            elif as_float:
                values[name] = float(value)
            else:
                if isinstance(value, float) and not value.is_integer():
                    raise TorchslimError(f"invalid measurement: {name} must be an integer, got {value!r}")
                values[name] = int(value)
        return cls(**values)


#: Display order of every figure: ``(field, label, kind)``; ``kind`` is one of
#: ``pct``, ``int``, ``bytes``, ``ms`` or ``setting`` (a measurement condition,
#: printed as an integer and never compared as a gain).
FIELDS: list[tuple[str, str, str]] = [
    ("accuracy", "Accuracy", "pct"),
    ("params", "Parameters", "int"),
    ("nonzeros", "Non-zeros", "int"),
    ("sparsity", "Sparsity", "pct"),
    ("macs", "MACs", "int"),
    ("bytes_dense", "Bytes (dense fp32)", "bytes"),
    ("bytes_sparse", "Bytes (sparse)", "bytes"),
    ("bytes_file", "Bytes on disk (.tslim)", "bytes"),
    ("latency_ms", "Latency (ms/batch)", "ms"),
    ("peak_memory_bytes", "Peak memory", "bytes"),
    ("latency_batch", "Latency batch size", "setting"),
    ("latency_threads", "Latency threads", "setting"),
    ("latency_runs", "Latency runs", "setting"),
]

_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
FORMAT_KINDS: tuple[str, ...] = ("pct", "int", "bytes", "ms", "setting", "float")


def format_value(value: float | int | None, kind: str) -> str:
    """Format one figure for display.

    Args:
        value: The value; ``None`` prints as an em dash.
        kind: ``pct`` (a fraction, printed as percent), ``int`` (thousands
            separators), ``bytes`` (binary units), ``ms`` (milliseconds),
            ``setting`` (plain integer) or ``float``.

    Returns:
        The display text.

    Raises:
        ValueError: ``kind`` is not one of the kinds above.

    Example:
        >>> format_value(0.9821, "pct"), format_value(266610, "int")
        ('98.21 %', '266,610')
        >>> format_value(1069547, "bytes"), format_value(0.4123, "ms"), format_value(None, "ms")
        ('1.02 MiB', '0.412 ms', '—')
    """
    if kind not in FORMAT_KINDS:
        raise ValueError(f"unknown format kind {kind!r}; allowed: {', '.join(FORMAT_KINDS)}")
    if value is None:
        return "—"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if kind == "pct":
        return f"{100.0 * value:.2f} %"
    if kind in ("int", "setting"):
        return f"{int(round(value)):,}"
    if kind == "bytes":
        size = float(value)
        if abs(size) < 1024:
            return f"{int(round(size)):,} B"
        unit = 0
        while abs(size) >= 1024 and unit < len(_BYTE_UNITS) - 1:
            size /= 1024.0
            unit += 1
        return f"{size:.2f} {_BYTE_UNITS[unit]}"
    if kind == "ms":
        v = float(value)
        if abs(v) < 10:
            return f"{v:.3f} ms"
        if abs(v) < 100:
            return f"{v:.2f} ms"
        return f"{v:,.1f} ms"
    return f"{float(value):.4g}"


def format_change(before: float | int | None, after: float | int | None, kind: str) -> str:
    """Describe how a figure changed from ``before`` to ``after``.

    Accuracy-like (``pct``) figures change by percentage points; counts, bytes and
    times by a ratio (``"9.8x fewer"``, ``"2.0x smaller"``, ``"1.3x faster"``);
    settings print ``same`` or ``changed``.

    Example:
        >>> format_change(0.9821, 0.9809, "pct"), format_change(266610, 27200, "int")
        ('-0.12 pt', '9.8x fewer')
    """
    if before is None or after is None:
        return "—"
    if kind == "setting":
        return "same" if before == after else "changed"
    if kind == "pct":
        diff = 100.0 * (float(after) - float(before))
        if abs(diff) < 0.005:
            return "0.00 pt"
        return f"{diff:+.2f} pt"
    if kind == "float":
        return f"{float(after) - float(before):+.4g}"
    b, a = float(before), float(after)
    if a == b:
        return "same"
    down, up = {"int": ("fewer", "more"), "bytes": ("smaller", "larger"), "ms": ("faster", "slower")}[kind]
    if a == 0:
        return f"all removed ({down})" if kind != "ms" else f"→ 0 ({down})"
    if b == 0:
        return f"from 0 ({up})"
    ratio, word = (b / a, down) if a < b else (a / b, up)
    return f"{ratio:.2f}x {word}" if ratio < 1.995 else f"{ratio:.1f}x {word}"
