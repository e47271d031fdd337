"""Configs of the ``quantize_`` verb and the ``quantize`` stage."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from torchslim.config import CalibrationConfig, Config, calibration_field
from torchslim.quant.affine import QuantSpec
from torchslim.quant.observers import OBSERVERS
from torchslim.targets import check_target_keys


def _known_observer(name: str) -> str:
    if name not in OBSERVERS:
        raise ValueError(f"unknown observer {name!r}; registered: {', '.join(OBSERVERS.names())}")
    return name


class WeightQuantConfig(Config):
    """How weights are quantized.

    Attributes:
        bits: 2 to 8.
        symmetric: symmetric (zero point 0) or asymmetric range.
        granularity: ``tensor``, ``channel`` (per output channel) or ``group`` (blocks of
            ``group_size`` along the input dimension of each output channel).
        group_size: block length for ``group`` (must divide the input dimension).
        observer: ``minmax`` or ``mse`` (clipping search); ``percentile`` also works.
        narrow: symmetric range without the most negative integer (2 bits: ternary
            ``{-1, 0, 1}``; 8 bits: ``[-127, 127]``).
        rounding: ``nearest`` (round to nearest) or ``kernel_sum``: convolutions with a
            spatial kernel (per output and input channel pair, e.g. a depthwise 3×3) are
            rounded so the kernel's integer sum is the nearest to its float sum (the taps
            closest to the other rounding are moved by one step), so a kernel whose taps
            cancel keeps its response to flat regions (see
            :func:`~torchslim.quant.model.preserve_kernel_sums_`). Other layers round to nearest.
    """

    bits: int = Field(default=8, ge=2, le=8)
    symmetric: bool = True
    granularity: Literal["tensor", "channel", "group"] = "channel"
    group_size: int | None = Field(default=None, ge=1)
    observer: str = "minmax"
    narrow: bool = False
    rounding: Literal["nearest", "kernel_sum"] = "nearest"

    @field_validator("observer")
    @classmethod
    def _check_observer(cls, v: str) -> str:
        return _known_observer(v)

    @model_validator(mode="after")
    def _check_group(self) -> WeightQuantConfig:
        if self.granularity == "group" and self.group_size is None:
            raise ValueError("group_size is required when granularity is 'group'")
        return self

    def spec(self, axis: int = 0) -> QuantSpec:
        """The :class:`QuantSpec` of a weight whose output channels are on ``axis`` 0.

        Example:
            >>> WeightQuantConfig(bits=4).spec().qmin
            -8
        """
        group_axis = 1
        return QuantSpec(
            bits=self.bits,
            signed=True,
            symmetric=self.symmetric,
            granularity=self.granularity,
            axis=group_axis if self.granularity == "group" else axis,
            group_size=self.group_size,
            narrow=self.narrow,
        )


class ActQuantConfig(Config):
    """How activations are quantized (static mode; per tensor).

    Attributes:
        bits: 2 to 8 (only 8 can be exported to ONNX Runtime int8).
        signed: int8 (``True``) or uint8 (``False``, what ONNX Runtime's x86 kernels prefer).
        symmetric: symmetric or asymmetric range.
        observer: ``minmax``, ``moving_average``, ``percentile`` or ``mse``.
        percentile: for the ``percentile`` observer.
        smooth: SmoothQuant migration strength ``alpha`` in (0, 1], or ``None`` (off).
            Linear layers that read a LayerNorm's output get their input divided
            per channel by ``s = max|x|**alpha / max|w|**(1 - alpha)`` and their
            weights multiplied by it (exact in float; flattens outlier channels
            before the per-tensor quantizer). See :mod:`torchslim.quant.smooth`.
        mask_key: the key of a ``[batch, tokens]`` mask (nonzero = real token) in
            dict calibration batches, e.g. a tokenizer's ``attention_mask``:
            activation statistics and smoothing maxima skip the padded positions
            (see :mod:`torchslim.quant.tokens`). ``None`` counts every position;
            batches without the key (tensors, tuples) count every position too.
        float_points: residual ``add`` outputs left in float, by their point names (as in the
            report's ``meta["activation_placement"]["points"]``, e.g. ``add_3``); the accuracy
            guard's ``fallback: auto`` fills it when keeping such a point in float helps.
    """

    bits: int = Field(default=8, ge=2, le=8)
    signed: bool = False
    symmetric: bool = False
    observer: str = "minmax"
    percentile: float = Field(default=99.99, gt=50.0, le=100.0)
    smooth: float | None = Field(default=None, gt=0.0, le=1.0)
    mask_key: str | None = "attention_mask"
    float_points: list[str] = Field(default_factory=list)

    @field_validator("observer")
    @classmethod
    def _check_observer(cls, v: str) -> str:
        return _known_observer(v)

    def spec(self) -> QuantSpec:
        """The per-tensor :class:`QuantSpec`.

        Example:
            >>> ActQuantConfig().spec().qmax
            255
        """
        return QuantSpec(bits=self.bits, signed=self.signed, symmetric=self.symmetric, granularity="tensor")

    def observer_args(self) -> dict[str, Any]:
        """Keyword arguments of the configured observer."""
        return {"percentile": self.percentile} if self.observer == "percentile" else {}


class LayerQuantConfig(Config):
    """Per-layer override inside ``targets`` (fields left out inherit the stage's weight config)."""

    bits: int | None = Field(default=None, ge=2, le=8)
    granularity: Literal["tensor", "channel", "group"] | None = None
    group_size: int | None = Field(default=None, ge=1)


class GuardConfig(Config):
    """The accuracy guard of static PTQ: measured on calibration batches held back from calibration.

    After calibration the quantized model is compared with the float model on the
    held-back batches: every quantized layer's output (SQNR against the same layer of
    the float model, errors accumulated from the layers before it), and the model's
    output (SQNR and top-1 agreement). Below the floor :func:`~torchslim.quant.quantize_`
    warns with an :class:`~torchslim.quant.guard.AccuracyWarning` naming the most
    sensitive layers; with ``fallback: auto`` it keeps the fewest layers in float that
    meet the floor (greedy by measured sensitivity) and reports which, with the figures
    before and after.

    Attributes:
        enabled: measure (and warn); ``False`` skips the guard (and holds nothing back).
        holdout: the part of the calibration batches held back for the check
            (``floor(batches * holdout)``; when that is 0, e.g. a single batch, the check
            runs on the calibration batches and the report says so).
        min_sqnr_db: the floor on the output SQNR (dB).
        min_agreement: the floor on top-1 agreement with the float model (0 to 1).
        fallback: ``none`` (warn only) or ``auto`` (keep layers in float until the floor is met).
        max_float_layers: the most layers ``auto`` may keep in float (``None``: no limit).
        sensitive_layers: how many of the most sensitive layers the warning and report name.

    Example:
        >>> GuardConfig(fallback="auto").min_sqnr_db
        15.0
    """

    enabled: bool = True
    holdout: float = Field(default=0.25, ge=0.0, lt=1.0)
    min_sqnr_db: float = 15.0
    min_agreement: float = Field(default=0.9, ge=0.0, le=1.0)
    fallback: Literal["none", "auto"] = "none"
    max_float_layers: int | None = Field(default=None, ge=1)
    sensitive_layers: int = Field(default=5, ge=1)


class QuantizeConfig(Config):
    """Quantize a model: weight-only or static (weights + activations from calibration data).

    Attributes:
        mode: ``weight_only`` or ``static``.
        weight: the weight quantization.
        activation: the activation quantization (``static`` mode).
        targets: ordered ``{name | "re:pattern": override | null}`` over Linear/Conv layers;
            ``null`` skips a layer. When omitted every Linear/Conv layer is quantized.
        keep_first_last: leave the first and last layers in float unless named exactly.
        fold_batchnorm: fold BatchNorm into the preceding layer first.
        calibration: the calibration batches of ``static`` mode (at most ``batches`` of them are
            used; a recipe stage draws ``batch_size`` samples each from ``split``).
        learn_scale: make scales learnable (LSQ) for a following QAT stage.
        bias_correction: ``static`` mode: after calibration, shift each quantized layer's bias
            so its mean output per channel on the calibration batches is the float model's
            (:mod:`torchslim.quant.correct`).
        guard: the accuracy guard (``static`` mode): :class:`GuardConfig`.
    """

    RENAMED: ClassVar[dict[str, str]] = {"calibration_batches": "calibration.batches"}

    mode: Literal["weight_only", "static"] = "static"
    weight: WeightQuantConfig = Field(default_factory=WeightQuantConfig)
    activation: ActQuantConfig = Field(default_factory=ActQuantConfig)
    targets: dict[str, LayerQuantConfig | None] | None = None
    keep_first_last: bool = False
    fold_batchnorm: bool = True
    calibration: CalibrationConfig = calibration_field(batches=16, batch_size=128)
    learn_scale: bool = False
    bias_correction: bool = True
    guard: GuardConfig = Field(default_factory=GuardConfig)

    @model_validator(mode="after")
    def _check_smooth(self) -> QuantizeConfig:
        if self.activation.smooth is not None and self.mode != "static":
            raise ValueError("activation.smooth needs mode 'static' (it moves activation ranges into the weights)")
        return self

    @field_validator("targets")
    @classmethod
    def _check_targets(cls, v: dict[str, LayerQuantConfig | None] | None) -> dict[str, LayerQuantConfig | None] | None:
        if v:
            issues = check_target_keys(v)
            if issues:
                raise ValueError("; ".join(i.message + f" ({i.value!r})" for i in issues))
        return v

    def layer_weight(self, override: LayerQuantConfig | None) -> WeightQuantConfig:
        """The weight config of one layer after its targets override.

        Example:
            >>> QuantizeConfig().layer_weight(LayerQuantConfig(bits=4)).bits
            4
        """
        if override is None:
            return self.weight
        update = {k: v for k, v in override.model_dump(exclude={"version"}).items() if v is not None}
        return WeightQuantConfig.model_validate({**self.weight.model_dump(), **update})
