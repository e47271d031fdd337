"""Low-rank factorisation (``factorize_``): truncated SVD of Linear layers (optionally data-aware), Tucker-2 of convs.

``factorize_`` runs the technique object :data:`FACTORIZE` through :func:`torchslim.technique.run`.

Example:
    >>> model = ts.create_model("lenet300")
    >>> report = ts.factorize_(model, {"ratio": 0.5})       # first and last layers kept by default
    >>> [(l.name, l.details["params_before"], l.details["params_after"]) for l in report.layers]
    [('fc2', 30000, 14800)]
    >>> model.fc2              # a LowRank: still has in_features, out_features and a weight (the product)
    LowRank(
      (0): Linear(in_features=300, out_features=37, bias=False)
      (1): Linear(in_features=37, out_features=100, bias=True)
    )
"""

from torchslim.lowrank.api import (
    FACTORIZE,
    WEIGHT_READERS,
    FactorizeConfig,
    LayerFactorizeConfig,
    factorize_,
    tied_weights,
    weight_read_by_parent,
)
from torchslim.lowrank.factored import LowRank
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
    "FACTORIZE",
    "WEIGHT_READERS",
    "FactorizeConfig",
    "LayerFactorizeConfig",
    "LowRank",
    "factorize_",
    "rank_for_energy",
    "singular_values",
    "svd_factors",
    "svd_linear",
    "svd_rank_for_ratio",
    "tucker2_conv",
    "tucker2_factors",
    "tucker2_ranks_for_ratio",
    "tied_weights",
    "weight_read_by_parent",
    "whitening_factor",
]
