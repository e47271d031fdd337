"""Configs of the language-model methods: RTN, GPTQ, AWQ, SparseGPT, Wanda (and magnitude).

Every config selects ``nn.Linear`` layers with the one targets grammar (``targets``);
the output head (``lm_head``) is left as it is unless a targets key names it exactly.
``calibration`` says how a recipe stage draws its calibration sequences
(:class:`TextCalibration`); a verb uses the sequences it is given.

Example:
    >>> GPTQConfig.parse({"bits": 4, "group_size": 64}).grid()
    Grid(bits=4, group_size=64, symmetric=False)
    >>> SparseGPTConfig.parse({"granularity": "nm"}).target_sparsity()
    0.5
    >>> SparseGPTConfig.parse({"granularity": "nm", "n": 2, "m": 4, "sparsity": 0.3})
    Traceback (most recent call last):
    ...
    torchslim.errors.ConfigError: 1 error(s) in config
      - sparsity: granularity 'nm' with n=2, m=4 fixes the sparsity at 0.5; leave it out (got 0.3)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, ValidationInfo, field_validator

from torchslim.config import Config
from torchslim.llm.qweight import Grid

if TYPE_CHECKING:
    from torchslim.llm.gptq import Clip

__all__ = [
    "AWQConfig", "GPTQConfig", "GridConfig", "LLMConfig", "RTNConfig", "SparseGPTConfig", "TextCalibration", "WandaConfig",
]


def check_group_size(v: int) -> int:
    """``v`` if it is ``-1`` (one group per row) or at least 1."""
    if v != -1 and v < 1:
        raise ValueError("group_size must be -1 (one group per row) or >= 1")
    return v


class TextCalibration(Config):
    """How a recipe stage draws calibration token sequences.

    Attributes:
        sequences: sequences drawn.
        seq_len: tokens per sequence.
        seed: seed of the draw (the same seed gives the same sequences).
        batch_size: sequences per forward pass (also how a verb splits an ``[N, T]`` tensor).
        source: the calibration text (``jargon``, ``devil-rest`` or ``both``; see
            :mod:`torchslim.data.corpora`) when the data set does not draw the tokens itself.
    """

    sequences: int = Field(default=128, ge=1)
    seq_len: int = Field(default=512, ge=1)
    seed: int = 0
    batch_size: int = Field(default=4, ge=1)
    source: Literal["jargon", "devil-rest", "both"] = "jargon"


class LLMConfig(Config):
    """What every language-model method shares.

    Attributes:
        targets: ordered ``{name | "re:pattern": {} | null}``; ``null`` skips a layer.
            The output head is kept unless a key names it exactly.
        calibration: how a recipe stage draws calibration sequences.
        true_sequential: inside a decoder block, transform the layers in the order the block
            runs them (q/k/v, then o, then gate/up, then down), each group calibrated on the
            outputs of the groups already transformed; ``false``: calibrate the whole block
            once on its float weights.
    """

    targets: dict[str, dict | None] | None = None  # type: ignore[type-arg]
    calibration: TextCalibration = Field(default_factory=TextCalibration)
    true_sequential: bool = True


class GridFields(Config):
    """The integer grid (:class:`~torchslim.llm.qweight.Grid`): ``bits`` (2-8), ``group_size`` (``-1``: one group
    per row), ``symmetric``."""

    bits: int = Field(default=4, ge=2, le=8)
    group_size: int = 128
    symmetric: bool = False

    @field_validator("group_size")
    @classmethod
    def _group(cls, v: int) -> int:
        return check_group_size(v)

    def grid(self) -> Grid:
        """The :class:`Grid` of this config."""
        return Grid(bits=self.bits, group_size=self.group_size, symmetric=self.symmetric)


class GridConfig(LLMConfig, GridFields):
    """A quantizing method's config: the common fields and the grid."""


class RTNConfig(GridConfig):
    """Round to nearest on the grid: no calibration data (the baseline)."""


class GPTQConfig(GridConfig):
    """GPTQ: quantize columns one at a time, compensating each rounding error with the inverse Hessian.

    Attributes:
        damp: dampening added to the Hessian's diagonal, a fraction of its mean diagonal.
        act_order: process columns in descending order of the Hessian's diagonal; group
            scales and zero points are then computed on the original column order before
            the first column is quantized (static groups), so the layout stays plain groups.
        block_size: columns per lazy batch update.
        clip: choose each group's range among ``clip_points + 1`` shrink ratios (1 down to
            ``1 - max_shrink``) by its rounding error through the Hessian, instead of min/max.
    """

    damp: float = Field(default=0.01, gt=0.0, le=1.0)
    act_order: bool = True
    block_size: int = Field(default=128, ge=1)
    clip: bool = False
    clip_points: int = Field(default=20, ge=1)
    max_shrink: float = Field(default=0.2, ge=0.0, lt=1.0)

    def clipping(self) -> Clip | None:
        """The solver's :class:`~torchslim.llm.gptq.Clip`, or ``None`` (``clip`` off)."""
        from torchslim.llm.gptq import Clip

        return Clip(self.clip_points, self.max_shrink) if self.clip else None


