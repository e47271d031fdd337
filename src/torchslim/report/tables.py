"""The text of a report's tables, shared by the Markdown, HTML and console renderers.

Each ``*_table`` function returns ``(header, rows)`` of display strings; the
renderers only escape and lay them out.

Example:
    >>> from torchslim.report import LayerReport, Report
    >>> r = Report("demo", layers=[LayerReport("fc1", "Linear", (300, 784), 235200, 23520, "pruned")])
    >>> header, rows = layer_table(r)
    >>> rows[0][:3], rows[0][5]
    (['fc1', 'Linear', '300×784'], '90.00 %')
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torchslim.measure.record import FIELDS, Measurement, format_change, format_value

if TYPE_CHECKING:
    from torchslim.report.model import Report

#: A table: its header and its rows of display strings.
Table = tuple[list[str], list[list[str]]]


def fmt_scalar(value: Any) -> str:
    """Display text of one JSON-ready value (floats to 4 significant digits, recursively).

    Example:
        >>> fmt_scalar({"bits": [4, 8], "err": 0.123456})
        '{bits: [4, 8], err: 0.1235}'
    """
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt_scalar(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {fmt_scalar(v)}" for k, v in value.items()) + "}"
    return str(value)


def fmt_mapping(d: dict[str, Any]) -> str:
    """``key=value, ...`` text of a mapping (the *Details* and *Summary* columns)."""
    return ", ".join(f"{k}={fmt_scalar(v)}" for k, v in d.items())


def flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """``(dotted key, display text)`` of every leaf of a nested mapping (the *meta* table).

    Example:
        >>> flatten({"model": "lenet", "machine": {"threads": 2}, "empty": {}})
        [('model', 'lenet'), ('machine.threads', '2'), ('empty', '{}')]
    """
    rows: list[tuple[str, str]] = []
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            rows.extend(flatten(value, name + "."))
        else:
            rows.append((name, fmt_scalar(value)))
    return rows


def fmt_shape(shape: tuple[int, ...]) -> str:
    """``300×784`` (``()`` for a scalar)."""
    return "×".join(str(s) for s in shape) if shape else "()"


def comparison_rows(before: Measurement | None, after: Measurement | None) -> list[tuple[str, str, str, str]]:
    """``(label, before, after, change)`` text for every figure in :data:`FIELDS` order.

    Example:
        >>> model = ts.create_model("lenet300")
        >>> x = torch.randn(1, 784)
        >>> m0 = ts.evaluate(model, example_input=x, with_latency=False)
        >>> _ = ts.prune_(model, {"sparsity": 0.9, "keep_first_last": False})
        >>> m1 = ts.evaluate(model, example_input=x, with_latency=False)
        >>> comparison_rows(m0, m1)[1]
        ('Parameters', '266,610', '266,610', 'same')
        >>> comparison_rows(m0, m1)[2]
        ('Non-zeros', '266,610', '27,030', '9.9x fewer')
    """
    rows = []
    for name, label, kind in FIELDS:
        b = None if before is None else getattr(before, name)
        a = None if after is None else getattr(after, name)
        change = format_change(b, a, kind)
        if name == "bytes_file" and b is None and a is not None and before is not None:
            # the model had no file before: its size is set against the dense fp32 bytes
            change = format_change(before.bytes_dense, a, kind) + " than dense fp32"
        rows.append((label, format_value(b, kind), format_value(a, kind), change))
    return rows


def meta_table(report: Report) -> Table:
    """``Key | Value`` rows of the flattened ``meta``."""
    return ["Key", "Value"], [[k, v] for k, v in flatten(report.meta)]


def measurement_table(report: Report) -> Table:
    """Before / after / change of every figure (only the side present when one is missing)."""
    rows = comparison_rows(report.before, report.after)
    if report.before is not None and report.after is not None:
        return ["Metric", "Before", "After", "Change"], [list(r) for r in rows]
    if report.after is not None:
        return ["Metric", "After"], [[r[0], r[2]] for r in rows]
    return ["Metric", "Before"], [[r[0], r[1]] for r in rows]


def stage_table(report: Report) -> Table:
    """One row per pipeline stage: time, key figures after it, its summary."""
    header = ["Stage", "Kind", "Seconds", "Accuracy", "Non-zeros", "Sparsity", "MACs", "Bytes (sparse)",
              "Latency", "Summary"]
    rows = []
    for s in report.stages:
        m = s.measurement
        rows.append([
            s.name,
            s.kind,
            f"{s.seconds:.2f}",
            format_value(None if m is None else m.accuracy, "pct"),
            format_value(None if m is None else m.nonzeros, "int"),
            format_value(None if m is None else m.sparsity, "pct"),
            format_value(None if m is None else m.macs, "int"),
            format_value(None if m is None else m.bytes_sparse, "bytes"),
            format_value(None if m is None else m.latency_ms, "ms"),
            fmt_mapping(s.summary),
        ])
    return header, rows


def layer_table(report: Report) -> Table:
    """One row per layer: shape, counts, sparsity, action and details."""
    header = ["Layer", "Kind", "Shape", "Params", "Non-zeros", "Sparsity", "Action", "Details"]
    rows = [
        [
            layer.name,
            layer.kind,
            fmt_shape(layer.shape),
            format_value(layer.params, "int"),
            format_value(layer.nonzeros, "int"),
            format_value(layer.sparsity, "pct"),
            layer.action,
            fmt_mapping(layer.details),
        ]
        for layer in report.layers
    ]
    return header, rows


def skipped_table(report: Report) -> Table:
    """``Layer | Reason`` of every skipped layer."""
    return ["Layer", "Reason"], [[s.name, s.reason] for s in report.skipped]


def latency_note(report: Report) -> str | None:
    """How latency was measured (on which device, by which runtime), or ``None`` when it was not.

    Example:
        >>> from torchslim.measure import Measurement
        >>> m = Measurement(accuracy=None, params=1, nonzeros=1, macs=1, bytes_dense=4, bytes_sparse=4,
        ...                 latency_ms=1.0, latency_batch=64, latency_threads=2, latency_runs=20, peak_memory_bytes=None)
        >>> from torchslim.report import Report
        >>> latency_note(Report("r", before=m, after=m, meta={"device": "cpu"}))
        'Latency: median of 20 eager forwards of a batch of 64 on cpu, 2 thread(s), torch.no_grad, eval mode. MACs are per sample.'
        >>> print(latency_note(Report("r", before=m, after=m, meta={"device": "cpu", "after_measured_on": "model.onnx in ONNX Runtime (CPU)"})))
        Latency: before: median of 20 eager forwards of a batch of 64 on cpu, 2 thread(s), torch.no_grad, eval mode; after: model.onnx in ONNX Runtime (CPU), median of 20 runs of a batch of 64, 2 intra-op thread(s) (the torch figures of the exported model, a simulation when it is quantized, are in meta simulation). MACs are per sample.
    """
    m = report.after or report.before
    if m is None or m.latency_ms is None:
        return None
    device = report.meta.get("device")
    where = f" on {device}" if device else ""
    deployed = report.meta.get("after_measured_on")
    b = report.before
    if deployed and report.after is not None:
        before = ""
        if b is not None and b.latency_ms is not None:
            before = (f"before: median of {b.latency_runs} eager forwards of a batch of {b.latency_batch}{where}, "
                      f"{b.latency_threads} thread(s), torch.no_grad, eval mode; ")
        a = report.after
        return (
            f"Latency: {before}after: {deployed}, median of {a.latency_runs} runs of a batch of {a.latency_batch}, "
            f"{a.latency_threads} intra-op thread(s) (the torch figures of the exported model, a simulation when it is "
            "quantized, are in meta simulation). MACs are per sample."
        )
    return (
        f"Latency: median of {m.latency_runs} eager forwards of a batch of {m.latency_batch}{where}, "
        f"{m.latency_threads} thread(s), torch.no_grad, eval mode. MACs are per sample."
    )
