"""Choosing what to compress: sensitivity analysis, and the search (``torchslim.search.search``, docs/search.md).

``search`` is loaded on first use (it loads ONNX Runtime: ``import torchslim`` stays light).

Example:
    >>> from torchslim.search import ANALYSES, SensitivityConfig
    >>> ANALYSES.names(), SensitivityConfig().bits
    (['bits', 'lowrank', 'structured', 'unstructured'], [8, 6, 4, 3, 2])
"""

from typing import Any

from torchslim.search.config import LayerSensitivityConfig, SensitivityConfig
from torchslim.search.result import (
    AnalysisResult,
    BaselineResult,
    OptionResult,
    SensitivityFileError,
    SensitivityResult,
    UnitResult,
)
from torchslim.search.sensitivity import sensitivity, spearman, sqnr_db
from torchslim.search.space import ANALYSES, ANALYSIS_NAMES, Analysis, Unit

__all__ = [
    "ANALYSES",
    "ANALYSIS_NAMES",
    "Analysis",
    "AnalysisResult",
    "BaselineResult",
    "LayerSensitivityConfig",
    "OptionResult",
    "SensitivityConfig",
    "SensitivityFileError",
    "SensitivityResult",
    "SearchConfig",
    "Unit",
    "UnitResult",
    "search",
    "sensitivity",
    "spearman",
    "sqnr_db",
]


def __getattr__(name: str) -> Any:
    """``search`` and ``SearchConfig`` (:mod:`torchslim.search.api`), loaded when first used."""
    if name in ("search", "SearchConfig"):
        from torchslim.search import api, searchconfig

        value = api.search if name == "search" else searchconfig.SearchConfig
        globals()[name] = value
        return value
    raise AttributeError(f"module 'torchslim.search' has no attribute {name!r}")
