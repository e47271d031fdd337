"""Folding: exact BatchNorm folds and linear merges (``fold_``), redundant-layer removal (``drop_layers_``).

Example:
    >>> report = ts.fold_(model.eval())
    >>> report = ts.drop_layers_(model, {"k": 2, "criterion": "block_influence"}, calibration=batches)
"""

from torchslim.fold.api import FoldConfig, fold_, plan_folds
from torchslim.fold.batchnorm import find_conv_bn_pairs, fold_batchnorms_, fold_bn, folded_weight_bias
from torchslim.fold.linear import merge_linear, merge_reason
from torchslim.fold.redundant import REDUNDANCY, DropLayersConfig, block_influence, candidate_blocks, drop_layers_

__all__ = [
    "REDUNDANCY",
    "DropLayersConfig",
    "FoldConfig",
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
