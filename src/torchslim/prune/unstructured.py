"""Unstructured (element) pruning: the ``prune_`` verb."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from torchslim.errors import TransformRefusedError
from torchslim.prune.config import LayerPruneConfig, PruneConfig
from torchslim.prune.importance import CRITERIA, ImportanceContext
from torchslim.prune.mask import attach_mask, get_mask
from torchslim.report import LayerReport, Report, SkippedLayer
from torchslim.targets import resolve_targets

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules whose ``weight`` unstructured pruning may mask, in registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE) and n]


def _select(
    model: nn.Module, config: PruneConfig, filter_fn: Callable[[nn.Module, str], bool] | None
) -> tuple[list[tuple[str, nn.Module, LayerPruneConfig]], list[SkippedLayer]]:
    layers = prunable_layers(model)
    if not layers:
        raise TransformRefusedError("the model has no prunable layer (Linear or Conv weight)")
    matches = resolve_targets([n for n, _ in layers], config.targets)
    first, last = layers[0][0], layers[-1][0]
    chosen, skipped = [], []
    for name, module in layers:
        match = matches.get(name)
        if filter_fn is not None and not filter_fn(module, name):
            skipped.append(SkippedLayer(name, "rejected by filter_fn"))
        elif config.targets is not None and match is None:
            skipped.append(SkippedLayer(name, "not matched by any targets key"))
        elif match is not None and match.skip:
            skipped.append(SkippedLayer(name, f"excluded by targets[{match.key!r}] = null"))
        elif config.keep_first_last and name in (first, last) and not (match and match.key == name):
            which = "first" if name == first else "last"
            skipped.append(SkippedLayer(name, f"{which} layer kept (keep_first_last; name it in targets to prune it)"))
        else:
            chosen.append((name, module, match.value if match and match.value else LayerPruneConfig()))
    return chosen, skipped


def _k_lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean keep-mask pruning exactly the ``k`` lowest scores (stable for ties)."""
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    if k > 0:
        order = torch.sort(scores.flatten().float(), stable=True).indices
        keep[order[:k]] = False
    return keep


@torch.no_grad()
def prune_(
    model: nn.Module,
    config: PruneConfig | dict[str, Any],
    *,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
) -> Report:
    """Prune ``model`` in place to the configured sparsity with masks that stay applied.

    Already-pruned weights stay pruned and count towards the target, so calling
    this with rising sparsity implements iterative pruning. All masks are
    computed before any is attached: a refusal leaves the model unchanged.

    Args:
        model: the model to prune (modified in place).
        config: a :class:`PruneConfig` or a mapping validated into one.
        filter_fn: optional ``(module, name) -> bool``; layers it rejects are skipped.

    Returns:
        A :class:`Report` listing every pruned layer and every skipped one with its reason.

    Example:
        >>> report = ts.prune_(model, {"sparsity": 0.9, "scope": "global"})
        >>> report.layers[0].sparsity
    """
    config = PruneConfig.parse(config)
    chosen, skipped = _select(model, config, filter_fn)
    if not chosen:
        raise TransformRefusedError(
            "no layer left to prune: " + "; ".join(f"{s.name}: {s.reason}" for s in skipped)
        )
    gen = torch.Generator().manual_seed(config.seed)
    scores: dict[str, torch.Tensor] = {}
    before: dict[str, int] = {}
    for name, module, layer_cfg in chosen:
        w = module.weight
        crit = CRITERIA.get(layer_cfg.criterion or config.criterion)
        s = crit(w, ImportanceContext(module, name, gen)).to(torch.float32).cpu()
        old = get_mask(module, "weight")
        live = (w != 0).cpu() if old is None else old.cpu()
        before[name] = int(live.sum())
        scores[name] = torch.where(live, s, torch.full_like(s, float("-inf")))

    masks: dict[str, torch.Tensor] = {}
    pooled = [(n, m) for n, m, c in chosen if c.sparsity is None and config.scope == "global"]
    for name, module, layer_cfg in chosen:
        if (name, module) in pooled:
            continue
        sparsity = layer_cfg.sparsity if layer_cfg.sparsity is not None else config.sparsity
        s = scores[name]
        masks[name] = _k_lowest(s, round(sparsity * s.numel())).view_as(s)
    if pooled:
        flat = torch.cat([scores[n].flatten() for n, _ in pooled])
        keep = _k_lowest(flat, round(config.sparsity * flat.numel()))
        offset = 0
        for name, _ in pooled:
            n = scores[name].numel()
            masks[name] = keep[offset : offset + n].view_as(scores[name])
            offset += n

    layers = []
    for name, module, layer_cfg in chosen:
        attach_mask(module, "weight", masks[name])
        w = module.weight
        layers.append(
            LayerReport(
                name=name,
                kind=type(module).__name__,
                shape=tuple(w.shape),
                params=w.numel(),
                nonzeros=int((w != 0).sum()),
                action="pruned",
                details={
                    "criterion": layer_cfg.criterion or config.criterion,
                    "scope": "layer" if (layer_cfg.sparsity is not None or config.scope == "layer") else "global",
                    "sparsity_before": 1.0 - before[name] / w.numel(),
                },
            )
        )
    return Report(title="prune", technique="prune", layers=layers, skipped=skipped)
