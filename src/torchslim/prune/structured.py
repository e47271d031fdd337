"""Structured pruning: channels, neurons, attention heads and whole blocks, physically removed.

The dependency engine (:mod:`torchslim.graph.deps`) finds groups of coupled
channels (a residual stream, a Conv→BN→Conv chain, a flatten→Linear, the two
halves of a chunk-gated conv); each group is scored per channel by summing the
criterion over every coupled slice, the lowest channels are removed from every
member at once, and remaining widths are rounded to a multiple of ``round_to``
(default 8; odd widths run slower than dense). What was removed is recorded as a
replayable structure step.

:data:`PRUNE_STRUCTURED` is the technique object: ``plan`` traces the model,
selects the groups (heads, blocks), scores them and decides the structure
step(s), bisecting the sparsity for ``macs_target``, all on the unmodified model
or copies of it; ``apply`` slices the model (:func:`~torchslim.graph.slicing.apply_structure`).
Heads are in :mod:`torchslim.prune.heads`, blocks in :mod:`torchslim.prune.blocks`,
channel groups in :mod:`torchslim.prune.channels`.

Example:
    >>> model = ts.create_model("resnet_cifar", depth=8)
    >>> x = torch.randn(2, 3, 16, 16)
    >>> cfg = StructuredPruneConfig(granularity="channel", macs_target=0.5)
    >>> report = ts.prune_(model, cfg, example_input=x)   # 2x fewer MACs
    >>> report.meta["macs_after"] <= 0.5 * report.meta["macs_before"]
    True
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from torchslim.errors import TorchslimError, TransformRefusedError
from torchslim.graph.attention import attention_spec, attention_specs, is_attention
from torchslim.graph.deps import Dependencies, dependency_groups
from torchslim.graph.slicing import apply_structure
from torchslim.graph.surgery import get_module, is_conv1d
from torchslim.graph.trace import TraceError
from torchslim.measure import count_macs
from torchslim.measure.macs import call_model
from torchslim.prune.blocks import block_step
from torchslim.prune.channels import (
    bisect_sparsity,
    channel_step,
    fill_to_target,
    group_scores,
    select_groups,
    weight_scores,
)
from torchslim.prune.config import STRUCTURED_GRANULARITIES, LayerStructuredConfig, StructuredPruneConfig
from torchslim.prune.heads import head_step
from torchslim.report import LayerReport, Report, SkippedLayer
from torchslim.technique import Inputs, Plan, Selection, Technique, legacy_inputs, run

__all__ = [
    "PRUNE_STRUCTURED",
    "STRUCTURED_GRANULARITIES",
    "LayerStructuredConfig",
    "StructuredPruneConfig",
    "StructuredPruning",
    "prune_structured_",
]

FilterFn = Callable[[nn.Module, str], bool]
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class DeferredSelection(Selection):
    """Structured pruning selects groups, heads or blocks in ``plan`` (they need the trace): ``filter_fn`` goes there."""

    filter_fn: FilterFn | None = None


@dataclass
class StructureWork:
    """What ``apply`` does: the example input, the structure steps in order (blocks first), the criterion
    (for the reports), the removed blocks' reports."""

    x: Any
    steps: list[dict[str, Any]]
    criterion: str
    removed: list[LayerReport] = field(default_factory=list)
    block_step: dict[str, Any] | None = None


def _example(example_input: Any, calibration: Iterable[Any] | None) -> Any:
    if example_input is not None:
        return example_input
    if calibration is not None:
        batch = next(iter(calibration))
        if isinstance(batch, Mapping):  # a tokenizer's batch: the first sample of every input
            return {k: v[:1] for k, v in batch.items() if k not in ("labels", "label") and isinstance(v, torch.Tensor)}
        return batch[0][:1] if isinstance(batch, (tuple, list)) else batch[:1]
    raise TorchslimError("structured pruning needs example_input (or calibration batches) to trace the model")


