"""Recipe stages of the language-model methods: ``rtn``, ``gptq``, ``awq``, ``sparsegpt``, ``wanda``.

Each stage's fields are its method's config; its ``calibration`` block
(:class:`~torchslim.llm.config.TextCalibration`: ``sequences``, ``seq_len``, ``seed``,
``batch_size``, ``source``) says which token sequences calibrate it. They are drawn, in
this order of preference:

1. by the recipe's data set, when it has a method ``calibration_tokens(n, seq_len, seed)``
   returning a LongTensor ``[n, seq_len]`` (a text-corpus data set);
2. from the public-domain calibration text (:func:`torchslim.data.corpora.calibration_tokens`,
   ``source``) with the model's own tokenizer (``StageContext.source.tokenizer``, a Hugging
   Face model's);
3. from the data set's calibration batches (``calibration_loader``) when their inputs are
   token ids ``[B, T]`` (or ``{"input_ids": ...}``).

Example:
    >>> from types import SimpleNamespace
    >>> class Text:
    ...     def calibration_tokens(self, n, seq_len, seed):
    ...         return torch.randint(100, (n, seq_len), generator=torch.Generator().manual_seed(seed))
    >>> cfg = LLM_STAGES["gptq"].tech.config.parse({"calibration": {"sequences": 3, "seq_len": 5}})
    >>> stage_tokens(cfg, SimpleNamespace(data=Text(), source=None)).shape
    torch.Size([3, 5])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from torchslim.config import CalibrationConfig
from torchslim.data import corpora
from torchslim.errors import TorchslimError
from torchslim.llm.awq import AWQ_METHOD
from torchslim.llm.calibrate import calibration_batches
from torchslim.llm.config import TextCalibration
from torchslim.llm.gptq import GPTQ_METHOD
from torchslim.llm.method import LLMMethod
from torchslim.llm.rtn import RTN_METHOD
from torchslim.llm.sparsegpt import SPARSEGPT_METHOD
from torchslim.llm.wanda import WANDA_METHOD
from torchslim.report import Report
from torchslim.technique import Inputs, run

__all__ = ["LLM_STAGES", "LLMStage", "stage_tokens"]


def stage_tokens(cfg: Any, ctx: Any) -> torch.Tensor:
    """The calibration token ids ``[sequences, seq_len]`` of a stage (see the module docstring).

    Raises:
        TorchslimError: neither the data set nor the model's tokenizer can give token sequences.
    """
    cal: TextCalibration = cfg.calibration
    data, source = getattr(ctx, "data", None), getattr(ctx, "source", None)
    draw = getattr(data, "calibration_tokens", None)
    if callable(draw):
        tokens = draw(cal.sequences, cal.seq_len, cal.seed)
    elif (tokenizer := getattr(source, "tokenizer", None)) is not None:
        tokens = corpora.calibration_tokens(tokenizer, cal.sequences, cal.seq_len, cal.seed, source=cal.source)
    elif data is not None and callable(getattr(data, "calibration_loader", None)):
        loader = data.calibration_loader(CalibrationConfig(batches=-(-cal.sequences // cal.batch_size),
                                                           batch_size=cal.batch_size, seed=cal.seed))
        batches = calibration_batches(_first(loader, cal.sequences), cal.batch_size)
        tokens = torch.cat([b[:, : cal.seq_len] for b in batches])[: cal.sequences]
    else:
        raise TorchslimError("an LLM stage needs calibration token sequences: a data set with calibration_tokens(n, "
                             "seq_len, seed), a Hugging Face model with its tokenizer, or token-id batches")
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
        raise TorchslimError(f"calibration tokens must be a LongTensor [n, seq_len], got {type(tokens).__name__}")
    return tokens.long()


def _first(loader: Any, sequences: int) -> list[Any]:
    """Batches of ``loader`` until ``sequences`` samples are in."""
    out, seen = [], 0
    for batch in loader:
        out.append(batch)
        x = batch["input_ids"] if isinstance(batch, dict) else batch[0] if isinstance(batch, (tuple, list)) else batch
        seen += int(x.shape[0])
        if seen >= sequences:
            break
    return out


@dataclass(frozen=True)
class LLMStage:
    """A stage type of an LLM method: its technique, runner and help line.

    :mod:`torchslim.stages.catalog` makes each a ``StageSpec(tech.config, runner, help=help)``
    (this package does not import the stages, which import it).
    """

    tech: LLMMethod
    help: str

    def runner(self, model: nn.Module, cfg: Any, ctx: Any) -> Report:
        """Draw the calibration tokens (:func:`stage_tokens`) and run the method, all or nothing."""
        calibration = stage_tokens(cfg, ctx) if self.tech.needs_calibration(cfg) else None
        return run(self.tech, model, cfg, inputs=Inputs(calibration=calibration))


#: the stage types, by name, for :mod:`torchslim.stages.catalog`
LLM_STAGES: dict[str, LLMStage] = {
    "rtn": LLMStage(RTN_METHOD, "LLM: round-to-nearest group-wise integer weights (QuantizedLinear), no data"),
    "gptq": LLMStage(GPTQ_METHOD, "LLM: GPTQ group-wise integer weights, calibrated decoder block by block"),
    "awq": LLMStage(AWQ_METHOD, "LLM: AWQ searched activation-aware scales folded into norms, then RTN or GPTQ"),
    "sparsegpt": LLMStage(
        SPARSEGPT_METHOD, "LLM: SparseGPT pruning (unstructured or N:M), optionally joint with integer quantization"
    ),
    "wanda": LLMStage(WANDA_METHOD, "LLM: Wanda |W|*||X|| pruning (or score: magnitude), unstructured or N:M"),
}
