"""Structured pruning: channels, neurons, attention heads and whole blocks, physically removed.

The dependency engine (:mod:`torchslim.graph.deps`) finds groups of coupled
channels (a residual stream, a Conv→BN→Conv chain, a flatten→Linear); each group
is scored per channel by summing the criterion over every coupled slice, the
lowest channels are removed from every member at once, and remaining widths are
rounded to a multiple of ``round_to`` (default 8; odd widths run slower than
dense). What was removed is recorded as a replayable structure step.

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
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from torchslim.config import CalibrationConfig, Config, calibration_field
from torchslim.errors import TorchslimError, TransformRefusedError
from torchslim.graph.deps import Dependencies, Group, dependency_groups, is_attention
from torchslim.graph.slicing import apply_structure
from torchslim.graph.surgery import get_module
from torchslim.measure import count_macs
from torchslim.report import LayerReport, Report, SkippedLayer
from torchslim.targets import check_target_keys, resolve_targets


STRUCTURED_GRANULARITIES = ("channel", "head", "block")


class LayerStructuredConfig(Config):
    """Per-layer override inside ``targets`` (keyed by a producer layer's name)."""

    sparsity: float | None = Field(default=None, ge=0.0, lt=1.0)


class StructuredPruneConfig(Config):
    """Structured pruning.

    Attributes:
        granularity: ``channel`` (conv filters/channels and Linear neurons, with
            everything coupled to them), ``head`` (attention heads) or ``block``
            (whole residual blocks / transformer layers replaced by identity).
        sparsity: fraction of channels (heads, blocks) removed in each group.
        macs_target: instead of ``sparsity``, keep at most this fraction of the
            model's MACs (e.g. 0.5 = 2x fewer); the sparsity is found by bisection.
        remove_blocks: with ``channel``: first remove this fraction of the
            shape-preserving residual blocks / layers (lowest block influence on the
            calibration data), then prune channels of what is left; ``macs_target``
            then counts both. Blocks holding a layer named exactly in ``targets`` are kept. On CPUs fewer layers run faster than thinner layers
            at equal MACs (``benchmarks/prune_latency_shapes.py``).
        criterion: ``l2`` (group L2 norm, default), ``l1``, ``random``, or any
            registered element criterion (scores summed over the coupled slices).
        scope: ``layer`` (the same fraction in every group) or ``global``
            (channels ranked across groups after normalising each group by its mean).
        round_to: remaining widths are multiples of this (1 disables).
        min_channels: no group keeps fewer channels than this.
        targets: ``{name | "re:pattern": override | null}`` keyed by producer layers.
        keep_first_last: leave the group fed by the first layer alone unless named exactly.
        calibration: the calibration batches data-driven criteria and block scoring use
            (``batches`` of them; a recipe stage draws ``batch_size`` samples each from ``split``).
        seed: for ``random``.
    """

    RENAMED: ClassVar[dict[str, str]] = {"calibration_batches": "calibration.batches"}

    granularity: Literal["channel", "head", "block"] = "channel"
    sparsity: float | None = Field(default=None, ge=0.0, lt=1.0)
    macs_target: float | None = Field(default=None, gt=0.0, lt=1.0)
    remove_blocks: float | None = Field(default=None, gt=0.0, lt=1.0)
    criterion: str = "l2"
    scope: Literal["layer", "global"] = "layer"
    round_to: int = Field(default=8, ge=1)
    min_channels: int = Field(default=1, ge=1)
    targets: dict[str, LayerStructuredConfig | None] | None = None
    keep_first_last: bool = True
    calibration: CalibrationConfig = calibration_field(batches=8, batch_size=64)
    seed: int = 0

    @model_validator(mode="after")
    def _one_amount(self) -> StructuredPruneConfig:
        if (self.sparsity is None) == (self.macs_target is None):
            raise ValueError("give exactly one of sparsity or macs_target")
        if self.macs_target is not None and self.granularity != "channel":
            raise ValueError("macs_target is supported for granularity 'channel'")
        if self.remove_blocks is not None and self.granularity != "channel":
            raise ValueError("remove_blocks combines block removal with granularity 'channel'; for blocks alone use granularity 'block'")
        return self

    @field_validator("targets")
    @classmethod
    def _check_targets(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v:
            issues = check_target_keys(v)
            if issues:
                raise ValueError("; ".join(f"{i.message} ({i.value!r})" for i in issues))
        return v


# ---------------------------------------------------------------------------- scoring
def _weight_scores(model: nn.Module, modules: list[str], cfg: StructuredPruneConfig, loader: Iterable[Any] | None) -> dict[str, torch.Tensor]:
    """Element scores per module weight (attention modules: per projection)."""
    names: list[str] = []
    for n in modules:
        m = get_module(model, n)
        if is_attention(m):
            names += [f"{n}.{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj")]
        elif isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() >= 2:
            names.append(n)
    layers = [(n, get_module(model, n)) for n in names]
    if cfg.criterion in ("l2", "l1"):
        p = 2 if cfg.criterion == "l2" else 1
        return {n: m.weight.detach().abs().float().pow(p).cpu() for n, m in layers}
    if cfg.criterion == "random":
        g = torch.Generator().manual_seed(cfg.seed)
        return {n: torch.rand(m.weight.shape, generator=g) for n, m in layers}
    from torchslim.prune import importance

    compute = getattr(importance, "compute_scores", None)
    if compute is None:
        raise TorchslimError(f"criterion {cfg.criterion!r} is not available for structured pruning; use l2, l1 or random")
    return compute(model, layers, cfg.criterion, loader=loader, batches=cfg.calibration.batches, seed=cfg.seed)


def _group_scores(model: nn.Module, group: Group, scores: dict[str, torch.Tensor], cfg: StructuredPruneConfig) -> torch.Tensor:
    total = torch.zeros(group.channels)
    c = torch.arange(group.channels)
    for mem in group.members:
        mod = get_module(model, mem.module)
        pos = (mem.offset + c[:, None] * mem.inner + torch.arange(mem.inner)[None, :])  # channels x inner
        if mem.role in ("out", "dw") and mem.module in scores:
            s = scores[mem.module]
            total += s.flatten(1).sum(1)[pos].sum(1) if s.dim() > 1 else s[pos].sum(1)
        elif mem.role == "in" and mem.module in scores:
            s = scores[mem.module].transpose(0, 1).flatten(1).sum(1)  # per input position
            total += s[pos].sum(1)
        elif mem.role == "attn_in":
            for proj in ("q_proj", "k_proj", "v_proj"):
                key = f"{mem.module}.{proj}"
                if key in scores:
                    total += scores[key].sum(0)[pos].sum(1)
        elif mem.role == "attn_out" and f"{mem.module}.out_proj" in scores:
            total += scores[f"{mem.module}.out_proj"].sum(1)[pos].sum(1)
        elif mem.role == "bn" and cfg.criterion in ("l2", "l1") and mod.weight is not None:
            w = mod.weight.detach().abs().float().cpu()
            total += (w.pow(2) if cfg.criterion == "l2" else w)[pos].sum(1)
    return total


# ---------------------------------------------------------------------------- allocation
def _keep_count(channels: int, sparsity: float, cfg: StructuredPruneConfig) -> int:
    want = channels * (1.0 - sparsity)
    if cfg.round_to > 1 and channels > cfg.round_to:
        keep = cfg.round_to * max(1, round(want / cfg.round_to))
    else:
        keep = max(1, round(want))
    return int(min(channels, max(keep, min(cfg.min_channels, channels))))


def _channel_step(
    model: nn.Module, groups: list[tuple[Group, float | None]], scores: dict[int, torch.Tensor], cfg: StructuredPruneConfig, sparsity: float
) -> tuple[dict[str, Any], dict[int, int]]:
    """The structure step removing ``sparsity`` of each group's channels (global: by normalised ranking)."""
    keep: dict[int, int] = {}
    if cfg.scope == "global":
        pooled = [(g, scores[g.id] / scores[g.id].mean().clamp_min(1e-12)) for g, own in groups if own is None]
        if pooled:
            flat = torch.cat([s for _, s in pooled])
            k = int(round(sparsity * flat.numel()))
            thr = flat.sort().values[k - 1] if k > 0 else torch.tensor(-1.0)
            for g, s in pooled:
                local = float((s <= thr).float().mean()) if k > 0 else 0.0
                keep[g.id] = _keep_count(g.channels, local, cfg)
    for g, own in groups:
        if g.id not in keep:
            keep[g.id] = _keep_count(g.channels, own if own is not None else sparsity, cfg)
    removed: dict[tuple[str, str], set[int]] = {}
    sizes: dict[tuple[str, str], int] = {}
    for g, _ in groups:
        n_keep = keep[g.id]
        if n_keep >= g.channels:
            continue
        order = torch.sort(scores[g.id], descending=True, stable=True).indices
        drop = sorted(order[n_keep:].tolist())
        for mem in g.members:
            key = (mem.module, "in" if mem.role in ("in", "attn_in") else "out")
            mod = get_module(model, mem.module)
            sizes[key] = _dim_size(mod, key[1])
            bucket = removed.setdefault(key, set())
            for c in drop:
                bucket.update(range(mem.offset + c * mem.inner, mem.offset + (c + 1) * mem.inner))
    modules: dict[str, dict[str, list[int]]] = {}
    for (name, key), gone in removed.items():
        modules.setdefault(name, {})[key] = [i for i in range(sizes[(name, key)]) if i not in gone]
    return {"modules": modules}, keep


def _dim_size(mod: nn.Module, key: str) -> int:
    if is_attention(mod):
        return mod.q_proj.in_features if key == "in" else mod.out_proj.out_features
    if isinstance(mod, nn.Linear):
        return mod.in_features if key == "in" else mod.out_features
    if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return mod.in_channels if key == "in" else mod.out_channels
    if isinstance(mod, nn.LayerNorm):
        return mod.normalized_shape[0]
    return int(mod.num_features)


# ---------------------------------------------------------------------------- the verb
def _select_groups(
    model: nn.Module, deps: Dependencies, cfg: StructuredPruneConfig, filter_fn: Callable[[nn.Module, str], bool] | None
) -> tuple[list[tuple[Group, float | None]], list[SkippedLayer]]:
    producers = [p for g in deps.groups for p in g.producers]
    candidates = [g for g in deps.groups if g.producers]
    names = sorted({p for g in candidates for p in g.producers} | set(deps.blocked))
    matches = resolve_targets(names, cfg.targets)
    for name, match in matches.items():
        if match.key == name and match.value is not None:
            reason = deps.blocked.get(name) or next((g.frozen for g in deps.groups_of(name) if g.frozen and name in g.producers), None)
            if reason:
                raise TransformRefusedError(f"layer {name} cannot be pruned structurally: {reason}")
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    first = min(producers, key=lambda n: order.get(n, 0)) if producers else None
    chosen, skipped = [], []
    for g in candidates:
        label = g.producers[0]
        if g.frozen:
            skipped.append(SkippedLayer(label, f"frozen: {g.frozen}"))
            continue
        hits = [matches[p] for p in g.producers if p in matches]
        if filter_fn is not None and not all(filter_fn(get_module(model, p), p) for p in g.producers):
            skipped.append(SkippedLayer(label, "rejected by filter_fn"))
        elif cfg.targets is not None and not hits:
            skipped.append(SkippedLayer(label, "not matched by any targets key"))
        elif any(h.skip for h in hits):
            skipped.append(SkippedLayer(label, "excluded by targets (null)"))
        elif cfg.keep_first_last and first in g.producers and not any(h.key == first for h in hits):
            skipped.append(SkippedLayer(label, "fed by the first layer (keep_first_last; name it in targets to prune it)"))
        else:
            own = next((h.value.sparsity for h in hits if h.value is not None and h.value.sparsity is not None), None)
            chosen.append((g, own))
    return chosen, skipped


def _example(example_input: Any, loader: Iterable[Any] | None) -> Any:
    if example_input is not None:
        return example_input
    if loader is not None:
        batch = next(iter(loader))
        return batch[0][:1] if isinstance(batch, (tuple, list)) else batch[:1]
    raise TorchslimError("structured pruning needs example_input (or a calibration loader) to trace the model")


def prune_structured_(
    model: nn.Module,
    config: StructuredPruneConfig | dict[str, Any],
    *,
    example_input: Any = None,
    loader: Iterable[Any] | None = None,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
) -> Report:
    """Remove channels, heads or blocks from ``model`` in place; shapes shrink.

    Everything is decided on the unmodified model (and, for ``macs_target``, on
    copies of it) before the model is touched: a refusal leaves it bit-identical.

    Args:
        model: the model (modified in place).
        config: a :class:`StructuredPruneConfig` or a mapping.
        example_input: one input batch, to trace the model and count MACs.
        loader: calibration batches for data-driven criteria and block scoring.
        filter_fn: ``(module, name) -> bool``; groups with a rejected producer are skipped.

    Returns:
        A Report: every changed layer with its width before and after, every skipped group with why.

    Example:
        >>> model = ts.create_model("resnet_cifar", depth=8)
        >>> x = torch.randn(2, 3, 16, 16)
        >>> report = ts.prune_(model, {"granularity": "channel", "macs_target": 0.5}, example_input=x)
        >>> [(l.name, l.shape) for l in report.layers][:2]
        [('layer1.0.conv1', (8, 16, 3, 3)), ('layer1.0.bn1', (8,))]
    """
    cfg = StructuredPruneConfig.parse(config)
    x = _example(example_input, loader)
    macs_before = count_macs(model, x)
    block_step: dict[str, Any] | None = None
    if cfg.granularity == "block":
        step, layers, skipped = _block_step(model, cfg, x, loader, filter_fn)
    elif cfg.granularity == "head":
        step, layers, skipped = _head_step(model, cfg, x, loader, filter_fn)
    else:
        work, layers, skipped = model, [], []
        if cfg.remove_blocks is not None:
            # decide on a copy: blocks first, then channels of the thinner-in-depth copy
            block_cfg = StructuredPruneConfig(granularity="block", sparsity=cfg.remove_blocks,
                                              calibration_batches=cfg.calibration.batches)
            named = [k for k, v in (cfg.targets or {}).items() if v is not None and not k.startswith("re:")]

            def keep_named(mod: nn.Module, name: str) -> bool:  # a block holding a layer named in targets stays
                inside = any(k == name or k.startswith(name + ".") for k in named)
                return not inside and (filter_fn is None or filter_fn(mod, name))

            block_step, layers, skipped = _block_step(model, block_cfg, x, loader, keep_named)
            work = copy.deepcopy(model)
            apply_structure(work, block_step, record=False)
        deps = dependency_groups(work, x)
        chosen, more_skipped = _select_groups(work, deps, cfg, filter_fn)
        skipped = skipped + more_skipped
        if not chosen:
            raise TransformRefusedError("no prunable channel group: " + "; ".join(f"{s.name}: {s.reason}" for s in skipped))
        member_modules = sorted({m.module for g, _ in chosen for m in g.members})
        elem = _weight_scores(work, member_modules, cfg, loader)
        scores = {g.id: _group_scores(work, g, elem, cfg) for g, _ in chosen}
        if cfg.macs_target is not None:
            sparsity = _bisect_sparsity(work, chosen, scores, cfg, x, macs_before)
        else:
            sparsity = float(cfg.sparsity or 0.0)
        step, _ = _channel_step(work, chosen, scores, cfg, sparsity)
        del work
    before = {n: _widths(m) for n, m in model.named_modules()}
    if block_step is not None:
        apply_structure(model, block_step)
    apply_structure(model, step)
    for name, dims in step.get("modules", {}).items():
        mod = get_module(model, name)
        layers.append(
            LayerReport(name, type(mod).__name__, tuple(getattr(mod, "weight").shape) if getattr(mod, "weight", None) is not None else (),
                        sum(p.numel() for p in mod.parameters(recurse=False)), sum(int((p != 0).sum()) for p in mod.parameters(recurse=False)),
                        "pruned", {"criterion": cfg.criterion, "width_before": before[name], "width_after": _widths(mod)})
        )
    with torch.no_grad():
        out = model.eval()(x) if not isinstance(x, tuple) else model.eval()(*x)
    del out
    macs_after = count_macs(model, x)
    return Report(
        title="prune (structured)",
        technique=f"prune_structured:{cfg.granularity}",
        layers=layers,
        skipped=skipped,
        meta={"macs_before": macs_before, "macs_after": macs_after, "macs_ratio": macs_before / max(1, macs_after), "structure_step": step,
              **({"block_step": block_step} if block_step is not None else {})},
    )


def _widths(mod: nn.Module) -> dict[str, int]:
    if is_attention(mod):
        return {"in": mod.q_proj.in_features, "out": mod.out_proj.out_features, "heads": mod.q_proj.out_features // mod.head_dim}
    if isinstance(mod, nn.Linear):
        return {"in": mod.in_features, "out": mod.out_features}
    if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return {"in": mod.in_channels, "out": mod.out_channels}
    if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        return {"out": mod.num_features}
    if isinstance(mod, nn.LayerNorm):
        return {"out": mod.normalized_shape[0]}
    return {}


def _bisect_sparsity(
    model: nn.Module, chosen: list[tuple[Group, float | None]], scores: dict[int, torch.Tensor], cfg: StructuredPruneConfig, x: Any, macs0: int
) -> float:
    """Smallest sparsity whose pruned copy has at most ``macs_target`` of the MACs."""
    goal = cfg.macs_target * macs0  # type: ignore[operator]

    def macs_at(s: float) -> int:
        trial = copy.deepcopy(model)
        step, _ = _channel_step(trial, chosen, scores, cfg, s)
        apply_structure(trial, step, record=False)
        return count_macs(trial, x)

    hi = 0.95
    if macs_at(hi) > goal:
        raise TransformRefusedError(
            f"macs_target {cfg.macs_target} cannot be reached: pruning 95% of every prunable group leaves "
            f"{macs_at(hi) / macs0:.2f} of the MACs (frozen or excluded layers keep the rest)"
        )
    lo = 0.0
    for _ in range(14):
        mid = (lo + hi) / 2
        if macs_at(mid) <= goal:
            hi = mid
        else:
            lo = mid
    return hi


def _head_step(
    model: nn.Module, cfg: StructuredPruneConfig, x: Any, loader: Iterable[Any] | None, filter_fn: Callable[[nn.Module, str], bool] | None
) -> tuple[dict[str, Any], list[LayerReport], list[SkippedLayer]]:
    attn = [(n, m) for n, m in model.named_modules() if is_attention(m)]
    if not attn:
        raise TransformRefusedError("granularity 'head': the model has no attention module with q/k/v/out projections and head_dim")
    matches = resolve_targets([n for n, _ in attn], cfg.targets)
    heads, skipped = {}, []
    elem = _weight_scores(model, [n for n, _ in attn], cfg, loader)
    for name, mod in attn:
        match = matches.get(name)
        if (filter_fn is not None and not filter_fn(mod, name)) or (match is not None and match.skip) or (cfg.targets is not None and match is None):
            skipped.append(SkippedLayer(name, "excluded by targets or filter_fn"))
            continue
        sparsity = match.value.sparsity if match and match.value and match.value.sparsity is not None else cfg.sparsity or 0.0
        hd, n_heads = mod.head_dim, mod.q_proj.out_features // mod.head_dim
        score = sum(elem[f"{name}.{p}"].sum(1).view(n_heads, hd).sum(1) for p in ("q_proj", "k_proj", "v_proj"))
        score = score + elem[f"{name}.out_proj"].sum(0).view(n_heads, hd).sum(1)
        keep = max(1, n_heads - int(round(sparsity * n_heads)))
        if keep < n_heads:
            heads[name] = sorted(torch.sort(score, descending=True, stable=True).indices[:keep].tolist())
    return {"heads": heads}, [], skipped


def _block_candidates(model: nn.Module, x: Any) -> list[str]:
    containers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Sequential, nn.ModuleList))]
    names = [f"{n}.{c}" if n else c for n, m in containers for c, _ in m.named_children()]
    shapes: dict[str, bool] = {}
    hooks = []
    for name in names:
        mod = get_module(model, name)
        if not any(isinstance(sub, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) for sub in mod.modules()):
            continue

        def hook(m: nn.Module, args: Any, out: Any, name: str = name) -> None:
            if args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
                shapes[name] = tuple(args[0].shape) == tuple(out.shape)

        hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            model(x) if not isinstance(x, tuple) else model(*x)
            model.train(was)
    finally:
        for h in hooks:
            h.remove()
    return [n for n in names if shapes.get(n)]


