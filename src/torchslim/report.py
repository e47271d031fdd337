"""The report of a run or a verb: what changed, layer by layer, with the proof.

A :class:`Report` holds the before/after :class:`~torchslim.measure.Measurement`,
one :class:`LayerReport` per layer touched, every :class:`SkippedLayer` with its
reason, one :class:`StageRecord` per pipeline stage and free-form ``meta`` (model,
data, seed, machine, date...). It renders to Markdown, to ONE self-contained HTML
page (tables plus inline PNG plots, no external resource) and to JSON, which
round-trips exactly.

Example:
    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> model = ts.create_model("lenet300")
    >>> x = torch.randn(1, 784)
    >>> m0 = ts.measure(model, example_input=x, with_latency=False)
    >>> _ = ts.prune_(model, {"sparsity": 0.9, "keep_first_last": False})
    >>> m1 = ts.measure(model, example_input=x, with_latency=False)
    >>> report = Report("Prune LeNet-300-100", technique="prune", before=m0, after=m1)
    >>> paths = report.save(f"{tmp.name}/lenet300")
    >>> {kind: path.name for kind, path in paths.items()}
    {'md': 'report.md', 'html': 'report.html', 'json': 'report.json'}
    >>> tmp.cleanup()
"""

from __future__ import annotations

import base64
import copy
import datetime as _dt
import html
import io
import json
import os
import platform
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from torchslim.errors import TorchslimError
from torchslim.measure.record import FIELDS, Measurement, format_change, format_value

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from rich.table import Table

#: ``format`` key written into every report JSON.
REPORT_FORMAT = "torchslim.report"
#: Version of the report JSON layout; :func:`load_report` refuses newer ones.
REPORT_VERSION = 1

#: File names written by :meth:`Report.save`, keyed as in its return value.
REPORT_FILES: dict[str, str] = {"md": "report.md", "html": "report.html", "json": "report.json"}

#: Figures of the normalised before/after plot.
_PLOT_FIGURES: tuple[str, ...] = (
    "params",
    "nonzeros",
    "macs",
    "bytes_dense",
    "bytes_sparse",
    "latency_ms",
    "peak_memory_bytes",
)


def _require(d: Any, key: str, what: str) -> Any:
    if not isinstance(d, dict):
        raise TorchslimError(f"invalid report: {what} must be a mapping, got {type(d).__name__}")
    if key not in d:
        raise TorchslimError(f"invalid report: {what} has no {key!r}")
    return d[key]


@dataclass
class LayerReport:
    """What a technique did to one layer.

    Attributes:
        name: Qualified module name.
        kind: Module class name.
        shape: Weight shape after the technique.
        params: Weight elements after the technique.
        nonzeros: Non-zero weight elements after the technique.
        action: ``"pruned"``, ``"kept"``, ``"folded"``, ``"quantized"``...
        details: JSON-ready extra facts, e.g. ``{"criterion": "magnitude",
            "sparsity_before": 0.0, "bits": 8}``. A ``sparsity_before`` entry is drawn
            in the HTML per-layer sparsity plot.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    params: int
    nonzeros: int
    action: str = "kept"
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def sparsity(self) -> float:
        """Fraction of the layer's weight elements that are zero."""
        return 0.0 if self.params <= 0 else 1.0 - self.nonzeros / self.params

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``sparsity`` included as a derived key)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "shape": [int(s) for s in self.shape],
            "params": self.params,
            "nonzeros": self.nonzeros,
            "action": self.action,
            "details": copy.deepcopy(self.details),
            "sparsity": self.sparsity,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerReport:
        """Inverse of :meth:`to_dict`."""
        return cls(
            name=_require(d, "name", "a layer"),
            kind=_require(d, "kind", "a layer"),
            shape=tuple(int(s) for s in _require(d, "shape", "a layer")),
            params=int(_require(d, "params", "a layer")),
            nonzeros=int(_require(d, "nonzeros", "a layer")),
            action=d.get("action", "kept"),
            details=copy.deepcopy(d.get("details", {})),
        )


@dataclass
class SkippedLayer:
    """A layer a technique left alone, and why (e.g. ``"first layer kept by default"``)."""

    name: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"name": self.name, "reason": self.reason}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SkippedLayer:
        """Inverse of :meth:`to_dict`."""
        return cls(name=_require(d, "name", "a skipped layer"), reason=_require(d, "reason", "a skipped layer"))


