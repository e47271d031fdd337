"""Pruning: importance criteria, masks and the ``prune_`` verb."""

from typing import Any

from torchslim.prune.config import CalibrationConfig, LayerPruneConfig, PruneConfig
from torchslim.prune.importance import CRITERIA, Criterion, Importance, ImportanceContext, compute_scores, register_criterion
from torchslim.prune.mask import attach_mask, iter_masks, reapply_masks, remove_masks
from torchslim.prune.nm import nm_mask, satisfies_nm
from torchslim.prune.sparse import load_sparse, save_sparse
from torchslim.prune.unstructured import prunable_layers
from torchslim.prune.api import prune_
from torchslim.prune.structured import StructuredPruneConfig, prune_structured_

# Schedules and regularised training build on torchslim.train, which imports
# torchslim.prune.mask: they load on first use so either package may be imported first.
_LAZY = {
    "GradualPruning": "torchslim.prune.schedule",
    "ScheduleConfig": "torchslim.prune.schedule",
    "ScheduledPruneConfig": "torchslim.prune.schedule",
    "gradual_sparsity": "torchslim.prune.schedule",
    "iterative_sparsity": "torchslim.prune.schedule",
    "prune_with_schedule": "torchslim.prune.schedule",
    "RegularizeConfig": "torchslim.prune.regularize",
    "SparseTrainConfig": "torchslim.prune.regularize",
    "SparsityRegularizer": "torchslim.prune.regularize",
    "sparse_train": "torchslim.prune.regularize",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'torchslim.prune' has no attribute {name!r}")


__all__ = [
    "CRITERIA",
    "CalibrationConfig",
    "Criterion",
    "GradualPruning",
    "Importance",
    "ImportanceContext",
    "LayerPruneConfig",
    "PruneConfig",
    "RegularizeConfig",
    "ScheduleConfig",
    "ScheduledPruneConfig",
    "SparseTrainConfig",
    "SparsityRegularizer",
    "StructuredPruneConfig",
    "attach_mask",
    "compute_scores",
    "gradual_sparsity",
    "iter_masks",
    "iterative_sparsity",
    "load_sparse",
    "nm_mask",
    "prunable_layers",
    "prune_",
    "prune_structured_",
    "prune_with_schedule",
    "reapply_masks",
    "register_criterion",
    "remove_masks",
    "satisfies_nm",
    "save_sparse",
    "sparse_train",
]
