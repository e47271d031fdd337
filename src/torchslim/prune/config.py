"""Configs of the pruning verb and stage."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from torchslim.config import Config
from torchslim.prune.importance import CRITERIA
from torchslim.targets import check_target_keys


def _known_criterion(name: str | None) -> str | None:
    if name is not None and name not in CRITERIA:
        raise ValueError(f"unknown criterion {name!r}; registered: {', '.join(CRITERIA.names())}")
    return name


class LayerPruneConfig(Config):
    """Per-layer override inside ``targets``: any field left out inherits the stage's value."""

    sparsity: float | None = Field(default=None, ge=0.0, lt=1.0)
    criterion: str | None = None

    @field_validator("criterion")
    @classmethod
    def _check_criterion(cls, v: str | None) -> str | None:
        return _known_criterion(v)


class CalibrationConfig(Config):
    """Where criteria that need data (gradients, Hessian, activations) draw it from.

    Attributes:
        batches: calibration batches (one pass serves every layer).
        batch_size: samples per calibration batch.
        split: data split the batches come from.
        seed: seed of the shuffled draw.
    """

    batches: int = Field(default=8, ge=1)
    batch_size: int = Field(default=128, ge=1)
    split: Literal["train", "val", "test"] = "train"
    seed: int = 0


class PruneConfig(Config):
    """Unstructured (element) or N:M pruning with masks that stay applied.

    Attributes:
        granularity: ``element`` (any weight may go) or ``nm`` (keep ``n`` of
            every ``m`` consecutive weights along the input dimension).
        n: weights kept per group (``nm``).
        m: group size (``nm``); ``n < m``.
        sparsity: fraction of the targeted weights set to zero, in [0, 1);
            required for ``element``; for ``nm`` it is ``1 - n/m`` (may be left out).
        criterion: name of a registered importance criterion (``magnitude``,
            ``l2``, ``gradient``, ``taylor``, ``hessian_fisher``,
            ``hessian_hutchinson``, ``activation_mean``, ``activation_max``,
            ``activation_std``, ``random``).
        scope: ``global`` ranks all targeted weights together; ``layer`` prunes
            each layer to ``sparsity`` on its own (``nm`` is always per group).
        targets: ordered ``{name | "re:pattern": override | null}``; layers with
            their own ``sparsity`` are pruned layer-wise to it, the others share
            the stage's scope. ``null`` skips a layer. When omitted, every
            Linear/Conv weight is a candidate.
        keep_first_last: keep the first and last prunable layers unless a
            targets key names them exactly.
        calibration: batches for criteria that need data.
        seed: seed for criteria that draw random numbers.
    """

    granularity: Literal["element", "nm"] = "element"
    n: int = Field(default=2, ge=1)
    m: int = Field(default=4, ge=2)
    sparsity: float | None = Field(default=None, ge=0.0, lt=1.0, validate_default=True)
    criterion: str = "magnitude"
    scope: Literal["global", "layer"] = "global"
    targets: dict[str, LayerPruneConfig | None] | None = None
    keep_first_last: bool = True
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    seed: int = 0

    @field_validator("m")
    @classmethod
    def _check_nm(cls, v: int, info: ValidationInfo) -> int:
        n = info.data.get("n")
        if n is not None and n >= v:
            raise ValueError(f"N:M needs n < m, got n={n}, m={v}")
        return v

    @field_validator("sparsity")
    @classmethod
    def _check_sparsity(cls, v: float | None, info: ValidationInfo) -> float | None:
        gran, n, m = info.data.get("granularity"), info.data.get("n"), info.data.get("m")
        if gran == "element" and v is None:
            raise ValueError("required for granularity 'element' (a fraction in [0, 1))")
        if gran == "nm" and v is not None and n is not None and m is not None and abs(v - (1 - n / m)) > 1e-9:
            raise ValueError(f"granularity 'nm' with n={n}, m={m} fixes the sparsity at {1 - n / m:g}; leave it out")
        return v

    @field_validator("criterion")
    @classmethod
    def _check_criterion(cls, v: str | None) -> str | None:
        return _known_criterion(v)

    @field_validator("targets")
    @classmethod
    def _check_targets(cls, v: dict[str, LayerPruneConfig | None] | None) -> dict[str, LayerPruneConfig | None] | None:
        if v:
            issues = check_target_keys(v)
            if issues:
                raise ValueError("; ".join(i.message + f" ({i.value!r})" for i in issues))
        return v

    @property
    def target_sparsity(self) -> float:
        """The stage's sparsity (``1 - n/m`` for ``nm``)."""
        if self.granularity == "nm":
            return 1.0 - self.n / self.m
        return float(self.sparsity or 0.0)
