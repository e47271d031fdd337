"""The result of a sensitivity analysis: per analysis, per unit, per setting, the metric and the cost changes.

It is the table the search's planner reads: for each layer (or coupled channel
group) and each setting, the measured accuracy, loss and output SQNR, and what the
setting changes in the whole model: parameters, non-zeros, stored bytes and MACs
(``d_*``: after − before, negative when it saves). A setting that cannot apply is
there too, with ``status`` ``refused`` (or ``failed``) and the reason.

:meth:`SensitivityResult.to_json` writes it atomically; :meth:`SensitivityResult.from_json`
reads it back bounded (size, nesting, lengths) and validated (types, ranges, each
unit's options matching its analysis' settings): a damaged or hostile file is a
:class:`SensitivityFileError` naming the file and the bad fields, never a crash.

Example:
    >>> import tempfile
    >>> opt = OptionResult(setting=0.5, status="ok", accuracy=0.9, loss=0.3, sqnr_db=20.0, d_bytes=-100)
    >>> unit = UnitResult(name="fc1", kind="Linear", layers=["fc1"], params=100, bytes=400, options=[opt])
    >>> a = AnalysisResult(name="unstructured", setting="sparsity", settings=[0.5], units=[unit])
    >>> result = SensitivityResult(model="MLP", metric="accuracy", baseline=BaselineResult(accuracy=0.95, loss=0.2),
    ...                            analyses=[a])
    >>> tmp = tempfile.TemporaryDirectory()
    >>> SensitivityResult.from_json(result.to_json(f"{tmp.name}/s.json")) == result
    True
    >>> print(result.table())
    unstructured (sparsity) -- accuracy
      unit  kind      0.5
      fc1   Linear  0.900
    >>> tmp.cleanup()
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from torchslim.config import issues_from_validation
from torchslim.errors import ConfigError, TorchslimError
from torchslim.io import atomic_write_text
from torchslim.report.io import read_json_file
from torchslim.search.config import SensitivityConfig

#: the ``format`` field of every sensitivity file
FORMAT = "torchslim.sensitivity"
#: the file versions this release reads
SUPPORTED_VERSIONS = (1,)
#: largest sensitivity file read, in bytes
MAX_FILE_BYTES = 64 * 2**20
#: bounds on what a file may hold
MAX_UNITS, MAX_SETTINGS, MAX_NAME, MAX_REASON, MAX_LAYERS = 100_000, 64, 1_000, 4_000, 10_000
#: at most this many of a file's problems are named in the error
MAX_SHOWN = 10

Metric = Literal["accuracy", "loss", "sqnr"]
Status = Literal["ok", "refused", "failed"]
INT64 = 2**63 - 1


class SensitivityFileError(TorchslimError):
    """A sensitivity file cannot be read: missing, too large, not JSON, or not a valid result (fields named)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class OptionResult(_Strict):
    """One setting applied to one unit.

    Attributes:
        setting: the setting (its meaning is the analysis' ``setting``).
        status: ``ok`` (measured), ``refused`` (the technique does not apply; ``reason`` says why)
            or ``failed`` (applying or measuring raised; ``reason`` names the error).
        reason: why it was refused or failed.
        achieved: what the technique achieved in the setting's units (sparsity reached,
            fraction of channels removed, bits, parameters kept), when it differs from asking.
        accuracy, loss: top-1 accuracy and mean loss on the validation batches (``None`` for the
            ``sqnr`` metric, which runs the proxy batch only).
        sqnr_db: SQNR of the model's output against the unchanged model's on the proxy batch
            (capped at 200 dB: identical outputs).
        d_params, d_nonzeros, d_bytes, d_macs: the whole model's parameters, non-zero
            parameters, stored bytes and MACs after the option minus before.
        seconds: time taken to apply and measure it.
    """

    setting: float
    status: Status
    reason: str | None = Field(default=None, max_length=MAX_REASON)
    achieved: float | None = None
    accuracy: float | None = Field(default=None, ge=0.0, le=1.0)
    loss: float | None = None
    sqnr_db: float | None = None
    d_params: int = Field(default=0, ge=-INT64, le=INT64)
    d_nonzeros: int = Field(default=0, ge=-INT64, le=INT64)
    d_bytes: int = Field(default=0, ge=-INT64, le=INT64)
    d_macs: int = Field(default=0, ge=-INT64, le=INT64)
    seconds: float = Field(default=0.0, ge=0.0)

    @model_validator(mode="after")
    def _consistent(self) -> OptionResult:
        if self.status != "ok" and not self.reason:
            raise ValueError(f"a {self.status} option needs its reason")
        if self.status == "ok" and self.sqnr_db is None:
            raise ValueError("a measured option needs sqnr_db")
        return self

    def metric(self, name: Metric) -> float | None:
        """The value of metric ``name`` (``accuracy``, ``loss`` or ``sqnr``)."""
        return self.sqnr_db if name == "sqnr" else getattr(self, name)


