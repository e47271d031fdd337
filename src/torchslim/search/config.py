"""The config of :func:`torchslim.search.sensitivity`: which analyses, which settings, which metric, which layers.

Example:
    >>> SensitivityConfig.parse({"bits": [4, 2], "metric": "sqnr"}).settings("bits")
    [4.0, 2.0]
    >>> SensitivityConfig.parse({"unstructured": [0.5, 1.0]})
    Traceback (most recent call last):
        ...
    torchslim.errors.ConfigError: 1 error(s) in config
      - unstructured: every fraction must be in (0, 1), got [1.0] (got [0.5, 1.0])
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from torchslim.config import Config
from torchslim.search.space import ANALYSIS_NAMES, AnalysisName
from torchslim.targets import check_target_keys

__all__ = ["LayerSensitivityConfig", "SensitivityConfig"]


class LayerSensitivityConfig(Config):
    """Per-layer override inside ``targets``: which analyses the layer takes part in (default: all)."""

    analyses: list[AnalysisName] | None = None


def _fractions(v: list[float], what: str) -> list[float]:
    bad = [x for x in v if not 0.0 < x < 1.0]
    if bad:
        raise ValueError(f"every {what} must be in (0, 1), got {bad}")
    if len(set(v)) != len(v):
        raise ValueError(f"the {what}s must be distinct, got {v}")
    return v


class SensitivityConfig(Config):
    """What :func:`sensitivity` measures and how.

    Attributes:
        analyses: which analyses run, in order: ``unstructured``, ``structured``, ``bits``, ``lowrank``.
        unstructured: fractions of a layer's weights set to zero (magnitude; masks).
        structured: fractions of a coupled group's channels removed (L2 norm; surgery).
        bits: weight bit widths (2 to 8; weight-only, symmetric).
        lowrank: fractions of a layer's parameters kept (SVD; Tucker-2 for k×k convs).
        granularity: scales of the ``bits`` analysis: ``channel`` (per output channel) or ``tensor``.
        round_to: remaining widths of the ``structured`` analysis are multiples of this (1: exact).
        metric: ``accuracy`` or ``loss`` on the validation batches, or ``sqnr`` (the output SQNR
            on the first batch only: the cheap proxy).
        batches: validation batches measured (at most).
        batch_size: samples per batch when the data is a data set (a loader keeps its own).
        split: the data set's split measured (``val``; the test split is for final reports).
        seed: every option runs with ``torch.manual_seed(seed)``.
        targets: ``{name | "re:pattern": {analyses: [...]} | null}`` over the layers; ``null``
            leaves a layer out; when given, unmatched layers are left out. A structured group
            is measured when one of its producer layers is chosen.
    """

    analyses: list[AnalysisName] = Field(default_factory=lambda: list(ANALYSIS_NAMES), min_length=1)  # type: ignore[arg-type]
    unstructured: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75, 0.9], min_length=1, max_length=64)
    structured: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75], min_length=1, max_length=64)
    bits: list[int] = Field(default_factory=lambda: [8, 6, 4, 3, 2], min_length=1, max_length=7)
    lowrank: list[float] = Field(default_factory=lambda: [0.75, 0.5, 0.25], min_length=1, max_length=64)
    granularity: Literal["channel", "tensor"] = "channel"
    round_to: int = Field(default=1, ge=1, le=4096)
    metric: Literal["accuracy", "loss", "sqnr"] = "accuracy"
    batches: int = Field(default=8, ge=1, le=100_000)
    batch_size: int = Field(default=128, ge=1, le=65_536)
    split: Literal["val", "train", "test"] = "val"
    seed: int = 0
    targets: dict[str, LayerSensitivityConfig | None] | None = None

    @field_validator("analyses")
    @classmethod
    def _distinct_analyses(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"each analysis at most once, got {v}")
        return v

    @field_validator("unstructured", "structured", "lowrank")
    @classmethod
    def _check_fractions(cls, v: list[float]) -> list[float]:
        return _fractions(v, "fraction")

    @field_validator("bits")
    @classmethod
    def _check_bits(cls, v: list[int]) -> list[int]:
        bad = [b for b in v if not 2 <= b <= 8]
        if bad:
            raise ValueError(f"every bit width must be in [2, 8], got {bad}")
        if len(set(v)) != len(v):
            raise ValueError(f"the bit widths must be distinct, got {v}")
        return v

    @field_validator("targets")
    @classmethod
    def _check_targets(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        issues = check_target_keys(v or {})
        if issues:
            raise ValueError("; ".join(f"{i.message} ({i.value!r})" for i in issues))
        return v

    def settings(self, analysis: str) -> list[float]:
        """The settings of ``analysis``, as floats."""
        return [float(s) for s in getattr(self, analysis)]
