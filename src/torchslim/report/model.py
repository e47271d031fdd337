"""The report's data: :class:`Report`, :class:`LayerReport`, :class:`SkippedLayer`, :class:`StageRecord`.

Everything here round-trips through JSON exactly (:meth:`Report.to_dict` /
:meth:`Report.from_dict`, :func:`load_report`); the renderers live beside this
module (:mod:`~torchslim.report.markdown`, :mod:`~torchslim.report.html`,
:mod:`~torchslim.report.console`) and the files in :mod:`~torchslim.report.io`.

Example:
    >>> fc = nn.Linear(4, 3)
    >>> fc.weight.data[0] = 0.0
    >>> report = Report.of("prune", [LayerReport.of("fc", fc, "pruned")])
    >>> report.layers[0].nonzeros, round(report.layers[0].sparsity, 3)
    (8, 0.333)
    >>> Report.from_dict(report.to_dict()) == report
    True
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import math
import os
import platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.measure.record import Measurement
from torchslim.report import io as report_io
from torchslim.report.html import to_html
from torchslim.report.markdown import to_markdown

#: ``format`` key written into every report JSON.
REPORT_FORMAT = "torchslim.report"
#: Version of the report JSON layout; :func:`load_report` refuses newer ones.
REPORT_VERSION = 1


class Named(Protocol):
    """Anything with a ``name`` (a technique object): what :meth:`Report.of` accepts besides a string."""

    @property
    def name(self) -> str: ...


_MISSING: Any = object()


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _require(d: Any, key: str, what: str) -> Any:
    if not isinstance(d, dict):
        raise TorchslimError(f"invalid report: {what} must be a mapping, got {_kind(d)}")
    if key not in d:
        raise TorchslimError(f"invalid report: {what} has no {key!r}")
    return d[key]


def _typed(d: Any, key: str, what: str, kinds: type | tuple[type, ...], allowed: str, default: Any = _MISSING) -> Any:
    """``d[key]`` (or ``default`` when absent) if it is one of ``kinds`` (a bool is no number), else naming the field."""
    if default is not _MISSING and isinstance(d, dict) and key not in d:
        return default
    value = _require(d, key, what)
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise TorchslimError(f"invalid report: {what}'s {key!r} must be {allowed}, got {_kind(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise TorchslimError(f"invalid report: {what}'s {key!r} must be finite, got {value!r}")
    return value


def _measurement(value: Any, what: str) -> Measurement | None:
    """A measurement read from report JSON (``None`` stays ``None``), its figures finite numbers."""
    if value is None:
        return None
    if isinstance(value, dict):
        bad = [k for k, v in value.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise TorchslimError(f"invalid report: {what}'s {bad[0]!r} must be finite, got {value[bad[0]]!r}")
    try:
        return Measurement.from_dict(value)
    except TorchslimError as exc:
        raise TorchslimError(f"invalid report: {what}: {exc}") from None


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

    @classmethod
    def of(
        cls,
        name: str,
        module: nn.Module,
        action: str = "kept",
        details: Mapping[str, Any] | None = None,
        *,
        weight: torch.Tensor | None = None,
        kind: str | None = None,
    ) -> LayerReport:
        """The report of ``module``'s weight as it is now.

        Args:
            name: Qualified module name.
            module: The layer, after the technique.
            action: What was done (``"pruned"``, ``"quantized"``...).
            details: JSON-ready extra facts (copied).
            weight: The tensor to count instead of ``module.weight`` (e.g. the
                dequantized weight of a quantized layer).
            kind: The kind to record instead of ``type(module).__name__``.

        Returns:
            ``shape``, ``params`` and ``nonzeros`` of the weight.

        Raises:
            TorchslimError: ``weight`` is not given and ``module.weight`` is not a tensor.

        Example:
            >>> fc = nn.Linear(4, 3)
            >>> fc.weight.data[0] = 0.0
            >>> LayerReport.of("fc1", fc, "pruned", {"criterion": "magnitude"})
            LayerReport(name='fc1', kind='Linear', shape=(3, 4), params=12, nonzeros=8, action='pruned', details={'criterion': 'magnitude'})
            >>> LayerReport.of("fc1", fc, "quantized", weight=torch.zeros(3, 4), kind="QLinear").nonzeros
            0
        """
        w = getattr(module, "weight", None) if weight is None else weight
        if not isinstance(w, torch.Tensor):
            raise TorchslimError(
                f"layer {name!r} ({type(module).__name__}) has no weight tensor (weight is {type(w).__name__}); "
                "pass the tensor to count as weight="
            )
        return cls(
            name=name,
            kind=type(module).__name__ if kind is None else kind,
            shape=tuple(w.shape),
            params=w.numel(),
            nonzeros=int(torch.count_nonzero(w)),
            action=action,
            details={} if details is None else dict(details),
        )

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
        name = _typed(d, "name", "a layer", str, "a string")
        what = f"layer {name!r}"
        shape = _typed(d, "shape", what, list, "a list of integers")
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
            raise TorchslimError(f"invalid report: {what}'s 'shape' must be a list of integers >= 0, got {shape!r:.80}")
        return cls(
            name=name,
            kind=_typed(d, "kind", what, str, "a string"),
            shape=tuple(shape),
            params=_typed(d, "params", what, int, "an integer"),
            nonzeros=_typed(d, "nonzeros", what, int, "an integer"),
            action=_typed(d, "action", what, str, "a string", "kept"),
            details=copy.deepcopy(_typed(d, "details", what, dict, "a mapping", {})),
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
        return cls(
            name=_typed(d, "name", "a skipped layer", str, "a string"),
            reason=_typed(d, "reason", "a skipped layer", str, "a string"),
        )


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
        name = _typed(d, "name", "a stage", str, "a string")
        what = f"stage {name!r}"
        return cls(
            name=name,
            kind=_typed(d, "kind", what, str, "a string"),
            seconds=float(_typed(d, "seconds", what, (int, float), "a number")),
            measurement=_measurement(_typed(d, "measurement", what, (dict, type(None)), "a mapping or null", None), what),
            summary=copy.deepcopy(_typed(d, "summary", what, dict, "a mapping", {})),
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

    @classmethod
    def of(
        cls,
        technique: str | Named,
        layers: Iterable[LayerReport] = (),
        skipped: Iterable[SkippedLayer] = (),
        meta: Mapping[str, Any] | None = None,
        title: str | None = None,
    ) -> Report:
        """The report of one technique's run: what it did to each layer and what it left alone.

        Args:
            technique: The technique's name, or an object with a ``name`` (a technique object).
            layers: One entry per layer transformed.
            skipped: Layers left alone, each with its reason.
            meta: JSON-ready facts about the run (copied).
            title: Heading; the technique's name when ``None``.

        Raises:
            TorchslimError: ``technique`` is neither a string nor has a string ``name``.

        Example:
            >>> r = Report.of("quantize", skipped=[SkippedLayer("head", "last layer kept by default")],
            ...               meta={"bits": 8})
            >>> r.title, r.technique, r.layers, r.skipped[0].reason, r.meta
            ('quantize', 'quantize', [], 'last layer kept by default', {'bits': 8})
        """
        name = technique if isinstance(technique, str) else getattr(technique, "name", None)
        if not isinstance(name, str):
            raise TorchslimError(
                f"Report.of: technique must be a name or an object with a string .name, got {type(technique).__name__}"
            )
        return cls(
            title=name if title is None else title,
            technique=name,
            layers=list(layers),
            skipped=list(skipped),
            meta={} if meta is None else dict(meta),
        )

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

        Every field is checked before it is used: a damaged report (a field of the wrong
        type, nesting deeper than :data:`~torchslim.report.io.MAX_JSON_DEPTH`, an integer
        beyond 64 bits, a non-finite figure) is refused naming the field.

        Raises:
            TorchslimError: ``d`` is not a torchslim report, is of a newer version, or is damaged.

        Example:
            >>> Report.from_dict({**Report("demo").to_dict(), "layers": {"fc1": 3}})
            Traceback (most recent call last):
            ...
            torchslim.errors.TorchslimError: invalid report: the report's 'layers' must be a list, got dict
        """
        if not isinstance(d, dict) or d.get("format") != REPORT_FORMAT:
            raise TorchslimError(f"not a torchslim report (expected format {REPORT_FORMAT!r})")
        version = d.get("version")
        if not isinstance(version, int) or version > REPORT_VERSION:
            raise TorchslimError(
                f"report version {version!r} is not supported (this torchslim reads up to {REPORT_VERSION})"
            )
        report_io.check_json(d, "invalid report")
        what = "the report"
        return cls(
            title=_typed(d, "title", what, str, "a string"),
            technique=_typed(d, "technique", what, (str, type(None)), "a string or null", None),
            layers=[LayerReport.from_dict(x) for x in _typed(d, "layers", what, list, "a list", [])],
            skipped=[SkippedLayer.from_dict(x) for x in _typed(d, "skipped", what, list, "a list", [])],
            before=_measurement(_typed(d, "before", what, (dict, type(None)), "a mapping or null", None), "'before'"),
            after=_measurement(_typed(d, "after", what, (dict, type(None)), "a mapping or null", None), "'after'"),
            stages=[StageRecord.from_dict(x) for x in _typed(d, "stages", what, list, "a list", [])],
            meta=copy.deepcopy(_typed(d, "meta", what, dict, "a mapping", {})),
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

    # -- renderings and files

    def to_markdown(self) -> str:
        """The report as Markdown (tables for figures, stages, layers and skipped layers).

        See :func:`torchslim.report.markdown.to_markdown`.

        Example:
            >>> print(Report("demo").to_markdown().splitlines()[0])
            # demo
        """
        return to_markdown(self)

    def to_html(self) -> str:
        """The report as ONE self-contained HTML page: the Markdown tables plus inline PNG plots.

        Plots (per-layer sparsity, after/before key figures, per-stage sparsity and
        accuracy) are drawn on ``matplotlib.figure.Figure`` objects and embedded as
        base64 ``data:`` URIs; no CSS, script, font or image is fetched from anywhere.
        See :func:`torchslim.report.html.to_html`.

        Example:
            >>> "<html" in Report("demo").to_html()
            True
        """
        return to_html(self)

    def save(self, directory: str | os.PathLike[str]) -> dict[str, Path]:
        """Write ``report.md``, ``report.html`` and ``report.json`` into ``directory``, each atomically.

        Each file is written to a temporary file in the same directory, flushed,
        fsynced and moved into place with ``os.replace``, so a reader never sees a
        half-written report. The directory is created if needed. See
        :func:`torchslim.report.io.save`.

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
        return report_io.save(self, directory)


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
    return Report.from_dict(report_io.read_report_json(path))
