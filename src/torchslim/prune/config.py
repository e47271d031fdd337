"""Configs of the pruning verb and stage."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

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


class PruneConfig(Config):
    """Unstructured pruning to a target sparsity.

    Attributes:
        sparsity: fraction of the targeted weights set to zero, in [0, 1).
        criterion: name of a registered importance criterion (``magnitude``, ``random``...).
        granularity: ``element`` (unstructured masks).
        scope: ``global`` ranks all targeted weights together; ``layer`` prunes
            each layer to ``sparsity`` on its own.
        targets: ordered ``{name | "re:pattern": override | null}``; layers with
            their own ``sparsity`` are pruned layer-wise to it, the others share
            the stage's scope. ``null`` skips a layer. When omitted, every
            Linear/Conv weight is a candidate.
        keep_first_last: keep the first and last prunable layers unless a
            targets key names them exactly.
        seed: seed for criteria that draw random numbers.
    """

    sparsity: float = Field(ge=0.0, lt=1.0)
    criterion: str = "magnitude"
    granularity: Literal["element"] = "element"
    scope: Literal["global", "layer"] = "global"
    targets: dict[str, LayerPruneConfig | None] | None = None
    keep_first_last: bool = True
    seed: int = 0

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