class UnitResult(_Strict):
    """One layer or coupled channel group and its options (one per setting, in the analysis' order).

    Attributes:
        name: the layer (a group: its first producer).
        kind: the layer's class, or ``channel group``.
        layers: every layer an option changes.
        params, bytes: the parameters and dense bytes those layers hold.
        options: one per setting.
    """

    name: str = Field(min_length=1, max_length=MAX_NAME)
    kind: str = Field(max_length=MAX_NAME)
    layers: list[str] = Field(max_length=MAX_LAYERS)
    params: int = Field(ge=0, le=INT64)
    bytes: int = Field(ge=0, le=INT64)
    options: list[OptionResult] = Field(max_length=MAX_SETTINGS)

    @field_validator("layers")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        if any(not 0 < len(n) <= MAX_NAME for n in v):
            raise ValueError(f"layer names must be 1 to {MAX_NAME} characters")
        return v


class AnalysisResult(_Strict):
    """One analysis: its settings, its units and how well the SQNR proxy ranks like the metric.

    Attributes:
        name: ``unstructured``, ``structured``, ``bits`` or ``lowrank``.
        setting: what the settings mean (``sparsity``, ``channels removed``, ``weight bits``, ``parameters kept``).
        settings: the settings, in the order measured.
        units: the units.
        seconds: wall time of the analysis.
        spearman_accuracy, spearman_loss: Spearman rank correlation over the measured options
            between output SQNR and accuracy (and loss); ``None`` when not computable (the
            ``sqnr`` metric, fewer than 3 options, a constant column).
    """

    name: Literal["unstructured", "structured", "bits", "lowrank"]
    setting: str = Field(max_length=MAX_NAME)
    settings: list[float] = Field(min_length=1, max_length=MAX_SETTINGS)
    units: list[UnitResult] = Field(default_factory=list, max_length=MAX_UNITS)
    seconds: float = Field(default=0.0, ge=0.0)
    spearman_accuracy: float | None = Field(default=None, ge=-1.0, le=1.0)
    spearman_loss: float | None = Field(default=None, ge=-1.0, le=1.0)

    @field_validator("settings")
    @classmethod
    def _distinct(cls, v: list[float]) -> list[float]:
        if len(set(v)) != len(v):
            raise ValueError("settings must be distinct")
        return v

    @model_validator(mode="after")
    def _options_match(self) -> AnalysisResult:
        for unit in self.units:
            got = [o.setting for o in unit.options]
            if got != self.settings:
                raise ValueError(f"unit {unit.name!r}: its options' settings {got} are not the analysis' {self.settings}")
        return self


class BaselineResult(_Strict):
    """The unchanged model on the same batches (``None`` for the ``sqnr`` metric)."""

    accuracy: float | None = Field(default=None, ge=0.0, le=1.0)
    loss: float | None = None


