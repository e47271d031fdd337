"""Configs of knowledge distillation: :class:`DistillConfig` (training + losses) and :class:`HintConfig`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from torchslim.config import Config
from torchslim.train.loop import TrainConfig


class HintConfig(Config):
    """One feature hint: match the output of student layer ``student`` to teacher layer ``teacher``.

    Attributes:
        student: qualified module name in the student (``layer2.1``).
        teacher: qualified module name in the teacher.
        loss: ``mse`` or ``cosine`` between features (after the adapter), or
            ``attention`` (attention transfer on conv maps; no adapter needed).
        weight: multiplier of this hint's loss.
        adapter: ``auto`` (1×1 conv for conv maps, linear otherwise, only when
            the widths differ), ``linear``, ``conv1x1`` or ``none``. Adapters are
            trained with the student and dropped afterwards.
    """

    student: str = Field(min_length=1)
    teacher: str = Field(min_length=1)
    loss: Literal["mse", "cosine", "attention"] = "mse"
    weight: float = Field(default=1.0, ge=0)
    adapter: Literal["auto", "linear", "conv1x1", "none"] = "auto"


class DistillConfig(TrainConfig):
    """How to distil a teacher into a student: the training settings of :class:`TrainConfig` plus the losses.

    The loss of one batch is ``alpha · output_loss + (1 − alpha) · CE(student, labels) + Σ weight · hint_loss``.

    Attributes:
        loss: how outputs are matched: ``kl`` (Hinton soft targets on logits,
            ``KL(teacher_T || student_T) · T²``), ``cosine`` or ``mse`` (embedding
            losses on pooled encoder outputs), or ``none`` (hints only).
        temperature: softmax temperature ``T`` of the soft targets.
        alpha: weight of the output loss; ``1 − alpha`` weights the hard-label cross-entropy.
        hints: feature hints on named layer pairs.

    Example:
        >>> cfg = DistillConfig(epochs=5, lr=0.05, temperature=4.0, alpha=0.9,
        ...                     hints=[{"student": "layer3", "teacher": "layer3", "loss": "attention"}])
        >>> cfg.hints[0]
        HintConfig(version=1, student='layer3', teacher='layer3', loss='attention', weight=1.0, adapter='auto')
        >>> cfg.train_config().lr
        0.05
    """

    loss: Literal["kl", "cosine", "mse", "none"] = "kl"
    temperature: float = Field(default=4.0, gt=0)
    alpha: float = Field(default=0.9, ge=0, le=1)
    hints: list[HintConfig] = Field(default_factory=list)

    def train_config(self) -> TrainConfig:
        """The :class:`TrainConfig` part (what the training loop needs)."""
        return TrainConfig.parse(self.model_dump(include=set(TrainConfig.model_fields)))
