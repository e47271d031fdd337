"""Low-rank factorisation (``factorize_``): truncated SVD of Linear layers (optionally data-aware), Tucker-2 of convs.

Example:
    >>> report = ts.factorize_(model, {"ratio": 0.5})
"""

from torchslim.lowrank.api import FactorizeConfig, LayerFactorizeConfig, factorize_
from torchslim.lowrank.svd import (
    rank_for_energy,
    singular_values,
    svd_factors,
    svd_linear,
    svd_rank_for_ratio,
    whitening_factor,
)
from torchslim.lowrank.tucker import tucker2_conv, tucker2_factors, tucker2_ranks_for_ratio

__all__ = [
    "FactorizeConfig",
    "LayerFactorizeConfig",
    "factorize_",
    "rank_for_energy",
    "singular_values",
    "svd_factors",
    "svd_linear",
    "svd_rank_for_ratio",
    "tucker2_conv",
    "tucker2_factors",
    "tucker2_ranks_for_ratio",
    "whitening_factor",
]