def _dependencies(model: nn.Module, x: Any) -> Dependencies:
    """The model's channel groups; a model torch.fx cannot trace is a refusal naming it."""
    try:
        return dependency_groups(model, x)
    except TraceError as exc:
        raise TransformRefusedError(str(exc)) from exc


def _remove_blocks(
    model: nn.Module, cfg: StructuredPruneConfig, x: Any, inputs: Inputs, filter_fn: FilterFn | None
) -> tuple[dict[str, Any], list[LayerReport], list[SkippedLayer]]:
    """``remove_blocks``: the block step; a block holding a layer named exactly in ``targets`` stays."""
    named = [k for k, v in (cfg.targets or {}).items() if v is not None and not k.startswith(("re:", "re?:"))]

    def holds_named(name: str) -> bool:
        return any(k == name or k.startswith(name + ".") for k in named)

    def keep(mod: nn.Module, name: str) -> bool:
        return not holds_named(name) and (filter_fn is None or filter_fn(mod, name))

    block_cfg = StructuredPruneConfig(granularity="block", sparsity=cfg.remove_blocks, calibration=cfg.calibration)
    step, removed, skipped = block_step(model, block_cfg, x, inputs.calibration, keep)
    kept = "holds a layer named in targets (remove_blocks keeps it)"
    return step, removed, [SkippedLayer(s.name, kept) if holds_named(s.name) else s for s in skipped]


def _channel_plan(
    model: nn.Module, cfg: StructuredPruneConfig, x: Any, inputs: Inputs, filter_fn: FilterFn | None, macs0: int
) -> tuple[StructureWork, list[SkippedLayer]]:
    """Blocks first (``remove_blocks``, decided on a copy), then the channel step of what is left."""
    work, block = model, None
    removed: list[LayerReport] = []
    skipped: list[SkippedLayer] = []
    if cfg.remove_blocks is not None:
        block, removed, skipped = _remove_blocks(model, cfg, x, inputs, filter_fn)
        work = copy.deepcopy(model)
        apply_structure(work, block, record=False)
    chosen, more = select_groups(work, _dependencies(work, x), cfg, filter_fn)
    skipped = skipped + more
    if not chosen:
        raise TransformRefusedError("no prunable channel group: " + "; ".join(f"{s.name}: {s.reason}" for s in skipped))
    members = sorted({m.module for g, _ in chosen for m in g.members if m.role != "param"})
    elem = weight_scores(work, members, cfg, inputs.calibration, inputs.loss_fn)
    scores = {g.id: group_scores(work, g, elem, cfg) for g, _ in chosen}
    keep = None
    if cfg.macs_target is not None:
        sparsity = bisect_sparsity(work, chosen, scores, cfg, x, macs0)
        keep = fill_to_target(work, chosen, scores, cfg, x, macs0, sparsity)
    else:
        sparsity = float(cfg.sparsity or 0.0)
    step, _ = channel_step(work, chosen, scores, cfg, sparsity, keep=keep)
    steps = [step] if block is None else [block, step]
    return StructureWork(x, steps, cfg.criterion, removed, block), skipped


