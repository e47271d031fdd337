"""Deprecated: recipe stages are listed in :mod:`torchslim.stages.catalog`; these names forward there."""

from torchslim._compat import moved_names

__getattr__ = moved_names(__name__, {"SparseTrainStage": "torchslim.prune.regularize:SparseTrainConfig"})