@dataclass
class StageRecord:
    """One pipeline stage: its name and kind, wall seconds, the measurement after it, a summary."""

    name: str
    kind: str
    seconds: float
    measurement: Measurement | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "name": self.name,
            "kind": self.kind,
            "seconds": self.seconds,
            "measurement": None if self.measurement is None else self.measurement.to_dict(),
            "summary": copy.deepcopy(self.summary),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StageRecord:
        """Inverse of :meth:`to_dict`."""
        m = d.get("measurement") if isinstance(d, dict) else None
        return cls(
            name=_require(d, "name", "a stage"),
            kind=_require(d, "kind", "a stage"),
            seconds=float(_require(d, "seconds", "a stage")),
            measurement=None if m is None else Measurement.from_dict(m),
            summary=copy.deepcopy(d.get("summary", {})),
        )


def machine_meta() -> dict[str, Any]:
    """Facts about this machine and run for ``Report.meta``.

    Example:
        >>> sorted(machine_meta())
        ['cpu_count', 'date', 'platform', 'python', 'threads', 'torch']
    """
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


# ----------------------------------------------------------------------------- formatting helpers


def _fmt_scalar(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt_scalar(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt_scalar(v)}" for k, v in value.items()) + "}"
    return str(value)


def _fmt_mapping(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt_scalar(v)}" for k, v in d.items())


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            rows.extend(_flatten(value, name + "."))
        else:
            rows.append((name, _fmt_scalar(value)))
    return rows


def _shape(shape: tuple[int, ...]) -> str:
    return "×".join(str(s) for s in shape) if shape else "()"


def comparison_rows(before: Measurement | None, after: Measurement | None) -> list[tuple[str, str, str, str]]:
    """``(label, before, after, change)`` text for every figure in :data:`FIELDS` order.

    Example:
        >>> model = ts.create_model("lenet300")
        >>> x = torch.randn(1, 784)
        >>> m0 = ts.measure(model, example_input=x, with_latency=False)
        >>> _ = ts.prune_(model, {"sparsity": 0.9, "keep_first_last": False})
        >>> m1 = ts.measure(model, example_input=x, with_latency=False)
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


def _md_cell(text: Any) -> str:
    s = str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
    return s.replace("<", "&lt;").replace(">", "&gt;")


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _html_table(header: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="{"num" if i >= numeric_from else "txt"}">{html.escape(str(c))}</td>' for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


# ----------------------------------------------------------------------------- plots


def _plot_label(text: str) -> str:
    return text.replace("$", r"\$")  # no mathtext from layer names


def _png_data_uri(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _sparsity_plot(layers: list[LayerReport]) -> str | None:
    """Per-layer sparsity bars (before next to after when ``details['sparsity_before']`` exists)."""
    if not layers:
        return None
    from matplotlib.figure import Figure  # Agg rendering through savefig; pyplot is never touched

    names = [_plot_label(layer.name) for layer in layers]
    after = [100.0 * layer.sparsity for layer in layers]
    before_raw = [layer.details.get("sparsity_before") for layer in layers]
    has_before = any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in before_raw)
    width = max(6.0, 0.45 * len(layers) + 2.0)
    fig = Figure(figsize=(min(width, 24.0), 4.0))
    ax = fig.subplots()
    xs = list(range(len(layers)))
    if has_before:
        before = [100.0 * float(v) if isinstance(v, (int, float)) else 0.0 for v in before_raw]
        ax.bar([x - 0.2 for x in xs], before, width=0.4, label="before", color="#9aa5b1")
        ax.bar([x + 0.2 for x in xs], after, width=0.4, label="after", color="#2f6fb0")
        ax.legend()
    else:
        ax.bar(xs, after, width=0.6, label="after", color="#2f6fb0")
    ax.set_xticks(xs)
    ax.set_xticklabels(names, rotation=45 if len(layers) > 4 else 0, ha="right" if len(layers) > 4 else "center")
    ax.set_ylabel("sparsity (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Per-layer sparsity")
    ax.grid(axis="y", alpha=0.3)
    return _png_data_uri(fig)


def _figures_plot(before: Measurement | None, after: Measurement | None) -> str | None:
    """Key figures after compression, normalised to their value before."""
    if before is None or after is None:
        return None
    labels = {name: label for name, label, _ in FIELDS}
    names, ratios = [], []
    for name in _PLOT_FIGURES:
        b, a = getattr(before, name), getattr(after, name)
        if b is None or a is None or b <= 0:
            continue
        names.append(_plot_label(labels[name]))
        ratios.append(float(a) / float(b))
    if not names:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.0))
    ax = fig.subplots()
    xs = list(range(len(names)))
    ax.bar([x - 0.2 for x in xs], [1.0] * len(xs), width=0.4, label="before", color="#9aa5b1")
    bars = ax.bar([x + 0.2 for x in xs], ratios, width=0.4, label="after", color="#2f6fb0")
    for bar, ratio in zip(bars, ratios):
        ax.annotate(f"{ratio:.3g}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom")
    ax.set_xticks(xs)
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylabel("relative to before")
    ax.set_title("After / before")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return _png_data_uri(fig)


def _stages_plot(stages: list[StageRecord]) -> str | None:
    """Accuracy and sparsity after each stage."""
    measured = [s for s in stages if s.measurement is not None]
    if len(measured) < 2:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 3.5))
    ax = fig.subplots()
    xs = list(range(len(measured)))
    sparsity = [100.0 * s.measurement.sparsity for s in measured if s.measurement is not None]
    lines = ax.plot(xs, sparsity, marker="o", color="#2f6fb0", label="sparsity (%)")
    ax.set_ylabel("sparsity (%)", color="#2f6fb0")
    accuracy = [s.measurement.accuracy for s in measured if s.measurement is not None]
    if all(a is not None for a in accuracy):
        ax2 = ax.twinx()
        acc_pct = [100.0 * float(a) for a in accuracy if a is not None]
        lines += ax2.plot(xs, acc_pct, marker="s", color="#c0392b", label="accuracy (%)")
        ax2.set_ylabel("accuracy (%)", color="#c0392b")
    ax.legend(lines, [line.get_label() for line in lines], loc="upper left", bbox_to_anchor=(1.12, 1.0))
    ax.set_xticks(xs)
    ax.set_xticklabels([_plot_label(s.name) for s in measured], rotation=30, ha="right")
    ax.set_title("After each stage")
    ax.grid(alpha=0.3)
    return _png_data_uri(fig)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1100px;
color:#1f2933;padding:0 1em}
h1{border-bottom:2px solid #2f6fb0;padding-bottom:.2em}h2{margin-top:1.6em;color:#2f6fb0}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #cbd2d9;padding:.3em .6em}th{background:#eef2f7;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}td.txt{text-align:left}
tbody tr:nth-child(even){background:#f8fafc}img{max-width:100%;display:block;margin:.8em 0}
.muted{color:#616e7c}
"""


