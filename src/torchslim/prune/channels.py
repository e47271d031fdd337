"""Channel pruning of coupled groups: which groups, how their channels score, how many stay.

The dependency engine (:mod:`torchslim.graph.deps`) gives the groups of coupled
channels; :func:`select_groups` picks the ones the config's ``targets`` and
``filter_fn`` allow (the one targets grammar, :func:`torchslim.targets.select_layers`,
over the groups' producer layers), :func:`group_scores` sums a criterion over every
coupled slice, :func:`channel_step` turns a sparsity into a structure step and
:func:`bisect_sparsity` finds the sparsity meeting a MAC budget.

Example:
    >>> from torchslim.graph.deps import dependency_groups
    >>> model = ts.create_model("lenet300")
    >>> deps = dependency_groups(model, torch.randn(1, 784))
    >>> cfg = StructuredPruneConfig(sparsity=0.5, round_to=1)
    >>> chosen, skipped = select_groups(model, deps, cfg, None)
    >>> [g.producers for g, _ in chosen], [(s.name, s.reason) for s in skipped]
    ([['fc2']], [('fc1', 'fed by the first layer (keep_first_last; name it in targets to prune it)'), ('fc3', 'frozen: reaches the model output')])
    >>> scores = {g.id: group_scores(model, g, weight_scores(model, ["fc2", "fc3"], cfg, None), cfg) for g, _ in chosen}
    >>> step, keep = channel_step(model, chosen, scores, cfg, 0.5)
    >>> list(step["modules"]), [len(dims.get("out", dims.get("in"))) for dims in step["modules"].values()]
    (['fc2', 'fc3'], [50, 50])
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from torchslim.budget import bisect
from torchslim.errors import TransformRefusedError
from torchslim.graph.attention import attention_spec, is_attention
from torchslim.graph.deps import Dependencies, Group
from torchslim.graph.slicing import apply_structure
from torchslim.graph.surgery import get_module, is_conv1d
from torchslim.measure import count_macs
from torchslim.measure.macs import mha_slow_path
from torchslim.prune.config import StructuredPruneConfig
from torchslim.prune.importance import compute_scores
from torchslim.report import SkippedLayer
from torchslim.targets import resolve_targets, select_layers

FilterFn = Callable[[nn.Module, str], bool]
#: a chosen group and its own sparsity from ``targets`` (``None``: the config's)
Chosen = tuple[Group, float | None]
#: the bisection of ``macs_target``: sparsities in ``[0, MAX_SPARSITY]``, halved this many times
MAX_SPARSITY, HALVINGS = 0.95, 14
#: at most this many MAC counts give channels back after the bisection (:func:`fill_to_target`)
FILL_TRIALS = 64


#: ``nn.MultiheadAttention``'s fused fast path off while MACs are counted: torch's FLOP counter does not see
#: inside the fused kernel, and a pruned attention no longer takes it, so both counts must go the plain way
dense_attention = mha_slow_path


# ---------------------------------------------------------------------------- selection
def _refuse_named_frozen(deps: Dependencies, matches: dict[str, Any]) -> None:
    """A layer named exactly in ``targets`` (with a config) that cannot be pruned is a refusal that says why."""
    for name, match in matches.items():
        if match.key == name and match.value is not None:
            reason = deps.blocked.get(name) or next(
                (g.frozen for g in deps.groups_of(name) if g.frozen and name in g.producers), None
            )
            if reason:
                raise TransformRefusedError(f"layer {name} cannot be pruned structurally: {reason}")


def select_groups(
    model: nn.Module, deps: Dependencies, cfg: StructuredPruneConfig, filter_fn: FilterFn | None
) -> tuple[list[Chosen], list[SkippedLayer]]:
    """The prunable groups ``targets`` and ``filter_fn`` allow, each with its own sparsity, and the skipped ones.

    The targets grammar is applied to the producer layers (and the blocked ones,
    so that naming them refuses with the reason). A group is skipped when it is
    frozen, when ``filter_fn`` rejects one of its producers, when a ``null`` entry
    excludes one of them, when ``targets`` matches none of them, or
    (``keep_first_last``) when the first producer feeds it and no key names that
    layer exactly. Each group is reported under its first producer.

    Raises:
        ConfigError: a targets key matches no producer layer.
        TransformRefusedError: a layer named exactly in ``targets`` cannot be pruned (with why).
    """
    candidates = [g for g in deps.groups if g.producers]
    names = sorted({p for g in candidates for p in g.producers} | set(deps.blocked))
    _refuse_named_frozen(deps, resolve_targets(names, cfg.targets))
    picked, excluded = select_layers([(n, get_module(model, n)) for n in names], cfg.targets)
    hits = {name: match for name, _, match in picked}
    why = dict(excluded)
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    producers = [p for g in deps.groups for p in g.producers]
    first = min(producers, key=lambda n: order.get(n, 0)) if producers else None
    chosen: list[Chosen] = []
    skipped: list[SkippedLayer] = []
    for g in candidates:
        label = g.producers[0]
        null = next((why[p] for p in g.producers if p in why and why[p].startswith("excluded")), None)
        matched = [m for m in (hits.get(p) for p in g.producers) if m is not None]
        if g.frozen:
            skipped.append(SkippedLayer(label, f"frozen: {g.frozen}"))
        elif filter_fn is not None and not all(filter_fn(get_module(model, p), p) for p in g.producers):
            skipped.append(SkippedLayer(label, "rejected by filter_fn"))
        elif null is None and not any(p in hits for p in g.producers):
            skipped.append(SkippedLayer(label, "not matched by any targets key"))
        elif null is not None:
            skipped.append(SkippedLayer(label, null))
        elif cfg.keep_first_last and first in g.producers and not any(m.key == first for m in matched):
            skipped.append(SkippedLayer(label, "fed by the first layer (keep_first_last; name it in targets to prune it)"))
        else:
            own = next((m.value.sparsity for m in matched if m.value is not None and m.value.sparsity is not None), None)
            chosen.append((g, own))
    return chosen, skipped


# ---------------------------------------------------------------------------- scoring
def weight_scores(
    model: nn.Module,
    modules: list[str],
    cfg: StructuredPruneConfig,
    calibration: Iterable[Any] | None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Element scores per module weight (attention modules: per projection), ``(out, in, ...)`` like a Linear's or Conv's.

    ``l2``/``l1`` are the squared / absolute weights, ``random`` draws from a
    generator seeded with ``cfg.seed`` (in the order of ``modules``); any other
    registered criterion goes through :func:`~torchslim.prune.importance.compute_scores`.
    """
    names: list[str] = []
    mha: list[str] = []
    for n in modules:
        m = get_module(model, n)
        if is_attention(m):
            names += [f"{n}.{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj")]
        elif isinstance(m, nn.MultiheadAttention):
            names.append(f"{n}.out_proj")
            mha.append(n)
        elif isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() >= 2:
            names.append(n)
    layers = [(n, get_module(model, n)) for n in names]
    if cfg.criterion in ("l2", "l1"):
        p = 2 if cfg.criterion == "l2" else 1
        scores = {n: m.weight.detach().abs().float().pow(p).cpu() for n, m in layers}
    elif cfg.criterion == "random":
        g = torch.Generator().manual_seed(cfg.seed)
        scores = {n: torch.rand(m.weight.shape, generator=g) for n, m in layers}
    else:
        scores = compute_scores(
            model, layers, cfg.criterion, loader=calibration, batches=cfg.calibration.batches, loss_fn=loss_fn, seed=cfg.seed
        )
    for n, m in layers:  # a Hugging Face Conv1D stores its weight (in, out): scores are (out, in) like a Linear's
        if is_conv1d(m):
            scores[n] = scores[n].t()
    for n in mha:
        scores.update(_mha_scores(get_module(model, n), n, cfg))
    return scores