class AWQConfig(GridConfig):
    """AWQ: per-input-channel scales ``s = s_x ** alpha`` searched on a grid, folded into the preceding layer.

    Attributes:
        grid_points: values of ``alpha`` tried, evenly spaced in ``[0, 1]`` (``alpha = 0`` is plain rounding).
        search_tokens: calibration tokens (rows) the scale and clipping searches evaluate on.
        clip: search a per-row, per-group clipping range (``None``: yes with ``quantizer: rtn``,
            no with ``gptq``, which fits its own groups; ``true`` with ``gptq`` is refused).
        clip_points: clipping ratios tried, evenly spaced from 1 down to ``1 - max_shrink``.
        max_shrink: the largest fraction of the range clipping may remove.
        quantizer: ``rtn`` or ``gptq`` on the scaled weights (``damp``, ``act_order``, ``block_size``
            are GPTQ's).
    """

    grid_points: int = Field(default=20, ge=2)
    search_tokens: int = Field(default=1024, ge=1)
    quantizer: Literal["rtn", "gptq"] = "rtn"
    clip: bool | None = None
    clip_points: int = Field(default=20, ge=1)
    max_shrink: float = Field(default=0.5, ge=0.0, lt=1.0)
    damp: float = Field(default=0.01, gt=0.0, le=1.0)
    act_order: bool = True
    block_size: int = Field(default=128, ge=1)
    true_sequential: bool = False

    @field_validator("true_sequential")
    @classmethod
    def _block_wise(cls, v: bool) -> bool:
        if v:
            raise ValueError("AWQ calibrates each decoder block once on its float weights; true_sequential must be false")
        return v

    @field_validator("clip")
    @classmethod
    def _clip_with_rtn(cls, v: bool | None, info: ValidationInfo) -> bool | None:
        if v and info.data.get("quantizer") == "gptq":
            raise ValueError("clip: true needs quantizer: rtn (GPTQ fits its own group ranges); leave clip out")
        return v

    def clips(self) -> bool:
        """Whether the clipping search runs."""
        return self.quantizer == "rtn" if self.clip is None else self.clip


class SparsityFields(LLMConfig):
    """Unstructured (``granularity: element``, ``sparsity`` of each row's weights) or N:M (keep ``n`` of every ``m``)."""

    granularity: Literal["element", "nm"] = "element"
    n: int = Field(default=2, ge=1)
    m: int = Field(default=4, ge=2)
    sparsity: float | None = Field(default=None, gt=0.0, lt=1.0)

    @field_validator("m")
    @classmethod
    def _n_below_m(cls, v: int, info: ValidationInfo) -> int:
        n = info.data.get("n")
        if info.data.get("granularity") == "nm" and n is not None and n >= v:
            raise ValueError(f"N:M needs n < m, got n={n}")
        return v

    @field_validator("sparsity")
    @classmethod
    def _fixed_by_nm(cls, v: float | None, info: ValidationInfo) -> float | None:
        n, m = info.data.get("n"), info.data.get("m")
        if info.data.get("granularity") == "nm" and v is not None and n is not None and m is not None:
            fixed = 1 - n / m
            if abs(v - fixed) > 1e-9:
                raise ValueError(f"granularity 'nm' with n={n}, m={m} fixes the sparsity at {fixed:g}; leave it out")
        return v

    def target_sparsity(self) -> float:
        """The fraction of each row's weights set to zero."""
        if self.granularity == "nm":
            return 1 - self.n / self.m
        return 0.5 if self.sparsity is None else self.sparsity

    def nm(self) -> tuple[int, int] | None:
        """``(n, m)`` for N:M, else ``None``."""
        return (self.n, self.m) if self.granularity == "nm" else None


class JointQuant(GridFields):
    """The grid of SparseGPT's joint quantization (the surviving weights; pruned ones stay exactly zero)."""


class SparseGPTConfig(SparsityFields):
    """SparseGPT: prune with the OBS update, optionally quantizing the surviving weights in the same pass.

    Attributes:
        damp: dampening of the Hessian's diagonal (fraction of its mean).
        block_size: columns per lazy batch (unstructured masks are chosen per row within each).
        quantize: a grid to quantize the surviving weights on (joint SparseGPT + GPTQ), or ``None``.
    """

    damp: float = Field(default=0.01, gt=0.0, le=1.0)
    block_size: int = Field(default=128, ge=1)
    quantize: JointQuant | None = None


class WandaConfig(SparsityFields):
    """Wanda (``|W| * ||X||_2`` per input channel) or magnitude (``|W|``), compared within each output row.

    Attributes:
        score: ``wanda`` (needs calibration) or ``magnitude`` (the baseline; needs none).
    """

    score: Literal["wanda", "magnitude"] = "wanda"
