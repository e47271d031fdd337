"""Language models: layer-by-layer calibration, GPTQ, AWQ, SparseGPT, Wanda, and their artefacts (docs/llm.md).

Example:
    >>> from torchslim.llm import gptq_, sparsegpt_, QuantizedWeight, Grid
    >>> Grid(bits=4, group_size=64).width(576)
    64
"""

from torchslim.llm.api import awq_, gptq_, rtn_, sparsegpt_, wanda_
from torchslim.llm.modules import QuantizedLinear
from torchslim.llm.qweight import Grid, QuantizedWeight

__all__ = ["Grid", "QuantizedLinear", "QuantizedWeight", "awq_", "gptq_", "rtn_", "sparsegpt_", "wanda_"]
