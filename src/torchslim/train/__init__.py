"""Training: the fine-tune loop with technique callbacks, atomic checkpoints, BatchNorm recalibration."""

from torchslim.train.checkpoint import load_checkpoint, load_state, load_weights, read_sidecar, save_checkpoint
from torchslim.train.loop import Callback, KeepConstraints, KeepMasks, TrainConfig, TrainState, finetune
from torchslim.train.recalibrate import recalibrate_batchnorm

__all__ = [
    "Callback",
    "KeepConstraints",
    "KeepMasks",
    "TrainConfig",
    "TrainState",
    "finetune",
    "load_checkpoint",
    "load_state",
    "load_weights",
    "read_sidecar",
    "recalibrate_batchnorm",
    "save_checkpoint",
]
