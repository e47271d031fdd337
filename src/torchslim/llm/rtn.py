"""Round to nearest (RTN): every chosen linear rounded on the grid, no data; the baseline of every method.

Example:
    >>> from torchslim.technique import run
    >>> model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    >>> report = run(RTN_METHOD, model, {"bits": 4, "group_size": 8})
    >>> [(layer.name, layer.action) for layer in report.layers], type(model[0]).__name__
    ([('0', 'quantized'), ('2', 'quantized')], 'QuantizedLinear')
"""

from __future__ import annotations

from torch import nn

from torchslim.llm.config import RTNConfig
from torchslim.llm.gptq import grid_details
from torchslim.llm.method import BlockJob, LayerResult, LLMMethod
from torchslim.llm.qweight import QuantizedWeight

__all__ = ["RTN", "RTN_METHOD"]


class RTN(LLMMethod):
    """:meth:`QuantizedWeight.from_float <torchslim.llm.qweight.QuantizedWeight.from_float>` on every chosen linear."""

    name, title, config, verb, function = "rtn", "round-to-nearest weight quantization", RTNConfig, "quantize", "rtn_"

    def needs_calibration(self, cfg: RTNConfig) -> bool:
        return False

    def process_layer(self, name: str, module: nn.Linear, cfg: RTNConfig) -> LayerResult:
        grid = cfg.grid()
        return LayerResult(name, "quantized", quantized=QuantizedWeight.from_float(module.weight, grid), details=grid_details(grid))

    def process_block(self, job: BlockJob) -> list[LayerResult]:
        return [self.process_layer(n, job.linear(n), job.cfg) for n in job.names]


#: the RTN technique object
RTN_METHOD = RTN()
