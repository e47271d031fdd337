"""The ``quantize`` recipe stage.

YAML::

    stages:
      - {type: train, epochs: 10, lr: 0.1}
      - type: quantize
        mode: static
        weight: {bits: 4, granularity: channel}
        activation: {bits: 8, observer: percentile}
        qat: {epochs: 2, lr: 0.005}          # optional fake-quant fine-tuning
        distill: {temperature: 4, alpha: 0.9} # optional: distil from the float model during QAT

Calibration batches come from the training split (``calibration_batch_size`` each).
"""

from __future__ import annotations

import copy

from pydantic import Field
from torch import nn

from torchslim.quant.config import QuantizeConfig
from torchslim.quant.ptq import quantize_
from torchslim.quant.qat import KDConfig, qat_finetune
from torchslim.report import Report
from torchslim.stages import STAGES, StageContext, StageSpec
from torchslim.train.loop import TrainConfig


class QuantizeStage(QuantizeConfig):
    """``quantize_`` plus optional QAT (with optional distillation from the float model)."""

    name: str | None = None
    calibration_batch_size: int = Field(default=128, ge=1)
    qat: TrainConfig | None = None
    distill: KDConfig | None = None


def _run_quantize(model: nn.Module, cfg: QuantizeConfig, ctx: StageContext) -> Report:
    if not isinstance(cfg, QuantizeStage):
        raise TypeError(f"expected a QuantizeStage config, got {type(cfg).__name__}")
    teacher = copy.deepcopy(model).eval() if cfg.qat is not None and cfg.distill is not None else None
    calibration = ctx.data.loader("train", cfg.calibration_batch_size, shuffle=True, seed=0)
    qcfg = cfg.model_dump(exclude={"name", "calibration_batch_size", "qat", "distill"})
    report = quantize_(model, qcfg, calibration=calibration)
    if cfg.qat is not None:
        trained = qat_finetune(
            model, ctx.data, cfg.qat, teacher=teacher, kd=cfg.distill, progress=ctx.progress, description=ctx.label
        )
        report.meta["qat"] = trained.meta
    return report


STAGES.register("quantize")(
    StageSpec(
        QuantizeStage,
        _run_quantize,
        help="quantize weights (and activations, static mode) with optional QAT/distillation",
    )
)