def _block_step(
    model: nn.Module, cfg: StructuredPruneConfig, x: Any, loader: Iterable[Any] | None, filter_fn: Callable[[nn.Module, str], bool] | None
) -> tuple[dict[str, Any], list[LayerReport], list[SkippedLayer]]:
    """Blocks whose output equals their input in shape, scored by how much they change it (1 - cosine)."""
    names = _block_candidates(model, x)
    if not names:
        raise TransformRefusedError("granularity 'block': no shape-preserving block inside an nn.Sequential/ModuleList")
    matches = resolve_targets(names, cfg.targets)
    chosen, skipped = [], []
    for n in names:
        m = matches.get(n)
        if (filter_fn is not None and not filter_fn(get_module(model, n), n)) or (m is not None and m.skip) or (cfg.targets is not None and m is None):
            skipped.append(SkippedLayer(n, "excluded by targets or filter_fn"))
        else:
            chosen.append(n)
    influence = {n: 0.0 for n in chosen}
    hooks = []
    for n in chosen:
        def hook(mod: nn.Module, args: Any, out: Any, n: str = n) -> None:
            a, b = args[0].flatten(1).float(), out.flatten(1).float()
            influence[n] += float((1 - torch.nn.functional.cosine_similarity(a, b, dim=1)).sum())

        hooks.append(get_module(model, n).register_forward_hook(hook))
    batches = [(x,)] if loader is None else loader
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i, batch in enumerate(batches):
                if i >= cfg.calibration.batches:
                    break
                inp = batch[0] if isinstance(batch, (tuple, list)) else batch
                model(inp)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    k = int(round((cfg.sparsity or 0.0) * len(chosen)))
    drop = sorted(chosen, key=lambda n: influence[n])[:k]
    layers = [LayerReport(n, type(get_module(model, n)).__name__, (), 0, 0, "removed", {"influence": influence[n]}) for n in drop]
    return {"blocks": drop}, layers, skipped