# ----------------------------------------------------------------------------- the report


@dataclass
class Report:
    """Everything a run or a verb did, renderable as Markdown, HTML and JSON.

    Attributes:
        title: Heading of the report.
        technique: The technique (``"prune"``, ``"quantize"``...) or ``None`` for a pipeline.
        layers: One entry per layer touched (or inspected).
        skipped: Layers left alone, each with its reason.
        before: Measurement before the technique/run.
        after: Measurement after it.
        stages: One record per pipeline stage.
        meta: JSON-ready facts (model, data, seed, machine, date, wall time...);
            see :func:`machine_meta`.

    Example:
        >>> r = Report("demo", layers=[LayerReport("fc1", "Linear", (300, 784), 235200, 23520, "pruned")])
        >>> Report.from_dict(r.to_dict()) == r
        True
    """

    title: str
    technique: str | None = None
    layers: list[LayerReport] = field(default_factory=list)
    skipped: list[SkippedLayer] = field(default_factory=list)
    before: Measurement | None = None
    after: Measurement | None = None
    stages: list[StageRecord] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    # -- JSON

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with a ``format`` tag and ``version``."""
        return {
            "format": REPORT_FORMAT,
            "version": REPORT_VERSION,
            "title": self.title,
            "technique": self.technique,
            "layers": [layer.to_dict() for layer in self.layers],
            "skipped": [s.to_dict() for s in self.skipped],
            "before": None if self.before is None else self.before.to_dict(),
            "after": None if self.after is None else self.after.to_dict(),
            "stages": [s.to_dict() for s in self.stages],
            "meta": copy.deepcopy(self.meta),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        """Inverse of :meth:`to_dict` (exact round trip).

        Raises:
            TorchslimError: ``d`` is not a torchslim report, or is of a newer version.
        """
        if not isinstance(d, dict) or d.get("format") != REPORT_FORMAT:
            raise TorchslimError(f"not a torchslim report (expected format {REPORT_FORMAT!r})")
        version = d.get("version")
        if not isinstance(version, int) or version > REPORT_VERSION:
            raise TorchslimError(
                f"report version {version!r} is not supported (this torchslim reads up to {REPORT_VERSION})"
            )
        before, after = d.get("before"), d.get("after")
        return cls(
            title=_require(d, "title", "the report"),
            technique=d.get("technique"),
            layers=[LayerReport.from_dict(x) for x in d.get("layers", [])],
            skipped=[SkippedLayer.from_dict(x) for x in d.get("skipped", [])],
            before=None if before is None else Measurement.from_dict(before),
            after=None if after is None else Measurement.from_dict(after),
            stages=[StageRecord.from_dict(x) for x in d.get("stages", [])],
            meta=copy.deepcopy(d.get("meta", {})),
        )

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON text.

        Raises:
            TorchslimError: ``details``, ``summary`` or ``meta`` hold a value JSON cannot store.

        Example:
            >>> Report("demo").to_json().startswith("{")
            True
        """
        try:
            return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise TorchslimError(f"report {self.title!r} holds a value that is not JSON-ready: {exc}") from None

    # -- rendering pieces shared by Markdown and HTML

    def _measurement_table(self) -> tuple[list[str], list[list[str]]]:
        rows = comparison_rows(self.before, self.after)
        if self.before is not None and self.after is not None:
            return ["Metric", "Before", "After", "Change"], [list(r) for r in rows]
        if self.after is not None:
            return ["Metric", "After"], [[r[0], r[2]] for r in rows]
        return ["Metric", "Before"], [[r[0], r[1]] for r in rows]

    def _stage_table(self) -> tuple[list[str], list[list[str]]]:
        header = ["Stage", "Kind", "Seconds", "Accuracy", "Non-zeros", "Sparsity", "MACs", "Bytes (sparse)",
                  "Latency", "Summary"]
        rows = []
        for s in self.stages:
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
                _fmt_mapping(s.summary),
            ])
        return header, rows

    def _layer_table(self) -> tuple[list[str], list[list[str]]]:
        header = ["Layer", "Kind", "Shape", "Params", "Non-zeros", "Sparsity", "Action", "Details"]
        rows = [
            [
                layer.name,
                layer.kind,
                _shape(layer.shape),
                format_value(layer.params, "int"),
                format_value(layer.nonzeros, "int"),
                format_value(layer.sparsity, "pct"),
                layer.action,
                _fmt_mapping(layer.details),
            ]
            for layer in self.layers
        ]
        return header, rows

    def _latency_note(self) -> str | None:
        m = self.after or self.before
        if m is None or m.latency_ms is None:
            return None
        return (
            f"Latency: median of {m.latency_runs} eager forwards of a batch of {m.latency_batch}, "
            f"{m.latency_threads} thread(s), torch.no_grad, eval mode. MACs are per sample."
        )

    # -- Markdown

    def to_markdown(self) -> str:
        """The report as Markdown (tables for figures, stages, layers and skipped layers).

        Example:
            >>> print(Report("demo").to_markdown().splitlines()[0])
            # demo
        """
        lines = [f"# {_md_cell(self.title)}", ""]
        if self.technique:
            lines += [f"Technique: **{_md_cell(self.technique)}**", ""]
        if self.meta:
            lines += _md_table(["Key", "Value"], [[k, v] for k, v in _flatten(self.meta)])
        if self.before is not None or self.after is not None:
            lines += ["## Before / after", ""]
            lines += _md_table(*self._measurement_table())
            note = self._latency_note()
            if note:
                lines += [_md_cell(note), ""]
        if self.stages:
            lines += ["## Stages", ""] + _md_table(*self._stage_table())
        if self.layers:
            lines += ["## Layers", ""] + _md_table(*self._layer_table())
        if self.skipped:
            lines += ["## Skipped layers", ""]
            lines += _md_table(["Layer", "Reason"], [[s.name, s.reason] for s in self.skipped])
        return "\n".join(lines).rstrip("\n") + "\n"

    # -- HTML

    def to_html(self) -> str:
        """The report as ONE self-contained HTML page: the Markdown tables plus inline PNG plots.

        Plots (per-layer sparsity, after/before key figures, per-stage sparsity and
        accuracy) are drawn on ``matplotlib.figure.Figure`` objects and embedded as
        base64 ``data:`` URIs; no CSS, script, font or image is fetched from anywhere.

        Example:
            >>> "<html" in Report("demo").to_html()
            True
        """
        esc = html.escape
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{esc(self.title)}</title>",
            f"<style>{_CSS}</style></head><body>",
            f"<h1>{esc(self.title)}</h1>",
        ]
        if self.technique:
            parts.append(f"<p>Technique: <strong>{esc(self.technique)}</strong></p>")
        if self.meta:
            parts.append(_html_table(["Key", "Value"], [[k, v] for k, v in _flatten(self.meta)], numeric_from=2))
        if self.before is not None or self.after is not None:
            parts.append("<h2>Before / after</h2>")
            parts.append(_html_table(*self._measurement_table()))
            note = self._latency_note()
            if note:
                parts.append(f'<p class="muted">{esc(note)}</p>')
            uri = _figures_plot(self.before, self.after)
            if uri:
                parts.append(f'<img src="{uri}" alt="key figures after compression relative to before">')
        if self.stages:
            parts.append("<h2>Stages</h2>")
            parts.append(_html_table(*self._stage_table(), numeric_from=2))
            uri = _stages_plot(self.stages)
            if uri:
                parts.append(f'<img src="{uri}" alt="sparsity and accuracy after each stage">')
        if self.layers:
            parts.append("<h2>Layers</h2>")
            parts.append(_html_table(*self._layer_table(), numeric_from=3))
            uri = _sparsity_plot(self.layers)
            if uri:
                parts.append(f'<img src="{uri}" alt="per-layer sparsity">')
        if self.skipped:
            parts.append("<h2>Skipped layers</h2>")
            parts.append(_html_table(["Layer", "Reason"], [[s.name, s.reason] for s in self.skipped], numeric_from=2))
        parts.append("</body></html>")
        return "\n".join(parts) + "\n"

    # -- files

    def save(self, directory: str | os.PathLike[str]) -> dict[str, Path]:
        """Write ``report.md``, ``report.html`` and ``report.json`` into ``directory``, each atomically.

        Each file is written to a temporary file in the same directory, flushed,
        fsynced and moved into place with ``os.replace``, so a reader never sees a
        half-written report. The directory is created if needed.

        Returns:
            ``{"md": path, "html": path, "json": path}``.

        Example:
            >>> import tempfile
            >>> tmp = tempfile.TemporaryDirectory()
            >>> paths = Report("demo").save(tmp.name)
            >>> sorted(paths)
            ['html', 'json', 'md']
            >>> tmp.cleanup()
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        texts = {"json": self.to_json(), "md": self.to_markdown(), "html": self.to_html()}
        paths: dict[str, Path] = {}
        for key, name in REPORT_FILES.items():
            paths[key] = _atomic_write_text(out / name, texts[key])
        return paths


def _atomic_write_text(path: Path, text: str) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def load_report(path: str | os.PathLike[str]) -> Report:
    """Load a report from ``report.json`` (or from a directory containing one).

    Raises:
        TorchslimError: The file is missing, is not JSON, or is not a torchslim report.

    Example:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> _ = Report("Prune LeNet-300-100", technique="prune").save(f"{tmp.name}/lenet300")
        >>> report = load_report(f"{tmp.name}/lenet300")
        >>> report.title, report.technique
        ('Prune LeNet-300-100', 'prune')
        >>> tmp.cleanup()
    """
    p = Path(path)
    if p.is_dir():
        p = p / REPORT_FILES["json"]
    if not p.is_file():
        raise TorchslimError(f"no report at {str(p)!r}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TorchslimError(f"cannot read report {str(p)!r}: {exc}") from None
    return Report.from_dict(data)


def render_console_table(before: Measurement | None, after: Measurement | None) -> Table:
    """The before/after table of every figure as a ``rich`` table for the terminal.

    Example:
        >>> import io
        >>> from rich.console import Console
        >>> model = ts.create_model("lenet300")
        >>> m0 = ts.measure(model, example_input=torch.randn(1, 784), with_latency=False)
        >>> console = Console(file=io.StringIO(), width=100)   # Console() prints to the terminal
        >>> console.print(render_console_table(m0, m0))
        >>> "│ Parameters" in console.file.getvalue()
        True
    """
    from rich.table import Table

    table = Table(title="Before / after" if before is not None and after is not None else "Measurement")
    table.add_column("Metric", style="bold")
    rows = comparison_rows(before, after)
    show_before, show_after = before is not None, after is not None or before is None
    if show_before:
        table.add_column("Before", justify="right")
    if show_after:
        table.add_column("After", justify="right")
    if show_before and after is not None:
        table.add_column("Change", justify="right")
    for label, b, a, change in rows:
        cells = [label]
        if show_before:
            cells.append(b)
        if show_after:
            cells.append(a)
        if show_before and after is not None:
            cells.append(change)
        table.add_row(*cells)
    return table
