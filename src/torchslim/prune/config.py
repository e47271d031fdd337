"""Configs of the pruning verb and stage: masks (:class:`PruneConfig`) and surgery (:class:`StructuredPruneConfig`)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from torchslim.config import CalibrationConfig, Config, calibration_field
from torchslim.prune.importance import CRITERIA
from torchslim.targets import check_target_keys

#: the granularities :class:`StructuredPruneConfig` takes (the others are :class:`PruneConfig`'s)
STRUCTURED_GRANULARITIES = ("channel", "head", "block")


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
    calibration: CalibrationConfig = calibration_field()
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


class LayerStructuredConfig(Config):
    """Per-layer override inside ``targets`` (keyed by a producer layer's name)."""

    sparsity: float | None = Field(default=None, ge=0.0, lt=1.0)


class StructuredPruneConfig(Config):
    """Structured pruning.

    Attributes:
        granularity: ``channel`` (conv filters/channels and Linear neurons, with
            everything coupled to them), ``head`` (attention heads) or ``block``
            (whole residual blocks / transformer layers replaced by identity).
        sparsity: fraction of channels (heads, blocks) removed in each group.
        macs_target: instead of ``sparsity``, keep at most this fraction of the
            model's MACs (e.g. 0.5 = 2x fewer); the sparsity is found by bisection.
        remove_blocks: with ``channel``: first remove this fraction of the
            shape-preserving residual blocks / layers (lowest block influence on the
            calibration data), then prune channels of what is left; ``macs_target``
            then counts both. Blocks holding a layer named exactly in ``targets`` are kept. On CPUs fewer layers run faster than thinner layers
            at equal MACs (``benchmarks/prune_latency_shapes.py``).
        criterion: ``l2`` (group L2 norm, default), ``l1``, ``random``, or any
            registered element criterion (scores summed over the coupled slices).
        scope: ``layer`` (the same fraction in every group) or ``global``
            (channels ranked across groups after normalising each group by its mean).
        round_to: remaining widths are multiples of this (1 disables).
        min_channels: no group keeps fewer channels than this.
        targets: ``{name | "re:pattern": override | null}`` keyed by producer layers.
        keep_first_last: leave the group fed by the first layer alone unless named exactly.
        uniform: remove as many heads (``head``) or channels (``channel``) from every chosen
            block: every block keeps the same width, so a Hugging Face model whose blocks are
            all pruned keeps a stock config (``num_attention_heads``, ``intermediate_size``, ...
            are written into ``model.config``). Needs ``scope: layer`` and no per-layer
            ``sparsity`` in ``targets``.
        calibration: the calibration batches data-driven criteria and block scoring use
            (``batches`` of them; a recipe stage draws ``batch_size`` samples each from ``split``).
        seed: for ``random``.
    """

    RENAMED: ClassVar[dict[str, str]] = {"calibration_batches": "calibration.batches"}

    granularity: Literal["channel", "head", "block"] = "channel"
    sparsity: float | None = Field(default=None, ge=0.0, lt=1.0)
    macs_target: float | None = Field(default=None, gt=0.0, lt=1.0)
    remove_blocks: float | None = Field(default=None, gt=0.0, lt=1.0)
    criterion: str = "l2"
    scope: Literal["layer", "global"] = "layer"
    round_to: int = Field(default=8, ge=1)
    min_channels: int = Field(default=1, ge=1)
    targets: dict[str, LayerStructuredConfig | None] | None = None
    keep_first_last: bool = True
    uniform: bool = False
    calibration: CalibrationConfig = calibration_field(batches=8, batch_size=64)
    seed: int = 0

    @model_validator(mode="after")
    def _one_amount(self) -> StructuredPruneConfig:
        if (self.sparsity is None) == (self.macs_target is None):
            raise ValueError("give exactly one of sparsity or macs_target")
        if self.macs_target is not None and self.granularity != "channel":
            raise ValueError("macs_target is supported for granularity 'channel'")
        if self.remove_blocks is not None and self.granularity != "channel":
            raise ValueError("remove_blocks combines block removal with granularity 'channel'; for blocks alone use granularity 'block'")
        if self.uniform and self.scope != "layer":
            raise ValueError("uniform removes as many channels/heads from every block: it needs scope 'layer'")
        if self.uniform and any(v is not None and v.sparsity is not None for v in (self.targets or {}).values()):
            raise ValueError("uniform removes as many channels/heads from every block: targets may not give a layer its own sparsity")
        return self

    @field_validator("targets")
    @classmethod
    def _check_targets(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v:
            issues = check_target_keys(v)
            if issues:
                raise ValueError("; ".join(f"{i.message} ({i.value!r})" for i in issues))
        return v
