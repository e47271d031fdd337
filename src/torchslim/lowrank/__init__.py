"""Low-rank factorisation: truncated SVD of Linear layers, Tucker-2 of convolutions (``factorize_``).

Example:
    >>> report = ts.factorize_(model, {"ratio": 0.5})
"""

from torchslim.lowrank.api import FactorizeConfig, LayerFactorizeConfig, factorize_
from torchslim.lowrank.svd import rank_for_energy, singular_values, svd_factors, svd_linear, svd_rank_for_ratio
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
]
