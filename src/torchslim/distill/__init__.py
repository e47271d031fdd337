"""Knowledge distillation: losses, the teacher hook, the trainer callbacks, :func:`distill_from` and student builders.

``distill_from`` was ``ts.distill`` before ``torchslim.distill`` named this package again;
``ts.distill(...)`` and ``torchslim.distill.distill`` still work for one release, with a DeprecationWarning.

Example:
    A wide teacher with dropout, trained first, then a narrow student trained to
    match it (Hinton et al. 2015 use ``hidden=[1200, 1200]`` and ``[800, 800]``
    on ``"mnist"``; small widths on ``"digits"`` keep this quick).

    >>> import torchslim as ts
    >>> data = ts.load_data("digits")
    >>> teacher = ts.create_model("mlp", in_features=64, hidden=[256, 256], dropout=0.5)
    >>> _ = ts.finetune(teacher, data, {"epochs": 3, "lr": 0.05})
    >>> student = ts.create_model("mlp", in_features=64, hidden=[32, 32])
    >>> report = ts.distill_from(student, teacher, data, {"epochs": 3, "temperature": 20})
    >>> sorted(k for k in report.meta if k.endswith("val_accuracy"))
    ['student_val_accuracy', 'teacher_val_accuracy']
"""

from torchslim._compat import callable_module, deprecated_alias
from torchslim.distill.config import DistillConfig, HintConfig
from torchslim.distill.losses import (
    attention_map,
    attention_transfer_loss,
    embedding_loss,
    feature_loss,
    hinton_loss,
    make_adapter,
    pooled,
    soft_target_loss,
)
from torchslim.distill.students import find_layer_stack, keep_layers, thinner
from torchslim.distill.tap import TeacherTap
from torchslim.distill.trainer import Distiller, distill_from

distill = deprecated_alias(distill_from, "torchslim.distill.distill", "torchslim.distill_from")
callable_module(__name__, distill_from, "ts.distill", "ts.distill_from")

__all__ = [
    "DistillConfig",
    "Distiller",
    "HintConfig",
    "TeacherTap",
    "attention_map",
    "attention_transfer_loss",
    "distill",
    "distill_from",
    "embedding_loss",
    "feature_loss",
    "find_layer_stack",
    "hinton_loss",
    "keep_layers",
    "make_adapter",
    "pooled",
    "soft_target_loss",
    "thinner",
]
