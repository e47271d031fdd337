"""Pruning: importance criteria, masks and the ``prune_`` verb."""

from torchslim.prune.config import LayerPruneConfig, PruneConfig
from torchslim.prune.importance import CRITERIA, Importance, ImportanceContext
from torchslim.prune.mask import attach_mask, iter_masks, reapply_masks, remove_masks
from torchslim.prune.unstructured import prunable_layers, prune_

__all__ = [
    "CRITERIA",
    "Importance",
    "ImportanceContext",
    "LayerPruneConfig",
    "PruneConfig",
    "attach_mask",
    "iter_masks",
    "prunable_layers",
    "prune_",
    "reapply_masks",
    "remove_masks",
]
