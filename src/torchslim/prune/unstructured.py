"""Unstructured (element) and N:M pruning with masks: the ``prune_`` verb."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from torchslim.errors import TransformRefusedError
from torchslim.prune.config import LayerPruneConfig, PruneConfig
from torchslim.prune.importance import compute_scores
from torchslim.prune.mask import attach_mask, get_mask
from torchslim.prune.nm import nm_incompatibility, nm_mask
from torchslim.report import LayerReport, Report, SkippedLayer
from torchslim.targets import select_layers

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
    picked, skipped = select_layers(
        layers, config.targets, filter_fn=filter_fn, keep_first_last=config.keep_first_last, kept_note="name it in targets to prune it"
    )
    chosen = [(n, m, match.value if match and match.value else LayerPruneConfig()) for n, m, match in picked]
    return chosen, [SkippedLayer(n, r) for n, r in skipped]


def _k_lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean keep-mask pruning exactly the ``k`` lowest scores (stable for ties)."""
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    if k > 0:
        order = torch.sort(scores.flatten().float(), stable=True).indices
        keep[order[:k]] = False
    return keep


def _live(module: nn.Module) -> torch.Tensor:
    """Weights still alive: the current mask, or the non-zeros when the layer has none."""
    old = get_mask(module, "weight")
    return (module.weight.detach() != 0).cpu() if old is None else old.detach().cpu().bool()


def prune_(
    model: nn.Module,
    config: PruneConfig | dict[str, Any],
    *,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
    loader: Iterable[Any] | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> Report:
    """Prune ``model`` in place (element or N:M) with masks that stay applied.

    Already-pruned weights stay pruned and count towards the target, so calling
    this with rising sparsity implements iterative pruning. All scores and masks
    are computed before any mask is attached: a refusal leaves the model
    bit-identical. For schedules (iterative, gradual) see
    :func:`torchslim.prune.schedule.prune_with_schedule`.

    Args:
        model: the model to prune (modified in place).
        config: a :class:`PruneConfig` or a mapping validated into one.
        filter_fn: optional ``(module, name) -> bool``; layers it rejects are skipped.
        loader: ``(inputs, targets)`` calibration batches, required by criteria
            that need data (``gradient``, ``taylor``, ``hessian_*``, ``activation_*``).
        loss_fn: ``(logits, targets) -> loss`` for gradient-based criteria
            (cross-entropy by default).

    Returns:
        A :class:`Report` listing every pruned layer (``details``: criterion,
        granularity, scope, ``sparsity_before``/``sparsity_after``) and every
        skipped one with its reason.

    Raises:
        ConfigError: invalid config or targets.
        TransformRefusedError: nothing to prune, or a data-needing criterion without ``loader``.

    Example:
        >>> model = ts.create_model("lenet300", in_features=64)
        >>> report = ts.prune_(model, {"sparsity": 0.9, "scope": "global"})
        >>> report.layers[0].details["sparsity_after"]
        0.9
        >>> loader = ts.load_data("digits").loader("train", 128)     # taylor scores need gradients
        >>> model = ts.create_model("lenet300", in_features=64)
        >>> report = ts.prune_(model, {"granularity": "nm", "n": 2, "m": 4, "criterion": "taylor"}, loader=loader)
        >>> report.layers[0].details["pattern"], report.layers[0].details["sparsity_after"]
        ('2:4', 0.5)
    """
    config = PruneConfig.parse(config)
    chosen, skipped = _select(model, config, filter_fn)
    if config.granularity == "nm":
        kept: list[tuple[str, nn.Module, LayerPruneConfig]] = []
        for name, module, layer_cfg in chosen:
            why = nm_incompatibility(tuple(module.weight.shape), config.m)
            if layer_cfg.sparsity is not None:
                raise TransformRefusedError(
                    f"targets give layer {name!r} its own sparsity, which granularity 'nm' does not use "
                    f"(every group keeps n={config.n} of m={config.m})"
                )
            if why is not None:
                skipped.append(SkippedLayer(name, f"N:M {config.n}:{config.m} impossible: {why}"))
            else:
                kept.append((name, module, layer_cfg))
        chosen = kept
    if not chosen:
        raise TransformRefusedError(
            "no layer left to prune: " + "; ".join(f"{s.name}: {s.reason}" for s in skipped)
        )
    # 1. scores, one compute_scores call (one calibration pass) per criterion used
    by_crit: dict[str, list[tuple[str, nn.Module]]] = {}
    for name, module, layer_cfg in chosen:
        by_crit.setdefault(layer_cfg.criterion or config.criterion, []).append((name, module))
    raw: dict[str, torch.Tensor] = {}
    for crit, layers in by_crit.items():
        raw.update(
            compute_scores(
                model, layers, crit, loader=loader, batches=config.calibration.batches, loss_fn=loss_fn, seed=config.seed
            )
        )
    live = {name: _live(module) for name, module, _ in chosen}
    scores = {n: torch.where(live[n], raw[n], torch.full_like(raw[n], float("-inf"))) for n in raw}

    # 2. masks
    masks: dict[str, torch.Tensor] = {}
    if config.granularity == "nm":
        for name, _, _ in chosen:
            masks[name] = nm_mask(scores[name], config.n, config.m) & live[name]
    else:
        pooled = [n for n, _, c in chosen if c.sparsity is None and config.scope == "global"]
        for name, _, layer_cfg in chosen:
            if name in pooled:
                continue
            sparsity = layer_cfg.sparsity if layer_cfg.sparsity is not None else config.target_sparsity
            s = scores[name]
            masks[name] = _k_lowest(s, round(sparsity * s.numel())).view_as(s) & live[name]
        if pooled:
            flat = torch.cat([scores[n].flatten() for n in pooled])
            keep = _k_lowest(flat, round(config.target_sparsity * flat.numel()))
            offset = 0
            for name in pooled:
                n = scores[name].numel()
                masks[name] = keep[offset : offset + n].view_as(scores[name]) & live[name]
                offset += n

    # 3. mutate
    layers = []
    with torch.no_grad():
        for name, module, layer_cfg in chosen:
            before = 1.0 - int(live[name].sum()) / live[name].numel()
            attach_mask(module, "weight", masks[name])
            w = module.weight
            nonzeros = int((w != 0).sum())
            details: dict[str, Any] = {
                "criterion": layer_cfg.criterion or config.criterion,
                "granularity": config.granularity,
                "sparsity_before": before,
                "sparsity_after": 1.0 - nonzeros / w.numel(),
            }
            if config.granularity == "nm":
                details["pattern"] = f"{config.n}:{config.m}"
                details["scope"] = "group"
            else:
                details["scope"] = "layer" if (layer_cfg.sparsity is not None or config.scope == "layer") else "global"
            layers.append(
                LayerReport(
                    name=name,
                    kind=type(module).__name__,
                    shape=tuple(w.shape),
                    params=w.numel(),
                    nonzeros=nonzeros,
                    action="pruned",
                    details=details,
                )
            )
    return Report(
        title="prune",
        technique="prune",
        layers=layers,
        skipped=skipped,
        meta={"config": config.model_dump(), "criteria": sorted(by_crit)},
    )
