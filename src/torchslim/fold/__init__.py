"""Folding: exact BatchNorm folds and linear merges (``fold_``), redundant-layer removal (``drop_layers_``).

Each verb runs a technique object (:data:`FOLD`, :data:`DROP_LAYERS`) through
:func:`torchslim.technique.run`; BatchNorm folding for quantization
(:func:`find_conv_bn_pairs`, :func:`fold_batchnorms_`) decides with the same planner as ``fold_``.

Example:
    >>> model = ts.create_model("mobilenet_v2", width_mult=0.5, num_classes=10)
    >>> report = ts.fold_(model.eval())              # every BatchNorm into its conv, exactly
    >>> len(report.layers)
    52
    >>> model = ts.create_model("transformer_encoder", image_size=8, patch_size=4)
    >>> batches = [torch.randn(16, 1, 8, 8) for _ in range(2)]
    >>> report = ts.drop_layers_(model, {"k": 2, "criterion": "block_influence"}, calibration=batches)
    >>> len(model.blocks)                            # 4 blocks, the 2 most redundant removed
    2
"""

from torchslim.fold.api import FOLD, FoldConfig, FoldPlan, fold_, plan_folds
from torchslim.fold.batchnorm import find_conv_bn_pairs, fold_batchnorms_, fold_bn, folded_weight_bias
from torchslim.fold.linear import merge_linear, merge_reason
from torchslim.fold.redundant import (
    DROP_LAYERS,
    REDUNDANCY,
    DropLayersConfig,
    block_influence,
    candidate_blocks,
    drop_layers_,
)

__all__ = [
    "DROP_LAYERS",
    "FOLD",
    "REDUNDANCY",
    "DropLayersConfig",
    "FoldConfig",
    "FoldPlan",
    "block_influence",
    "candidate_blocks",
    "drop_layers_",
    "find_conv_bn_pairs",
    "fold_",
    "fold_batchnorms_",
    "fold_bn",
    "folded_weight_bias",
    "merge_linear",
    "merge_reason",
    "plan_folds",
]
