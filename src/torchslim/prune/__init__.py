"""Pruning: importance criteria, masks (:data:`PRUNE`), surgery (:data:`PRUNE_STRUCTURED`) and the ``prune_`` verb."""

from torchslim.prune.api import prune_
from torchslim.prune.config import (
    STRUCTURED_GRANULARITIES,
    CalibrationConfig,
    LayerPruneConfig,
    LayerStructuredConfig,
    PruneConfig,
    StructuredPruneConfig,
)
from torchslim.prune.importance import (
    CRITERIA,
    Criterion,
    Importance,
    ImportanceContext,
    compute_scores,
    register_criterion,
)
from torchslim.prune.mask import attach_mask, iter_masks, reapply_masks, remove_masks
from torchslim.prune.nm import nm_mask, satisfies_nm
from torchslim.prune.regularize import RegularizeConfig, SparseTrainConfig, SparsityRegularizer, sparse_train
from torchslim.prune.schedule import (
    GradualPruning,
    ScheduleConfig,
    ScheduledPruneConfig,
    gradual_sparsity,
    iterative_sparsity,
    prune_with_schedule,
)
from torchslim.prune.sparse import load_sparse, save_sparse
from torchslim.prune.structured import PRUNE_STRUCTURED, prune_structured_
from torchslim.prune.unstructured import PRUNE, prunable_layers

__all__ = [
    "CRITERIA",
    "PRUNE",
    "PRUNE_STRUCTURED",
    "STRUCTURED_GRANULARITIES",
    "CalibrationConfig",
    "Criterion",
    "GradualPruning",
    "Importance",
    "ImportanceContext",
    "LayerPruneConfig",
    "LayerStructuredConfig",
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
