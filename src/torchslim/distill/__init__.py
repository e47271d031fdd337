"""Knowledge distillation: losses, the trainer callbacks, the ``distill`` verb and student builders.

Example:
    >>> import torchslim as ts
    >>> teacher = ts.create_model("mlp", hidden=[1200, 1200], dropout=0.5)
    >>> student = ts.create_model("mlp", hidden=[800, 800])
    >>> report = ts.distill(student, teacher, ts.load_data("mnist"), {"epochs": 5, "temperature": 20})
"""

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
from torchslim.distill.trainer import Distiller, distill

__all__ = [
    "DistillConfig",
    "Distiller",
    "HintConfig",
    "attention_map",
    "attention_transfer_loss",
    "distill",
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
