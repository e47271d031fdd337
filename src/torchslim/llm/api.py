"""The verbs of the language-model methods: ``rtn_``, ``gptq_``, ``awq_``, ``sparsegpt_``, ``wanda_``.

Each is one :func:`torchslim.technique.run` of its technique, with the one verb signature
``verb(model, config=None, *, filter_fn=None, calibration=None, example_input=None) -> Report``.
``calibration`` is token ids: a LongTensor ``[N, T]`` (split into batches of
``config.calibration.batch_size``) or an iterable of ``[B, T]`` batches (or
``{"input_ids": ...}`` mappings). The model is changed in place, all or nothing.

Example:
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
    ...                                      num_attention_heads=2, num_key_value_heads=1, vocab_size=64))
    >>> report = gptq_(model, {"bits": 4, "group_size": 16}, calibration=torch.randint(64, (4, 16)))
    >>> sorted({layer.action for layer in report.layers}), "lm_head" in [s.name for s in report.skipped]
    (['quantized'], True)
    >>> type(model.model.layers[0].mlp.down_proj).__name__, report.meta["peak_rss_mb"] > 0
    ('QuantizedLinear', True)
"""

from __future__ import annotations

from typing import Any

from torch import nn

from torchslim.config import Config
from torchslim.llm.awq import AWQ_METHOD
from torchslim.llm.gptq import GPTQ_METHOD
from torchslim.llm.rtn import RTN_METHOD
from torchslim.llm.sparsegpt import SPARSEGPT_METHOD
from torchslim.llm.wanda import WANDA_METHOD
from torchslim.report import Report
from torchslim.technique import FilterFn, Inputs, legacy_inputs, run

__all__ = ["awq_", "gptq_", "rtn_", "sparsegpt_", "wanda_"]

ConfigLike = Config | dict[str, Any] | None


def rtn_(model: nn.Module, config: ConfigLike = None, *, filter_fn: FilterFn | None = None, calibration: Any = None,
         example_input: Any = None, **deprecated: Any) -> Report:
    """Round every chosen linear to nearest on the grid (:class:`~torchslim.llm.config.RTNConfig`); no data needed."""
    inputs = legacy_inputs("rtn_", Inputs(calibration, example_input), deprecated)
    return run(RTN_METHOD, model, config, filter_fn=filter_fn, inputs=inputs)


def gptq_(model: nn.Module, config: ConfigLike = None, *, filter_fn: FilterFn | None = None, calibration: Any = None,
          example_input: Any = None, **deprecated: Any) -> Report:
    """GPTQ-quantize a causal LM's linears block by block (:class:`~torchslim.llm.config.GPTQConfig`)."""
    inputs = legacy_inputs("gptq_", Inputs(calibration, example_input), deprecated)
    return run(GPTQ_METHOD, model, config, filter_fn=filter_fn, inputs=inputs)


def awq_(model: nn.Module, config: ConfigLike = None, *, filter_fn: FilterFn | None = None, calibration: Any = None,
         example_input: Any = None, **deprecated: Any) -> Report:
    """AWQ: searched activation-aware scales folded into the preceding layers, then RTN or GPTQ
    (:class:`~torchslim.llm.config.AWQConfig`)."""
    inputs = legacy_inputs("awq_", Inputs(calibration, example_input), deprecated)
    return run(AWQ_METHOD, model, config, filter_fn=filter_fn, inputs=inputs)


def sparsegpt_(model: nn.Module, config: ConfigLike = None, *, filter_fn: FilterFn | None = None, calibration: Any = None,
               example_input: Any = None, **deprecated: Any) -> Report:
    """SparseGPT pruning (unstructured or N:M), optionally with joint quantization
    (:class:`~torchslim.llm.config.SparseGPTConfig`)."""
    inputs = legacy_inputs("sparsegpt_", Inputs(calibration, example_input), deprecated)
    return run(SPARSEGPT_METHOD, model, config, filter_fn=filter_fn, inputs=inputs)


def wanda_(model: nn.Module, config: ConfigLike = None, *, filter_fn: FilterFn | None = None, calibration: Any = None,
           example_input: Any = None, **deprecated: Any) -> Report:
    """Wanda pruning (``score: magnitude``: the magnitude baseline, no data) (:class:`~torchslim.llm.config.WandaConfig`)."""
    inputs = legacy_inputs("wanda_", Inputs(calibration, example_input), deprecated)
    return run(WANDA_METHOD, model, config, filter_fn=filter_fn, inputs=inputs)