def _mha_scores(module: nn.Module, name: str, cfg: StructuredPruneConfig) -> dict[str, torch.Tensor]:
    """``<name>.q_proj``/``k_proj``/``v_proj`` scores of an ``nn.MultiheadAttention``'s packed projections
    (weight criteria only; other criteria score it through its ``out_proj``)."""
    spec = attention_spec(module, name)
    if spec is None or cfg.criterion not in ("l2", "l1", "random"):
        return {}
    weights = spec.weights(module)
    g = torch.Generator().manual_seed(cfg.seed)
    p = 2 if cfg.criterion == "l2" else 1
    return {
        f"{name}.{r}_proj": torch.rand(weights[r].shape, generator=g) if cfg.criterion == "random" else weights[r].abs().float().pow(p).cpu()
        for r in ("q", "k", "v")
    }


def group_scores(model: nn.Module, group: Group, scores: dict[str, torch.Tensor], cfg: StructuredPruneConfig) -> torch.Tensor:
    """One score per channel of ``group``: the element scores summed over every coupled slice."""
    total = torch.zeros(group.channels)
    c = torch.arange(group.channels)
    for mem in group.members:
        mod = get_module(model, mem.module)
        pos = (mem.offset + c[:, None] * mem.inner + torch.arange(mem.inner)[None, :])  # channels x inner
        if mem.role == "param" and cfg.criterion in ("l2", "l1"):  # a class token, positions: by their last dim
            w = getattr(mod, mem.param).detach().abs().float().cpu()
            total += (w.pow(2) if cfg.criterion == "l2" else w).reshape(-1, w.shape[-1]).sum(0)[pos].sum(1)
        elif mem.role == "emb" and mem.module in scores:  # an embedding table: channel c is column c
            total += scores[mem.module].sum(0)[pos].sum(1)
        elif mem.role in ("out", "dw") and mem.module in scores:
            s = scores[mem.module]
            total += s.flatten(1).sum(1)[pos].sum(1) if s.dim() > 1 else s[pos].sum(1)
        elif mem.role == "in" and mem.module in scores:
            total += _per_input(mod, scores[mem.module])[pos].sum(1)
        elif mem.role == "attn_in":
            for proj in ("q_proj", "k_proj", "v_proj"):
                key = f"{mem.module}.{proj}"
                if key in scores:
                    total += scores[key].sum(0)[pos].sum(1)
        elif mem.role == "mha_inner":
            for proj in ("q_proj", "k_proj", "v_proj"):
                if f"{mem.module}.{proj}" in scores:
                    total += scores[f"{mem.module}.{proj}"].sum(1)[pos].sum(1)
            if f"{mem.module}.out_proj" in scores:
                total += scores[f"{mem.module}.out_proj"].sum(0)[pos].sum(1)
        elif mem.role == "attn_out" and f"{mem.module}.out_proj" in scores:
            total += scores[f"{mem.module}.out_proj"].sum(1)[pos].sum(1)
        elif mem.role == "bn" and cfg.criterion in ("l2", "l1") and mod.weight is not None:
            w = mod.weight.detach().abs().float().cpu()
            total += (w.pow(2) if cfg.criterion == "l2" else w)[pos].sum(1)
    return total


