"""Attention-head pruning: the lowest-scoring heads of each attention module go.

A head's score is the criterion summed over its rows of the q/k/v projections
and its columns of the output projection.

Example:
    >>> model = ts.create_model("transformer_encoder", depth=1)
    >>> cfg = StructuredPruneConfig(granularity="head", sparsity=0.5)
    >>> step, skipped = head_step(model, cfg, Inputs(), None)
    >>> {name: len(kept) for name, kept in step["heads"].items()}, skipped
    ({'blocks.0.attn': 2}, [])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from torchslim.errors import TransformRefusedError
from torchslim.graph.deps import is_attention
from torchslim.prune.channels import weight_scores
from torchslim.prune.config import StructuredPruneConfig
from torchslim.report import SkippedLayer
from torchslim.targets import select_layers
from torchslim.technique import Inputs

FilterFn = Callable[[nn.Module, str], bool]


def head_step(
    model: nn.Module, cfg: StructuredPruneConfig, inputs: Inputs, filter_fn: FilterFn | None
) -> tuple[dict[str, Any], list[SkippedLayer]]:
    """The structure step ``{"heads": {module: kept heads}}`` and the attention modules skipped, with why.

    Each chosen module loses ``round(sparsity * heads)`` heads (its own ``sparsity``
    from ``targets``, else the config's), keeping at least one.

    Raises:
        TransformRefusedError: the model has no attention module torchslim can prune heads of.
    """
    attn = [(n, m) for n, m in model.named_modules() if is_attention(m)]
    if not attn:
        raise TransformRefusedError("granularity 'head': the model has no attention module with q/k/v/out projections and head_dim")
    chosen, skipped = select_layers(attn, cfg.targets, filter_fn=filter_fn)
    elem = weight_scores(model, [n for n, _ in attn], cfg, inputs.calibration, inputs.loss_fn)  # every module: the same random draws
    heads: dict[str, list[int]] = {}
    for name, mod, match in chosen:
        sparsity = match.value.sparsity if match and match.value and match.value.sparsity is not None else cfg.sparsity or 0.0
        hd, n_heads = mod.head_dim, mod.q_proj.out_features // mod.head_dim
        score = sum(elem[f"{name}.{p}"].sum(1).view(n_heads, hd).sum(1) for p in ("q_proj", "k_proj", "v_proj"))
        score = score + elem[f"{name}.out_proj"].sum(0).view(n_heads, hd).sum(1)
        keep = max(1, n_heads - int(round(sparsity * n_heads)))
        if keep < n_heads:
            heads[name] = sorted(torch.sort(score, descending=True, stable=True).indices[:keep].tolist())
    return {"heads": heads}, [SkippedLayer(n, r) for n, r in skipped]
