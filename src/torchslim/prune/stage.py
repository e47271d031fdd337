"""Recipe stage of regularised sparse training (``type: sparse_train``).

The ``prune`` stage itself (with its ``schedule``) is registered in
:mod:`torchslim.stages`.

Example (YAML):
    - {type: sparse_train, penalty: l1, strength: 5.0e-5, train: {epochs: 5, lr: 0.05},
       sparsity: 0.9, finetune: {epochs: 1, lr: 0.01}}
"""

from __future__ import annotations

from torch import nn

from torchslim.config import Config
from torchslim.prune.regularize import SparseTrainConfig, sparse_train
from torchslim.report import Report
from torchslim.stages import STAGES, StageContext, StageSpec


class SparseTrainStage(SparseTrainConfig):
    name: str | None = None


def _run_sparse_train(model: nn.Module, cfg: Config, ctx: StageContext) -> Report:
    if not isinstance(cfg, SparseTrainConfig):
        raise TypeError(f"expected a SparseTrainConfig, got {type(cfg).__name__}")
    return sparse_train(model, ctx.data, cfg.model_dump(exclude={"name"}), progress=ctx.progress, description=ctx.label)


STAGES.register("sparse_train")(
    StageSpec(
        SparseTrainStage,
        _run_sparse_train,
        help="train with an L1/L2/group-lasso penalty, then prune what it drove to zero (optionally fine-tune)",
    )
)
