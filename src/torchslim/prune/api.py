"""``prune_``: one verb for every pruning granularity.

``element`` and ``nm`` configs (:class:`PruneConfig`) run :data:`~torchslim.prune.unstructured.PRUNE`
(masks); ``channel``, ``head`` and ``block`` (:class:`StructuredPruneConfig`) run
:data:`~torchslim.prune.structured.PRUNE_STRUCTURED` (surgery: the model shrinks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from torchslim.prune.config import STRUCTURED_GRANULARITIES, PruneConfig, StructuredPruneConfig
from torchslim.prune.structured import PRUNE_STRUCTURED
from torchslim.prune.unstructured import PRUNE
from torchslim.report import Report
from torchslim.technique import Inputs, Technique, legacy_inputs, run


def technique_for(config: PruneConfig | StructuredPruneConfig | Mapping[str, Any] | None) -> Technique[Any, Any]:
    """The pruning technique a config's ``granularity`` picks.

    Example:
        >>> technique_for({"granularity": "head", "sparsity": 0.5}).name, technique_for({"sparsity": 0.5}).name
        ('prune_structured', 'prune')
    """
    structured = isinstance(config, StructuredPruneConfig) or (
        isinstance(config, Mapping) and config.get("granularity") in STRUCTURED_GRANULARITIES
    )
    return PRUNE_STRUCTURED if structured else PRUNE


def prune_(
    model: nn.Module,
    config: PruneConfig | StructuredPruneConfig | dict[str, Any] | None = None,
    *,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
    calibration: Iterable[Any] | None = None,
    example_input: Any = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    **deprecated: Any,
) -> Report:
    """Prune ``model`` in place; the config's ``granularity`` picks masks or surgery.

    Args:
        model: the model (modified in place; left bit-identical on refusal).
        config: a :class:`PruneConfig` (``element``/``nm``), a
            :class:`StructuredPruneConfig` (``channel``/``head``/``block``) or a mapping.
        filter_fn: ``(module, name) -> bool``; rejected layers are skipped.
        calibration: calibration batches for data-driven criteria (earlier ``loader=``).
        example_input: one input batch (structured pruning traces the model with it;
            masks do not use it).
        loss_fn: loss for gradient-based criteria (cross-entropy by default).

    Example:
        >>> model = ts.create_model("lenet300")
        >>> report = ts.prune_(model, {"sparsity": 0.9})                             # masks
        >>> [(l.name, l.params, l.nonzeros) for l in report.layers]                  # fc1, fc3 kept by default
        [('fc2', 30000, 3000)]
        >>> model = ts.create_model("resnet_cifar", depth=8)
        >>> x = torch.randn(2, 3, 16, 16)
        >>> report = ts.prune_(model, {"granularity": "channel", "macs_target": 0.5}, example_input=x)  # surgery
        >>> model.layer1[0].conv1
        Conv2d(16, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)
    """
    inputs = legacy_inputs("prune_", Inputs(calibration, example_input, loss_fn), deprecated)
    return run(technique_for(config), model, config, filter_fn=filter_fn, inputs=inputs)