class SensitivityResult(_Strict):
    """What :func:`torchslim.search.sensitivity` measured (see the module docstring).

    Attributes:
        format, version: the file format and its version (checked on reading).
        model: the model's class name.
        metric: the metric the analysis ranks by (``accuracy``, ``loss`` or ``sqnr``).
        higher_is_better: whether a larger metric is better (``False`` for ``loss``).
        seed: the seed every option ran with.
        samples, proxy_samples: validation samples measured, and those of the SQNR proxy batch.
        baseline: the unchanged model's accuracy and loss.
        params, nonzeros, bytes, macs: the unchanged model's parameters, non-zeros, stored bytes
            (sparse where that is smaller) and MACs of one sample.
        config: the config the analysis ran with (as data; checked as a :class:`~torchslim.search.config.SensitivityConfig`).
        analyses: one per analysis run.
        wall_s: total wall time.
    """

    format: Literal["torchslim.sensitivity"] = "torchslim.sensitivity"
    version: int = 1
    model: str = Field(max_length=MAX_NAME)
    metric: Metric
    higher_is_better: bool = True
    seed: int = Field(default=0, ge=-INT64, le=INT64)
    samples: int = Field(default=0, ge=0, le=INT64)
    proxy_samples: int = Field(default=0, ge=0, le=INT64)
    baseline: BaselineResult = Field(default_factory=BaselineResult)
    params: int = Field(default=0, ge=0, le=INT64)
    nonzeros: int = Field(default=0, ge=0, le=INT64)
    bytes: int = Field(default=0, ge=0, le=INT64)
    macs: int = Field(default=0, ge=0, le=INT64)
    config: dict[str, Any] = Field(default_factory=dict)
    analyses: list[AnalysisResult] = Field(default_factory=list, max_length=8)
    wall_s: float = Field(default=0.0, ge=0.0)

    @field_validator("config")
    @classmethod
    def _valid_config(cls, v: dict[str, Any]) -> dict[str, Any]:
        if v:
            try:
                SensitivityConfig.parse(v)
            except ConfigError as exc:
                raise ValueError("; ".join(str(i) for i in exc.issues[:MAX_SHOWN])) from None
        return v

    @field_validator("version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v not in SUPPORTED_VERSIONS:
            raise ValueError(f"unsupported version; supported: {', '.join(map(str, SUPPORTED_VERSIONS))}")
        return v

    def analysis(self, name: str) -> AnalysisResult:
        """The analysis ``name``; a :class:`TorchslimError` lists the ones there are."""
        for a in self.analyses:
            if a.name == name:
                return a
        raise TorchslimError(f"no {name!r} analysis in this result; it has: {', '.join(a.name for a in self.analyses) or 'none'}")

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data."""
        return self.model_dump(mode="json")

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write the result to ``path`` atomically (UTF-8 JSON); returns the path."""
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False, ensure_ascii=False) + "\n"
        return atomic_write_text(path, text)

    @classmethod
    def from_dict(cls, data: Any, source: str = "sensitivity result") -> SensitivityResult:
        """Validate parsed data; a :class:`SensitivityFileError` names ``source`` and the bad fields."""
        if not isinstance(data, dict):
            raise SensitivityFileError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise SensitivityFileError(f"{source}: not a torchslim sensitivity file (format {str(data.get('format'))[:80]!r}, "
                                       f"expected {FORMAT!r})")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            issues = issues_from_validation(exc)
            shown = "\n".join(f"  - {i}" for i in issues[:MAX_SHOWN])
            more = f"\n  ... and {len(issues) - MAX_SHOWN} more" if len(issues) > MAX_SHOWN else ""
            raise SensitivityFileError(f"{source}: {len(issues)} problem(s):\n{shown}{more}") from None

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> SensitivityResult:
        """Read a file :meth:`to_json` wrote: bounded (at most :data:`MAX_FILE_BYTES`, nesting) and validated.

        Raises:
            SensitivityFileError: the file is missing, too large, not UTF-8 JSON, or not a valid result.
        """
        p = Path(path)
        try:
            data = read_json_file(p, "sensitivity file", limit=MAX_FILE_BYTES)
        except SensitivityFileError:
            raise
        except TorchslimError as exc:
            raise SensitivityFileError(str(exc)) from None
        return cls.from_dict(data, f"sensitivity file {str(p)!r}")

    def table(self) -> str:
        """Plain text: per analysis, a row per unit and a column per setting (the metric, or why not)."""
        blocks = []
        for a in self.analyses:
            head = ["unit", "kind", *(f"{s:g}" for s in a.settings)]
            rows = [[u.name, u.kind, *(_cell(o, self.metric) for o in u.options)] for u in a.units]
            widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
            lines = [f"{a.name} ({a.setting}) -- {self.metric}"]
            for r in [head, *rows]:
                cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
                lines.append("  " + "  ".join(cells).rstrip())
            if a.spearman_accuracy is not None:
                lines.append(f"  Spearman(SQNR, accuracy) = {a.spearman_accuracy:.3f}")
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks)


def _cell(option: OptionResult, metric: Metric) -> str:
    if option.status != "ok":
        return option.status
    value = option.metric(metric)
    if value is None:
        return "-"
    return f"{value:.1f}" if metric == "sqnr" else f"{value:.3f}"