def _widths(mod: nn.Module, name: str = "") -> dict[str, int]:
    if is_attention(mod):
        return {"in": mod.q_proj.in_features, "out": mod.out_proj.out_features, "heads": mod.q_proj.out_features // mod.head_dim}
    spec = attention_spec(mod, name) if not isinstance(mod, (nn.Linear, *_CONVS)) else None
    if spec is not None:
        return {"heads": spec.heads, "kv_heads": spec.kv_heads}
    if isinstance(mod, nn.Linear):
        return {"in": mod.in_features, "out": mod.out_features}
    if is_conv1d(mod):
        return {"in": int(getattr(mod, "nx")), "out": int(getattr(mod, "nf"))}  # noqa: B009 - a duck-typed Conv1D
    if isinstance(mod, _CONVS):
        return {"in": mod.in_channels, "out": mod.out_channels}
    if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        return {"out": mod.num_features}
    if isinstance(mod, nn.LayerNorm):
        return {"out": mod.normalized_shape[0]}
    if isinstance(mod, nn.GroupNorm):
        return {"out": mod.num_channels}
    return {}


def _sliced(name: str, mod: nn.Module, criterion: str, before: dict[str, int]) -> LayerReport:
    """The report of a sliced module: its weight's shape, its own parameters (weight and bias) and widths."""
    weight = getattr(mod, "weight", None)
    own = list(mod.parameters(recurse=False))
    return LayerReport(
        name, type(mod).__name__, tuple(weight.shape) if weight is not None else (),
        sum(p.numel() for p in own), sum(int((p != 0).sum()) for p in own),
        "pruned", {"criterion": criterion, "width_before": before, "width_after": _widths(mod)},
    )


def _head_reports(model: nn.Module, work: StructureWork, before: dict[str, dict[str, int]]) -> list[LayerReport]:
    """One report per attention module that lost heads: its parameters, heads before and after."""
    layers = []
    for name in work.steps[-1].get("heads", {}):
        mod = get_module(model, name)
        params = list(mod.parameters())
        layers.append(LayerReport(
            name, type(mod).__name__, (), sum(p.numel() for p in params), sum(int((p != 0).sum()) for p in params),
            "pruned", {"criterion": work.criterion, "width_before": before[name], "width_after": _widths(mod, name)},
        ))
    return layers


def _check_forward(model: nn.Module, x: Any, steps: list[dict[str, Any]]) -> None:
    """Run the pruned model once (it stays in eval mode); a shape error refuses, naming what was sliced."""
    try:
        with torch.no_grad():
            call_model(model.eval(), x)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:  # shape errors, or a split into other parts
        changed = [n for step in steps for part in ("modules", "heads", "params") for n in step.get(part, {})]
        changed += [n for step in steps for n in step.get("blocks", [])]
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TransformRefusedError(
            f"structured pruning of {', '.join(changed)} breaks the model's forward pass ({first}); the model is unchanged"
        ) from exc


class StructuredPruning(Technique[StructuredPruneConfig, Plan]):
    """Channel, head and block pruning by surgery (:data:`PRUNE_STRUCTURED`)."""

    name = "prune_structured"
    title = "prune (structured)"
    config = StructuredPruneConfig
    verb = "prune"
    function = "prune_"  # structured pruning is prune_ with granularity channel, head or block
    handles = (nn.Linear, *_CONVS, nn.MultiheadAttention, nn.Embedding)

    def candidates(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """The layers that may produce prunable channels (groups and blocks are found on the trace)."""
        heads = {s.name for s in attention_specs(model)}
        return [(n, m) for n, m in model.named_modules()
                if n and (n in heads or isinstance(m, (nn.Linear, *_CONVS, nn.Embedding)) or is_conv1d(m))]

    def select(self, model: nn.Module, cfg: StructuredPruneConfig, filter_fn: FilterFn | None) -> Selection:
        """Nothing yet: the coupled groups, heads or blocks are selected in :meth:`plan`, with ``filter_fn``."""
        return DeferredSelection([], [], filter_fn)

    def plan(self, model: nn.Module, cfg: StructuredPruneConfig, selection: Selection, inputs: Inputs) -> Plan:
        """Trace, select, score and decide the structure step(s); the model is not changed."""
        filter_fn = selection.filter_fn if isinstance(selection, DeferredSelection) else None
        x = _example(inputs.example_input, inputs.calibration)
        macs0 = count_macs(model, x)
        if cfg.granularity == "block":
            step, removed, skipped = block_step(model, cfg, x, inputs.calibration, filter_fn)
            work = StructureWork(x, [step], cfg.criterion, removed)
        elif cfg.granularity == "head":
            step, skipped = head_step(model, cfg, inputs, filter_fn, x)
            work = StructureWork(x, [step], cfg.criterion)
        else:
            work, skipped = _channel_plan(model, cfg, x, inputs, filter_fn, macs0)
        return Plan(list(selection.skipped) + skipped, {"macs_before": macs0}, work)

    def apply(self, model: nn.Module, plan: Plan) -> list[LayerReport]:
        """Slice the model as planned, then run it once on the example input."""
        work: StructureWork = plan.work
        touched = {n for step in work.steps for part in ("modules", "heads") for n in step.get(part, {})}
        before = {n: _widths(m, n) for n, m in model.named_modules() if n in touched}
        for step in work.steps:
            apply_structure(model, step)
        layers = list(work.removed)
        for name in work.steps[-1].get("modules", {}):
            layers.append(_sliced(name, get_module(model, name), work.criterion, before[name]))
        layers += _head_reports(model, work, before)
        for name, kept in work.steps[-1].get("params", {}).items():  # a class token, positions: the last dim cut
            p = model.get_parameter(name)
            layers.append(LayerReport(name, "Parameter", tuple(p.shape), p.numel(), int((p != 0).sum()), "pruned",
                                      {"criterion": work.criterion, "width_after": {"out": len(kept)}}))
        _check_forward(model, work.x, work.steps)
        return layers

    def report(self, model: nn.Module, cfg: StructuredPruneConfig, plan: Plan, layers: list[LayerReport]) -> Report:
        """MACs before and after, the structure step(s) applied (replayable)."""
        work: StructureWork = plan.work
        macs0, macs1 = plan.meta["macs_before"], count_macs(model, work.x)
        meta = {"macs_before": macs0, "macs_after": macs1, "macs_ratio": macs0 / max(1, macs1), "structure_step": work.steps[-1]}
        if work.block_step is not None:
            meta["block_step"] = work.block_step
        changed = {layer.name for layer in layers}
        skipped = [  # a layer changed through one group and frozen in another: say that it is partly pruned
            SkippedLayer(s.name, f"partly pruned (see its layer row); this group's channels were kept: {s.reason}")
            if s.name in changed else s
            for s in plan.skipped
        ]
        return Report(title=self.title, technique=f"{self.name}:{cfg.granularity}", layers=layers, skipped=skipped, meta=meta)


#: the structured pruning technique (channel, head, block)
PRUNE_STRUCTURED = StructuredPruning()


def prune_structured_(
    model: nn.Module,
    config: StructuredPruneConfig | dict[str, Any] | None = None,
    *,
    filter_fn: FilterFn | None = None,
    calibration: Iterable[Any] | None = None,
    example_input: Any = None,
    loss_fn: LossFn | None = None,
    **deprecated: Any,
) -> Report:
    """Remove channels, heads or blocks from ``model`` in place; shapes shrink.

    Everything is decided on the unmodified model (and, for ``macs_target``, on
    copies of it) before the model is touched, and the change is one
    transaction: a refusal or any failure leaves it bit-identical.
    :func:`torchslim.prune_` calls this for ``channel``/``head``/``block`` configs.

    Args:
        model: the model (modified in place).
        config: a :class:`StructuredPruneConfig` or a mapping.
        filter_fn: ``(module, name) -> bool``; groups with a rejected producer are skipped.
        calibration: calibration batches for data-driven criteria and block scoring
            (earlier ``loader=``).
        example_input: one input batch, to trace the model and count MACs
            (default: the first calibration batch's first sample).
        loss_fn: ``(logits, targets) -> loss`` for gradient-based criteria (cross-entropy by default).

    Returns:
        A Report: every changed layer with its width before and after, every skipped group with why.

    Example:
        >>> model = ts.create_model("resnet_cifar", depth=8)
        >>> x = torch.randn(2, 3, 16, 16)
        >>> report = ts.prune_(model, {"granularity": "channel", "macs_target": 0.5}, example_input=x)
        >>> [(l.name, l.shape) for l in report.layers][:2]
        [('layer1.0.conv1', (8, 16, 3, 3)), ('layer1.0.bn1', (8,))]
    """
    inputs = legacy_inputs("prune_structured_", Inputs(calibration, example_input, loss_fn), deprecated)
    return run(PRUNE_STRUCTURED, model, config, filter_fn=filter_fn, inputs=inputs)
