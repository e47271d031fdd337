"""Choosing what to compress: sensitivity analysis (the table the search's planner reads).

Example:
    >>> from torchslim.search import ANALYSES, SensitivityConfig
    >>> ANALYSES.names(), SensitivityConfig().bits
    (['bits', 'lowrank', 'structured', 'unstructured'], [8, 6, 4, 3, 2])
"""

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
    "Unit",
    "UnitResult",
    "sensitivity",
    "spearman",
    "sqnr_db",
]