def _per_input(mod: nn.Module, s: torch.Tensor) -> torch.Tensor:
    """The element scores summed per input position (a grouped conv's weight holds one group's inputs per row)."""
    groups = int(getattr(mod, "groups", 1))
    if groups == 1:
        return s.transpose(0, 1).flatten(1).sum(1)
    per = s.flatten(2).sum(2).view(groups, s.shape[0] // groups, s.shape[1]).sum(1)  # (groups, inputs per group)
    return per.flatten()


# ---------------------------------------------------------------------------- allocation
def keep_count(channels: int, sparsity: float, cfg: StructuredPruneConfig) -> int:
    """Channels a group of ``channels`` keeps at ``sparsity``: rounded to ``round_to``, at least ``min_channels``."""
    want = channels * (1.0 - sparsity)
    if cfg.round_to > 1 and channels > cfg.round_to:
        keep = cfg.round_to * max(1, round(want / cfg.round_to))
    else:
        keep = max(1, round(want))
    return int(min(channels, max(keep, min(cfg.min_channels, channels))))


def _keep_counts(groups: list[Chosen], scores: dict[int, torch.Tensor], cfg: StructuredPruneConfig, sparsity: float) -> dict[int, int]:
    keep: dict[int, int] = {}
    if cfg.scope == "global":
        pooled = [(g, scores[g.id] / scores[g.id].mean().clamp_min(1e-12)) for g, own in groups if own is None]
        if pooled:
            flat = torch.cat([s for _, s in pooled])
            k = int(round(sparsity * flat.numel()))
            thr = flat.sort().values[k - 1] if k > 0 else torch.tensor(-1.0)
            for g, s in pooled:
                local = float((s <= thr).float().mean()) if k > 0 else 0.0
                keep[g.id] = keep_count(g.channels, local, cfg)
    for g, own in groups:
        if g.id not in keep:
            keep[g.id] = keep_count(g.channels, own if own is not None else sparsity, cfg)
    return keep


def channel_step(
    model: nn.Module, groups: list[Chosen], scores: dict[int, torch.Tensor], cfg: StructuredPruneConfig, sparsity: float,
    keep: dict[int, int] | None = None,
) -> tuple[dict[str, Any], dict[int, int]]:
    """The structure step removing ``sparsity`` of each group's channels (global: by normalised ranking).

    ``keep`` (channels per group id) replaces the counts ``sparsity`` gives. Returns the step and the
    channels each group keeps.
    """
    keep = _keep_counts(groups, scores, cfg, sparsity) if keep is None else keep
    removed: dict[tuple[str, str], set[int]] = {}
    sizes: dict[tuple[str, str], int] = {}
    for g, _ in groups:
        n_keep = keep[g.id]
        if n_keep >= g.channels:
            continue
        order = torch.sort(scores[g.id], descending=True, stable=True).indices
        drop = sorted(order[n_keep:].tolist())
        for mem in g.members:
            mod = get_module(model, mem.module)
            if mem.role == "param":  # a parameter used directly: ``<owner>.<name>``, its last dimension
                key = (f"{mem.module}.{mem.param}" if mem.module else mem.param, "param")
                sizes[key] = int(getattr(mod, mem.param).shape[-1])
            else:
                key = (mem.module, "in" if mem.role in ("in", "attn_in") else "inner" if mem.role == "mha_inner" else "out")
                sizes[key] = _dim_size(mod, key[1])
            bucket = removed.setdefault(key, set())
            for c in drop:
                bucket.update(range(mem.offset + c * mem.inner, mem.offset + (c + 1) * mem.inner))
    modules: dict[str, dict[str, list[int]]] = {}
    params: dict[str, list[int]] = {}
    for (name, side), gone in removed.items():
        kept = [i for i in range(sizes[(name, side)]) if i not in gone]
        if side == "param":
            params[name] = kept
        else:
            modules.setdefault(name, {})[side] = kept
    return ({"modules": modules, "params": params} if params else {"modules": modules}), keep


def _dim_size(mod: nn.Module, key: str) -> int:
    if isinstance(mod, nn.MultiheadAttention):
        if key == "inner":
            return int(mod.num_heads * mod.head_dim)
        return int(mod.out_proj.out_features if key == "out" else (mod.in_proj_weight if mod.in_proj_weight is not None else mod.q_proj_weight).shape[1])
    if is_attention(mod):
        return mod.q_proj.in_features if key == "in" else mod.out_proj.out_features
    if isinstance(mod, nn.Linear):
        return mod.in_features if key == "in" else mod.out_features
    if is_conv1d(mod):
        return int(getattr(mod, "nx" if key == "in" else "nf"))
    if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return mod.in_channels if key == "in" else mod.out_channels
    if isinstance(mod, nn.LayerNorm):
        return mod.normalized_shape[0]
    if isinstance(mod, nn.Embedding):
        return mod.embedding_dim
    if isinstance(mod, nn.GroupNorm):
        return mod.num_channels
    return int(mod.num_features)


def _pruned_macs(model: nn.Module, chosen: list[Chosen], scores: dict[int, torch.Tensor], cfg: StructuredPruneConfig,
                 x: Any, sparsity: float, keep: dict[int, int] | None = None) -> int:
    """MACs of a copy of ``model`` pruned at ``sparsity`` (or to ``keep`` channels per group)."""
    trial = copy.deepcopy(model)
    step, _ = channel_step(trial, chosen, scores, cfg, sparsity, keep=keep)
    apply_structure(trial, step, record=False)
    return count_macs(trial, x)


def bisect_sparsity(
    model: nn.Module, chosen: list[Chosen], scores: dict[int, torch.Tensor], cfg: StructuredPruneConfig, x: Any, macs0: int
) -> float:
    """Smallest sparsity whose pruned copy has at most ``macs_target`` of the MACs (:func:`torchslim.budget.bisect`).

    Raises:
        TransformRefusedError: even ``MAX_SPARSITY`` of every chosen group leaves more MACs than the target.
    """
    goal = cfg.macs_target * macs0  # type: ignore[operator]

    def macs_at(s: float) -> int:
        return _pruned_macs(model, chosen, scores, cfg, x, s)

    most = macs_at(MAX_SPARSITY)
    if most > goal:
        raise TransformRefusedError(
            f"macs_target {cfg.macs_target} cannot be reached: pruning 95% of every prunable group leaves "
            f"{most / macs0:.2f} of the MACs (frozen or excluded layers keep the rest)"
        )
    return bisect(lambda s: macs_at(s) <= goal, 0.0, MAX_SPARSITY, iters=HALVINGS, fits_below=False)


def fill_to_target(
    model: nn.Module, chosen: list[Chosen], scores: dict[int, torch.Tensor], cfg: StructuredPruneConfig, x: Any,
    macs0: int, sparsity: float,
) -> dict[int, int]:
    """Channels per group at ``sparsity``, then given back while the MACs stay within ``macs_target``.

    Rounding to ``round_to`` makes the MACs jump with the sparsity (on a 16-channel group only 16 or 8
    can remain), so the bisection's answer can undershoot the target by far: ResNet-20 asked for 0.65
    of its MACs kept 0.45. Here the most important next chunk of ``round_to`` channels (a group's
    scores over its mean, as the global ranking compares them) is restored first, one chunk at a
    time, while the pruned copy still fits; a group whose chunk does not fit is not tried again.
    Groups with their own sparsity (``targets``) keep it. At most ``FILL_TRIALS`` MAC counts.
    """
    goal = cfg.macs_target * macs0  # type: ignore[operator]
    keep = _keep_counts(chosen, scores, cfg, sparsity)
    ranked = {g.id: torch.sort(scores[g.id] / scores[g.id].mean().clamp_min(1e-12), descending=True).values
              for g, own in chosen if own is None}
    size = {g.id: g.channels for g, _ in chosen}

    def chunk(gid: int) -> int:
        step = cfg.round_to if cfg.round_to > 1 and size[gid] > cfg.round_to else 1
        return min(step, size[gid] - keep[gid])

    open_ = {gid for gid in ranked if keep[gid] < size[gid]}
    for _ in range(FILL_TRIALS):
        if not open_:
            break
        gid = max(sorted(open_), key=lambda g: float(ranked[g][keep[g]:keep[g] + chunk(g)].mean()))
        grown = {**keep, gid: keep[gid] + chunk(gid)}
        if _pruned_macs(model, chosen, scores, cfg, x, sparsity, keep=grown) <= goal:
            keep = grown
            if keep[gid] >= size[gid]:
                open_.discard(gid)
        else:
            open_.discard(gid)
    return keep
