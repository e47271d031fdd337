"""Unstructured (element) and N:M pruning with masks: the :data:`PRUNE` technique.

``plan`` scores every chosen layer (one :func:`~torchslim.prune.importance.compute_scores`
call, hence one calibration pass, per criterion used) and computes every mask;
``apply`` attaches them (:func:`~torchslim.prune.mask.attach_mask`): masks stay
applied through training. Already-pruned weights stay pruned and count towards
the target, so pruning again with a higher sparsity is iterative pruning.

Example:
    >>> model = ts.create_model("lenet300")
    >>> report = run(PRUNE, model, {"sparsity": 0.5, "scope": "layer"})
    >>> [(l.name, l.details["sparsity_after"]) for l in report.layers], [s.name for s in report.skipped]
    ([('fc2', 0.5)], ['fc1', 'fc3'])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from torchslim.errors import TransformRefusedError
from torchslim.graph.deps import parametrized_reason
from torchslim.graph.surgery import is_conv1d
from torchslim.prune.config import LayerPruneConfig, PruneConfig
from torchslim.prune.importance import compute_scores
from torchslim.prune.mask import attach_mask, get_mask
from torchslim.prune.nm import nm_incompatibility, nm_mask
from torchslim.report import LayerReport, Report, SkippedLayer
from torchslim.report.coverage import skip_reason
from torchslim.technique import Inputs, Plan, Selection, Technique, legacy_inputs, refuse_if_empty, run

FilterFn = Callable[[nn.Module, str], bool]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Chosen = list[tuple[str, nn.Module, LayerPruneConfig]]

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prunable_layers(model: nn.Module, *, conv1d: bool = False) -> list[tuple[str, nn.Module]]:
    """Modules whose ``weight`` unstructured pruning may mask, in registration order.

    ``conv1d``: Hugging Face ``Conv1D`` layers (GPT-2's Linear, weight ``(in, out)``) too, as
    :data:`PRUNE` masks them (``sparse_train``'s penalties do not).

    Example:
        >>> from transformers.pytorch_utils import Conv1D
        >>> model = nn.Sequential(nn.Linear(4, 8), Conv1D(6, 8))
        >>> [n for n, _ in prunable_layers(model)], [n for n, _ in prunable_layers(model, conv1d=True)]
        (['0'], ['0', '1'])
    """
    return [(n, m) for n, m in model.named_modules()
            if n and (isinstance(m, PRUNABLE) or (conv1d and is_conv1d(m))) and parametrized_reason(m) is None]


def mask_skip_reason(name: str, module: nn.Module, params: list[str], verb: str = "prune_") -> str:
    """Why a mask-pruning verb (``prune_``, ``sparse_train``) left ``module``'s parameters ``params`` dense.

    Masks go on Linear and Conv1d/2d/3d weights only: an Embedding's table, a recurrent
    layer's weights and ``nn.MultiheadAttention``'s packed input projection are left
    dense and named here (its ``out_proj`` is a Linear and is pruned as one).

    Example:
        >>> mask_skip_reason("emb", nn.Embedding(10, 4), ["weight"])
        'Embedding: prune_ masks Linear, Conv1d/2d/3d weights (not this layer kind); its table (weight) is left dense'
        >>> mask_skip_reason("gru", nn.GRU(4, 4), ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"])
        'GRU: recurrent weights are not pruned (prune_ masks Linear, Conv1d/2d/3d weights); weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0 left dense'
    """
    kind, held = type(module).__name__, ", ".join(params)
    what = f"{verb} masks Linear, Conv1d/2d/3d weights"
    if (reason := parametrized_reason(module)) is not None:
        return f"{kind}: {reason}; {held} left dense"
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return f"{kind}: {what} (not this layer kind); its table ({held}) is left dense"
    if isinstance(module, nn.RNNBase):
        return f"{kind}: recurrent weights are not pruned ({what}); {held} left dense"
    if isinstance(module, nn.MultiheadAttention):
        return f"{kind}: its packed input projection ({held}) is not pruned ({what}; out_proj is a Linear, handled as one)"
    return skip_reason(name, module, params, verb, "pruned", PRUNABLE)


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


@dataclass
class LayerMask:
    """One layer's planned mask: the weights alive before, the mask to attach, what the report says."""

    name: str
    module: nn.Module
    live: torch.Tensor
    mask: torch.Tensor
    criterion: str
    granularity: str
    extra: dict[str, Any]


def _nm_layers(chosen: Chosen, cfg: PruneConfig, skipped: list[SkippedLayer]) -> Chosen:
    """The layers an ``n:m`` pattern fits (the others are skipped with why); per-layer sparsities refuse."""
    kept: Chosen = []
    for name, module, layer_cfg in chosen:
        shape = tuple(cast(torch.Tensor, module.weight).shape)
        why = nm_incompatibility(shape[::-1] if is_conv1d(module) else shape, cfg.m)  # Conv1D: (in, out)
        if layer_cfg.sparsity is not None:
            raise TransformRefusedError(
                f"targets give layer {name!r} its own sparsity, which granularity 'nm' does not use "
                f"(every group keeps n={cfg.n} of m={cfg.m})"
            )
        if why is not None:
            skipped.append(SkippedLayer(name, f"N:M {cfg.n}:{cfg.m} impossible: {why}"))
        else:
            kept.append((name, module, layer_cfg))
    return kept


def _scores(
    model: nn.Module, chosen: Chosen, cfg: PruneConfig, inputs: Inputs
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[str]]:
    """Every chosen layer's scores (dead weights at ``-inf``) and live weights, and the criteria used.

    One ``compute_scores`` call (one calibration pass) per criterion.
    """
    by_crit: dict[str, list[tuple[str, nn.Module]]] = {}
    for name, module, layer_cfg in chosen:
        by_crit.setdefault(layer_cfg.criterion or cfg.criterion, []).append((name, module))
    raw: dict[str, torch.Tensor] = {}
    for crit, layers in by_crit.items():
        raw.update(
            compute_scores(
                model, layers, crit, loader=inputs.calibration, batches=cfg.calibration.batches, loss_fn=inputs.loss_fn, seed=cfg.seed
            )
        )
    live = {name: _live(module) for name, module, _ in chosen}
    scores = {n: torch.where(live[n], raw[n], torch.full_like(raw[n], float("-inf"))) for n in raw}
    return scores, live, sorted(by_crit)


def _element_masks(chosen: Chosen, scores: dict[str, torch.Tensor], cfg: PruneConfig) -> dict[str, torch.Tensor]:
    """Keep-masks: layers with their own sparsity (or ``scope: layer``) alone, the others ranked together."""
    masks: dict[str, torch.Tensor] = {}
    pooled = [n for n, _, c in chosen if c.sparsity is None and cfg.scope == "global"]
    for name, _, layer_cfg in chosen:
        if name in pooled:
            continue
        sparsity = layer_cfg.sparsity if layer_cfg.sparsity is not None else cfg.target_sparsity
        s = scores[name]
        masks[name] = _k_lowest(s, round(sparsity * s.numel())).view_as(s)
    if pooled:
        flat = torch.cat([scores[n].flatten() for n in pooled])
        keep = _k_lowest(flat, round(cfg.target_sparsity * flat.numel()))
        offset = 0
        for name in pooled:
            n = scores[name].numel()
            masks[name] = keep[offset : offset + n].view_as(scores[name])
            offset += n
    return masks


def _report_extra(cfg: PruneConfig, layer_cfg: LayerPruneConfig) -> dict[str, Any]:
    """The report's ``pattern``/``scope`` of one layer."""
    if cfg.granularity == "nm":
        return {"pattern": f"{cfg.n}:{cfg.m}", "scope": "group"}
    return {"scope": "layer" if (layer_cfg.sparsity is not None or cfg.scope == "layer") else "global"}


class ElementPruning(Technique[PruneConfig, Plan]):
    """Element and N:M pruning with masks (:data:`PRUNE`)."""

    name = "prune"
    title = "prune"
    config = PruneConfig
    verb = "prune"
    handles = PRUNABLE

    def candidates(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """Every Linear/Conv layer and Hugging Face ``Conv1D`` (:func:`prunable_layers`)."""
        return prunable_layers(model, conv1d=True)

    def select(self, model: nn.Module, cfg: PruneConfig, filter_fn: FilterFn | None) -> Selection:
        """The one targets grammar over the prunable layers; a model without one refuses."""
        if not prunable_layers(model, conv1d=True):
            raise TransformRefusedError("the model has no prunable layer (Linear or Conv weight)")
        return super().select(model, cfg, filter_fn)

    def plan(self, model: nn.Module, cfg: PruneConfig, selection: Selection, inputs: Inputs) -> Plan:
        """Scores and masks of every chosen layer; nothing is attached yet."""
        chosen: Chosen = [(n, m, match.value if match and match.value else LayerPruneConfig()) for n, m, match in selection.chosen]
        skipped = list(selection.skipped)
        if cfg.granularity == "nm":
            chosen = _nm_layers(chosen, cfg, skipped)
        refuse_if_empty(chosen, skipped, "prune")
        scores, live, criteria = _scores(model, chosen, cfg, inputs)
        if cfg.granularity == "nm":
            masks = {name: nm_mask(scores[name], cfg.n, cfg.m, transposed=is_conv1d(m)) for name, m, _ in chosen}
        else:
            masks = _element_masks(chosen, scores, cfg)
        work = [
            LayerMask(name, module, live[name], masks[name] & live[name], layer_cfg.criterion or cfg.criterion, cfg.granularity,
                      _report_extra(cfg, layer_cfg))
            for name, module, layer_cfg in chosen
        ]
        return Plan(skipped, {"config": cfg.model_dump(), "criteria": criteria}, work)

    def apply(self, model: nn.Module, plan: Plan) -> list[LayerReport]:
        """Attach every planned mask; one report per layer."""
        with torch.no_grad():
            return [_attach(planned) for planned in plan.work]

    def skip_reason(self, name: str, module: nn.Module, params: list[str]) -> str:
        """:func:`mask_skip_reason` (Embedding, recurrent layers, attention input projections named)."""
        return mask_skip_reason(name, module, params)


def _attach(planned: LayerMask) -> LayerReport:
    live = planned.live
    before = 1.0 - int(live.sum()) / live.numel()
    attach_mask(planned.module, "weight", planned.mask)
    report = LayerReport.of(planned.name, planned.module, "pruned")
    report.details = {
        "criterion": planned.criterion,
        "granularity": planned.granularity,
        "sparsity_before": before,
        "sparsity_after": 1.0 - report.nonzeros / report.params,
        **planned.extra,
    }
    return report


#: the element / N:M pruning technique (masks)
PRUNE = ElementPruning()


def prune_(
    model: nn.Module,
    config: PruneConfig | dict[str, Any] | None = None,
    *,
    filter_fn: FilterFn | None = None,
    calibration: Iterable[Any] | None = None,
    example_input: Any = None,
    loss_fn: LossFn | None = None,
    **deprecated: Any,
) -> Report:
    """Prune ``model`` in place (element or N:M) with masks that stay applied.

    :func:`torchslim.prune_` calls this for ``element``/``nm`` configs. Already-pruned
    weights stay pruned and count towards the target, so calling this with rising
    sparsity implements iterative pruning. All scores and masks are computed
    before any mask is attached, and the change is one transaction: a refusal
    leaves the model bit-identical. For schedules (iterative, gradual) see
    :func:`torchslim.prune.schedule.prune_with_schedule`.

    Args:
        model: the model to prune (modified in place).
        config: a :class:`PruneConfig` or a mapping validated into one.
        filter_fn: optional ``(module, name) -> bool``; layers it rejects are skipped.
        calibration: ``(inputs, targets)`` calibration batches, required by criteria
            that need data (``gradient``, ``taylor``, ``hessian_*``, ``activation_*``);
            earlier ``loader=``.
        example_input: unused (masks need no trace); accepted for the one verb signature.
        loss_fn: ``(logits, targets) -> loss`` for gradient-based criteria
            (cross-entropy by default).

    Returns:
        A :class:`Report` listing every pruned layer (``details``: criterion,
        granularity, scope, ``sparsity_before``/``sparsity_after``) and every
        skipped one with its reason.

    Raises:
        ConfigError: invalid config or targets.
        TransformRefusedError: nothing to prune, or a data-needing criterion without ``calibration``.

    Example:
        >>> model = ts.create_model("lenet300", in_features=64)
        >>> report = ts.prune_(model, {"sparsity": 0.9, "scope": "global"})
        >>> report.layers[0].details["sparsity_after"]
        0.9
        >>> loader = ts.load_data("digits").loader("train", 128)     # taylor scores need gradients
        >>> model = ts.create_model("lenet300", in_features=64)
        >>> report = ts.prune_(model, {"granularity": "nm", "n": 2, "m": 4, "criterion": "taylor"}, calibration=loader)
        >>> report.layers[0].details["pattern"], report.layers[0].details["sparsity_after"]
        ('2:4', 0.5)
    """
    inputs = legacy_inputs("prune_", Inputs(calibration, example_input, loss_fn), deprecated)
    return run(PRUNE, model, config, filter_fn=filter_fn, inputs=inputs)
