"""``prune_``: one verb for every pruning granularity.

``element`` and ``nm`` configs (:class:`PruneConfig`) go to masks
(:mod:`torchslim.prune.unstructured`); ``channel``, ``head`` and ``block``
(:class:`StructuredPruneConfig`) physically shrink the model
(:mod:`torchslim.prune.structured`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from torchslim.prune import unstructured
from torchslim.prune.config import PruneConfig
from torchslim.prune.structured import STRUCTURED_GRANULARITIES, StructuredPruneConfig, prune_structured_
from torchslim.report import Report
from torchslim.technique import Inputs, legacy_inputs


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
        loss_fn: loss for gradient-based criteria (cross-entropy by default).
        example_input: one input batch (structured pruning traces the model with it).

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
    loader, example_input, loss_fn = inputs.calibration, inputs.example_input, inputs.loss_fn
    structured = isinstance(config, StructuredPruneConfig) or (
        isinstance(config, dict) and config.get("granularity") in STRUCTURED_GRANULARITIES
    )
    if structured:
        return prune_structured_(model, config, example_input=example_input, loader=loader, filter_fn=filter_fn)  # type: ignore[arg-type]
    return unstructured.prune_(model, config, filter_fn=filter_fn, loader=loader, loss_fn=loss_fn)  # type: ignore[arg-type]
