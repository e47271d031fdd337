"""Attention-head pruning: the lowest-scoring heads (key/value groups) of each attention module go.

Every attention module :mod:`torchslim.graph.attention` knows is a candidate: the
zoo's, Hugging Face's (BERT/RoBERTa, ViT, GPT-2, Llama-style with grouped-query
attention) and ``nn.MultiheadAttention``. A head's score is the criterion summed
over its rows of the query, key and value projections and its columns of the
output projection. Under grouped-query attention the unit is a key/value head
with its query heads (their scores summed), so key/value heads go together with
their query groups; with one key/value head the query heads are the units.

``scope: layer`` removes ``round(sparsity * units)`` units of every chosen
module (at least one stays); ``scope: global`` ranks the units of every chosen
module together (each module's scores divided by their mean). ``uniform: true``
requires as many units in every chosen module and removes as many from each, so
a Hugging Face model keeps a stock config (:func:`torchslim.graph.blocks.sync_config`).
Before a Hugging Face attention class is pruned, hooks check on the example input
that its heads are where its kind says (:func:`torchslim.graph.blocks.check_heads`).

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
from torchslim.graph.attention import AttentionSpec, attention_specs
from torchslim.graph.blocks import check_heads
from torchslim.prune.channels import weight_scores
from torchslim.prune.config import StructuredPruneConfig
from torchslim.report import SkippedLayer
from torchslim.targets import select_layers
from torchslim.technique import Inputs

FilterFn = Callable[[nn.Module, str], bool]
#: the criteria computed from the weights alone (``nn.MultiheadAttention`` packs q/k/v in one parameter: only these)
WEIGHT_CRITERIA = ("l2", "l1", "random")


def _mha_scores(module: nn.Module, spec: AttentionSpec, cfg: StructuredPruneConfig, seed: int) -> dict[str, torch.Tensor]:
    if cfg.criterion not in WEIGHT_CRITERIA:
        raise TransformRefusedError(
            f"criterion {cfg.criterion!r} cannot score the heads of nn.MultiheadAttention {spec.name} (its q/k/v "
            f"projections are one parameter); use one of {', '.join(WEIGHT_CRITERIA)} or exclude it with null in targets"
        )
    weights = spec.weights(module)
    if cfg.criterion == "random":
        g = torch.Generator().manual_seed(seed)
        return {r: torch.rand(w.shape, generator=g) for r, w in weights.items()}
    p = 2 if cfg.criterion == "l2" else 1
    return {r: w.abs().float().pow(p).cpu() for r, w in weights.items()}


def element_scores(
    model: nn.Module, specs: list[AttentionSpec], cfg: StructuredPruneConfig, inputs: Inputs
) -> dict[str, dict[str, torch.Tensor]]:
    """``{attention: {q|k|v|o: (out, in) element scores}}`` for every module of ``specs`` (the same random draws
    whichever are chosen)."""
    layers = [f"{s.name}.{p.path}" if s.name else p.path for s in specs if s.kind != "mha" for p in s.projections.values()]
    elem = weight_scores(model, list(dict.fromkeys(layers)), cfg, inputs.calibration, inputs.loss_fn)
    out: dict[str, dict[str, torch.Tensor]] = {}
    for i, spec in enumerate(specs):
        module = model.get_submodule(spec.name)
        if spec.kind == "mha":
            out[spec.name] = _mha_scores(module, spec, cfg, cfg.seed + 1 + i)
            continue
        out[spec.name] = {}
        for role, proj in spec.projections.items():
            e = elem[f"{spec.name}.{proj.path}" if spec.name else proj.path]
            width = (spec.kv_heads if role in ("k", "v") else spec.heads) * spec.head_dim
            out[spec.name][role] = e[:, proj.offset : proj.offset + width] if role == "o" else e[proj.offset : proj.offset + width]
    return out


def unit_scores(spec: AttentionSpec, e: dict[str, torch.Tensor]) -> torch.Tensor:
    """One score per unit of ``spec`` (:meth:`~torchslim.graph.attention.AttentionSpec.units`)."""
    n, kv, d = spec.heads, spec.kv_heads, spec.head_dim
    per_q = e["q"].sum(1).view(n, d).sum(1)
    per_kv = [e[r].sum(1).view(kv, d).sum(1) for r in ("k", "v")]
    per_o = e["o"].sum(0).view(n, d).sum(1)
    if kv == n:
        return sum([per_q, *per_kv]) + per_o  # type: ignore[return-value]  # a tensor: sum starts at 0
    heads = per_q + per_o
    if kv == 1:
        return heads
    return heads.view(kv, spec.group_size).sum(1) + per_kv[0] + per_kv[1]


def _keep_units(scores: dict[str, torch.Tensor], sparsity: dict[str, float], cfg: StructuredPruneConfig) -> dict[str, int]:
    """Units each module keeps: ``round`` of its own sparsity, or by one ranking of every module (``global``)."""
    keep = {n: max(1, len(s) - int(round(sparsity[n] * len(s)))) for n, s in scores.items()}
    if cfg.scope != "global" or not scores:
        return keep
    flat = torch.cat([s / s.mean().clamp_min(1e-12) for s in scores.values()])
    k = int(round(float(cfg.sparsity or 0.0) * flat.numel()))
    if k == 0:
        return {n: len(s) for n, s in scores.items()}
    thr = flat.sort().values[k - 1]
    return {n: max(1, int((s / s.mean().clamp_min(1e-12) > thr).sum())) for n, s in scores.items()}


def _choose(
    model: nn.Module, specs: list[AttentionSpec], cfg: StructuredPruneConfig, filter_fn: FilterFn | None, x: Any
) -> tuple[list[tuple[AttentionSpec, float]], list[SkippedLayer]]:
    """The chosen modules with their sparsity, and the skipped ones; a blocked module named exactly refuses."""
    by_name = {s.name: s for s in specs}
    chosen, skipped = select_layers([(s.name, model.get_submodule(s.name)) for s in specs], cfg.targets, filter_fn=filter_fn)
    verdicts: dict[tuple[type, str], str | None] = {}
    out: list[tuple[AttentionSpec, float]] = []
    out_skipped = [SkippedLayer(n, r) for n, r in skipped]
    for name, mod, match in chosen:
        spec = by_name[name]
        if spec.blocked is None and spec.kind in ("hf", "bert", "gpt2") and x is not None:
            key = (type(mod), spec.kind)
            if key not in verdicts:
                verdicts[key] = check_heads(model, x, spec)
            if verdicts[key]:
                spec.blocked = f"the heads of {name} ({type(mod).__name__}) are not where its kind says: {verdicts[key]}"
        if spec.blocked:
            if match is not None and match.key == name and match.value is not None:
                raise TransformRefusedError(f"layer {name} cannot be pruned by heads: {spec.blocked}")
            out_skipped.append(SkippedLayer(name, spec.blocked))
            continue
        own = match.value.sparsity if match and match.value and match.value.sparsity is not None else None
        out.append((spec, own if own is not None else cfg.sparsity or 0.0))
    return out, out_skipped


def head_step(
    model: nn.Module, cfg: StructuredPruneConfig, inputs: Inputs, filter_fn: FilterFn | None, x: Any = None
) -> tuple[dict[str, Any], list[SkippedLayer]]:
    """The structure step ``{"heads": {module: kept query heads}}`` and the attention modules skipped, with why.

    ``x`` (the example input) lets hooks check the heads of Hugging Face attention classes before they are pruned.

    Raises:
        TransformRefusedError: the model has no attention module torchslim knows; ``uniform`` with modules of
            different head counts; a module named exactly in ``targets`` cannot be pruned.
    """
    specs = attention_specs(model)
    if not specs:
        raise TransformRefusedError(
            "granularity 'head': the model has no attention module torchslim knows (q/k/v/out projections with "
            "head_dim, BERT-style query/key/value with output.dense, GPT-2's c_attn/c_proj, nn.MultiheadAttention)"
        )
    chosen, skipped = _choose(model, specs, cfg, filter_fn, x)
    if cfg.uniform and len({len(s.units()) for s, _ in chosen}) > 1:
        widths = ", ".join(f"{s.name}: {len(s.units())}" for s, _ in chosen)
        raise TransformRefusedError(f"uniform: the chosen attention modules have different numbers of prunable units ({widths})")
    elem = element_scores(model, specs, cfg, inputs)
    scores = {s.name: unit_scores(s, elem[s.name]) for s, _ in chosen}
    keep = _keep_units(scores, {s.name: sp for s, sp in chosen}, cfg)
    heads: dict[str, list[int]] = {}
    for spec, _ in chosen:
        n_units = len(scores[spec.name])
        if keep[spec.name] < n_units:
            units = spec.units()
            best = torch.sort(scores[spec.name], descending=True, stable=True).indices[: keep[spec.name]].tolist()
            heads[spec.name] = sorted(h for u in best for h in units[u])
    return {"heads": heads}, skipped
