"""Quantization-aware training: fake-quant fine-tuning through the foundation's training loop.

The model must already be quantized (:func:`~torchslim.quant.ptq.quantize_`),
which gives the initial scales. During training the weight scales follow the
current weights (min-max per call) unless they are learned (LSQ,
``learn_scale=True`` at quantization time); activation scales stay at their
calibrated (or learned) values. With a ``teacher`` the loss is Hinton's soft
targets (from :mod:`torchslim.distill.losses`) mixed with the hard labels.

Example:
    >>> import copy
    >>> from torchslim.quant import quantize_
    >>> data = ts.load_data("digits")
    >>> model = ts.create_model("lenet300", in_features=64)
    >>> _ = ts.finetune(model, data, {"epochs": 3, "lr": 0.1})
    >>> float_model = copy.deepcopy(model)
    >>> _ = quantize_(model, {"weight": {"bits": 4}}, calibration=data.loader("train"))
    >>> report = qat_finetune(model, data, {"epochs": 2, "lr": 0.01}, teacher=float_model)
    >>> len(report.meta["history"])
    2
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn

from torchslim.config import Config
from torchslim.data import DataBundle
from torchslim.distill import TeacherTap
from torchslim.distill.losses import hinton_loss
from torchslim.errors import TransformRefusedError
from torchslim.quant.model import QUANT_LAYERS, activation_quantizers, set_observing, weight_quantizers
from torchslim.report import Report
from torchslim.train.loop import Callback, TrainConfig, TrainState, finetune


class KDConfig(Config):
    """Distillation from the float model during QAT.

    Attributes:
        temperature: softmax temperature of the soft targets.
        alpha: weight of the soft-target term (``1 - alpha`` on the hard labels).
    """

    temperature: float = Field(default=4.0, gt=0)
    alpha: float = Field(default=0.9, ge=0, le=1)


class QATCallback(Callback):
    """Keeps fake quantization consistent through training (what); the loop decides when.

    * start: weight quantizers re-observe the current weights on every call (unless
      scales are learned); activation observers are frozen.
    * finalize: weight scales are refit to the final weights (or the learned scales
      are frozen into the buffers).
    * abort (the loss diverged): observers switched back as they were at the start.
    """

    def on_train_start(self, state: TrainState) -> None:
        self._observing = [(fq, fq.observing) for _, fq in [*weight_quantizers(state.model), *activation_quantizers(state.model)]]
        learned = any(fq.log_scale is not None for _, fq in weight_quantizers(state.model))
        set_observing(state.model, weights=not learned, activations=False)

    def on_abort(self, state: TrainState) -> None:
        for fq, observing in getattr(self, "_observing", []):
            fq.observing = observing

    @torch.no_grad()
    def on_finalize(self, state: TrainState) -> None:
        set_observing(state.model, weights=False, activations=False)
        for module in state.model.modules():
            if isinstance(module, QUANT_LAYERS):
                fq = module.weight_fq
                if fq.log_scale is None:
                    fq.observe(module.weight)
                else:
                    fq.freeze_learned_scale()
        for _, fq in activation_quantizers(state.model):
            fq.freeze_learned_scale()


def qat_finetune(
    model: nn.Module,
    data: DataBundle,
    config: TrainConfig | dict[str, Any] | None = None,
    *,
    teacher: nn.Module | None = None,
    kd: KDConfig | dict[str, Any] | None = None,
    progress: bool = True,
    description: str = "qat",
) -> Report:
    """Fine-tune a quantized model with fake quantization (straight-through gradients).

    Args:
        model: a model quantized by ``quantize_`` (trained in place).
        data: training data.
        config: the :class:`TrainConfig` of the fine-tuning.
        teacher: optional float model to distil from: a :class:`~torchslim.distill.TeacherTap`
            runs it in eval mode under ``no_grad`` on each training batch (its parameters
            are frozen; its training mode is restored afterwards).
        kd: the :class:`KDConfig` (used with a teacher).
        progress: show a progress bar.
        description: label of the run.

    Returns:
        The training :class:`Report` (``meta["history"]``, plus ``meta["kd"]``).

    Raises:
        TransformRefusedError: the model has no quantized layer.

    Example:
        >>> import copy
        >>> from torchslim.quant import quantize_
        >>> data = ts.load_data("digits")
        >>> fp32_model = ts.create_model("lenet300", in_features=64)
        >>> qmodel = copy.deepcopy(fp32_model)
        >>> _ = quantize_(qmodel, {"weight": {"bits": 4}}, calibration=data.loader("train"))
        >>> report = qat_finetune(qmodel, data, {"epochs": 1, "lr": 0.005}, teacher=fp32_model)
        >>> report.meta["kd"]["temperature"], report.meta["kd"]["alpha"]      # the KDConfig defaults
        (4.0, 0.9)
    """
    if not weight_quantizers(model):
        raise TransformRefusedError("QAT needs a quantized model: run quantize_ first")
    kd_cfg = KDConfig.parse(kd)
    loss_fn = None
    tap = None
    if teacher is not None:
        for p in teacher.parameters():
            p.requires_grad_(False)
        tap = TeacherTap(teacher)
        tap.attach(model)

        def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            teacher_logits = tap.logits
            if teacher_logits is None:
                raise RuntimeError("teacher logits missing")
            return hinton_loss(logits, teacher_logits, labels, temperature=kd_cfg.temperature, alpha=kd_cfg.alpha)

    try:
        report = finetune(
            model, data, config, callbacks=[QATCallback()], loss_fn=loss_fn, progress=progress, description=description
        )
    finally:
        if tap is not None:
            tap.detach()
    report.technique = "qat"
    report.meta["kd"] = kd_cfg.model_dump() if teacher is not None else None
    return report
