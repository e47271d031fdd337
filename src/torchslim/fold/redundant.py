"""Redundant-layer removal: score blocks by how little they change their input, drop the k most redundant.

Criteria (a registry; higher score = more redundant):

* ``block_influence`` (ShortGPT, Men et al. 2024): mean cosine similarity between a
  block's input and output hidden states on calibration data (per token / per
  spatial position); a block whose output points where its input did adds little.
* ``weight_similarity``: cosine similarity of a block's flattened weights with the
  previous block's (same structure only); near-duplicates are redundant.
* ``output_similarity``: cosine similarity between the model's final output with
  the block skipped and the full model's output on calibration data; for ``k > 1``
  blocks are chosen greedily (each next block scored with the earlier ones
  already skipped), so the pair removed is the one the output notices least.
* ``random`` (seeded) and ``last`` (the last k blocks): the baselines.

Blocks are the children of ``nn.Sequential``/``nn.ModuleList`` containers whose
items map a hidden state to one of the same shape (residual blocks, transformer
layers); they are removed from their container (never swapped for an identity),
so a Hugging Face encoder's layer list just gets shorter.

Example:
    A tiny 6-layer BERT (token ids as calibration batches):

    >>> import transformers
    >>> model = transformers.BertModel(transformers.BertConfig(
    ...     vocab_size=100, hidden_size=32, num_hidden_layers=6, num_attention_heads=4, intermediate_size=64))
    >>> batches = [torch.randint(0, 100, (4, 16)) for _ in range(2)]
    >>> report = drop_layers_(model, {"k": 2, "criterion": "block_influence"}, calibration=batches)
    >>> len(report.layers), len(model.encoder.layer)
    (2, 4)
    >>> report.layers[0].name.startswith("encoder.layer.")
    True
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from torchslim.config import CalibrationConfig, Config, calibration_field
from torchslim.errors import TransformRefusedError
from torchslim.graph.surgery import get_module, remove_from_container
from torchslim.measure.macs import call_model, eval_mode
from torchslim.registry import Registry
from torchslim.report import LayerReport, Report, SkippedLayer
from torchslim.report.coverage import left_as_was
from torchslim.targets import select_layers
from torchslim.technique import Inputs, Plan, Selection, Technique, legacy_inputs, refuse_if_empty, run

FilterFn = Callable[[nn.Module, str], bool]
Scorer = Callable[[nn.Module, list[str], "list[Any]", torch.Generator], dict[str, float]]
REDUNDANCY: Registry[Scorer] = Registry("redundancy criterion")


class DropLayersConfig(Config):
    """Which blocks ``drop_layers_`` removes.

    Attributes:
        k: blocks to remove.
        criterion: ``block_influence``, ``output_similarity``, ``weight_similarity``, ``random`` or ``last``.
        blocks: regex (``re.fullmatch``) over qualified names of candidate blocks;
            default: every item of the model's longest Sequential/ModuleList of same-class modules.
        calibration: the calibration batches ``block_influence`` and ``output_similarity`` use
            (``batches`` of them; a recipe stage draws ``batch_size`` samples each from ``split``).
        seed: seed of ``random``.
    """

    RENAMED: ClassVar[dict[str, str]] = {"calibration_batches": "calibration.batches"}

    k: int = Field(default=1, ge=1)
    criterion: Literal["block_influence", "output_similarity", "weight_similarity", "random", "last"] = "block_influence"
    blocks: str | None = None
    calibration: CalibrationConfig = calibration_field(batches=8, batch_size=128)
    seed: int = 0


def candidate_blocks(model: nn.Module, pattern: str | None = None) -> list[str]:
    """Qualified names of removable blocks (see :class:`DropLayersConfig` ``blocks``).

    Example:
        >>> candidate_blocks(ts.create_model("transformer_encoder"))
        ['blocks.0', 'blocks.1', 'blocks.2', 'blocks.3']
    """
    if pattern is not None:
        rx = re.compile(pattern)
        return [n for n, _ in model.named_modules() if n and rx.fullmatch(n)]
    best: list[str] = []
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Sequential, nn.ModuleList)):
            kids = list(mod.named_children())
            if len(kids) >= 2 and len({type(c) for _, c in kids}) == 1 and any(True for _ in kids[0][1].parameters()):
                names = [f"{name}.{c}" if name else c for c, _ in kids]
                if len(names) > len(best):
                    best = names
    return best


def _hidden(x: Any) -> torch.Tensor | None:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)) and x and isinstance(x[0], torch.Tensor):
        return x[0]
    return getattr(x, "last_hidden_state", None)


@REDUNDANCY.register("block_influence")
def block_influence(model: nn.Module, blocks: list[str], batches: list[Any], gen: torch.Generator) -> dict[str, float]:
    """Mean cosine similarity of each block's input and output (per token/position); NaN when shapes differ.

    Example:
        >>> model = ts.create_model("transformer_encoder", image_size=8, patch_size=4)
        >>> x = torch.randn(4, 1, 8, 8)
        >>> scores = block_influence(model, ["blocks.0"], [x], torch.Generator())
        >>> list(scores), -1.0 <= scores["blocks.0"] <= 1.0
        (['blocks.0'], True)
    """
    sums = {b: 0.0 for b in blocks}
    counts = {b: 0 for b in blocks}
    shape_ok = {b: True for b in blocks}
    hooks = []

    def make(name: str) -> Any:
        def hook(_m: nn.Module, args: Any, kwargs: Any, out: Any) -> None:
            x = _hidden(args) if args else _hidden(list(kwargs.values()))
            y = _hidden(out)
            if x is None or y is None or x.shape != y.shape:
                shape_ok[name] = False
                return
            dim = 1 if x.dim() == 4 else -1  # channels of a conv map, features of a token
            cos = F.cosine_similarity(x.double(), y.double(), dim=dim)
            sums[name] += float(cos.sum())
            counts[name] += cos.numel()

        return hook

    for b in blocks:
        hooks.append(get_module(model, b).register_forward_hook(make(b), with_kwargs=True))
    try:
        with eval_mode(model), torch.no_grad():
            for batch in batches:
                call_model(model, batch)
    finally:
        for h in hooks:
            h.remove()
    return {b: (sums[b] / counts[b] if shape_ok[b] and counts[b] else float("nan")) for b in blocks}


def _skip_hook(_m: nn.Module, args: Any, kwargs: Any, out: Any) -> Any:
    """Forward hook making a block the identity on its hidden state (other outputs kept)."""
    x = _hidden(args) if args else _hidden(list(kwargs.values()))
    if isinstance(out, torch.Tensor):
        return x
    if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor):
        return (x, *out[1:])
    raise TransformRefusedError(f"cannot skip a block returning {type(out).__name__}")


def _output_cosine(model: nn.Module, batches: list[Any], skipped: list[str], reference: list[torch.Tensor]) -> float:
    """Mean cosine between the model's outputs with ``skipped`` blocks bypassed and ``reference``; NaN if not skippable."""
    hooks = [get_module(model, b).register_forward_hook(_skip_hook, with_kwargs=True) for b in skipped]
    try:
        sims = []
        for batch, ref in zip(batches, reference):
            y = _hidden(call_model(model, batch))
            if y is None or y.shape != ref.shape:
                return float("nan")
            sims.append(F.cosine_similarity(y.double().flatten(1), ref.double().flatten(1), dim=1))
        return float(torch.cat(sims).mean())
    except TransformRefusedError:
        return float("nan")
    finally:
        for h in hooks:
            h.remove()


def output_similarity_choice(model: nn.Module, blocks: list[str], batches: list[Any], k: int) -> tuple[list[str], dict[str, float]]:
    """Greedily the ``k`` blocks whose skipping keeps the final output closest (cosine) to the full model's.

    Returns ``(chosen in order, score of every block when it was last scored)``.

    Example:
        >>> model = ts.create_model("transformer_encoder", image_size=8, patch_size=4)
        >>> x = torch.randn(4, 1, 8, 8)
        >>> chosen, scores = output_similarity_choice(model, ["blocks.0", "blocks.1", "blocks.2"], [x], 1)
        >>> len(chosen), sorted(scores)
        (1, ['blocks.0', 'blocks.1', 'blocks.2'])
    """
    with eval_mode(model), torch.no_grad():
        reference = [_hidden(call_model(model, b)) for b in batches]
        chosen: list[str] = []
        scores: dict[str, float] = {}
        for _ in range(k):
            for b in blocks:
                if b not in chosen:
                    scores[b] = _output_cosine(model, batches, [*chosen, b], reference)
            left = [b for b in blocks if b not in chosen and scores[b] == scores[b]]
            if not left:
                break
            chosen.append(max(left, key=lambda b: (scores[b], -blocks.index(b))))
    return chosen, scores


@REDUNDANCY.register("weight_similarity")
def weight_similarity(model: nn.Module, blocks: list[str], batches: list[Any], gen: torch.Generator) -> dict[str, float]:
    """Cosine similarity of each block's flattened weights with the previous block's (first block: −1).

    Example:
        >>> model = ts.create_model("transformer_encoder", image_size=8, patch_size=4)
        >>> _ = model.blocks[1].load_state_dict(model.blocks[0].state_dict())   # a duplicate block
        >>> s = weight_similarity(model, ["blocks.0", "blocks.1"], [], torch.Generator())
        >>> s["blocks.0"], round(s["blocks.1"], 6)
        (-1.0, 1.0)
    """
    flat = []
    for b in blocks:
        params = [p.detach().flatten().double() for p in get_module(model, b).parameters()]
        flat.append(torch.cat(params) if params else torch.zeros(0, dtype=torch.float64))
    out = {blocks[0]: -1.0}
    for i in range(1, len(blocks)):
        a, c = flat[i - 1], flat[i]
        out[blocks[i]] = float(F.cosine_similarity(a, c, dim=0)) if a.shape == c.shape and a.numel() else float("nan")
    return out


@REDUNDANCY.register("random")
def random_scores(model: nn.Module, blocks: list[str], batches: list[Any], gen: torch.Generator) -> dict[str, float]:
    """Seeded random scores (the baseline every criterion must beat)."""
    return dict(zip(blocks, torch.rand(len(blocks), generator=gen).tolist()))


@REDUNDANCY.register("last")
def last_scores(model: nn.Module, blocks: list[str], batches: list[Any], gen: torch.Generator) -> dict[str, float]:
    """Later blocks score higher: removes the last k."""
    return {b: float(i) for i, b in enumerate(blocks)}


@dataclass
class DropPlan(Plan):
    """The blocks ``drop_layers_`` removes, in rank order, with each one's report."""

    removed: list[LayerReport] = field(default_factory=list)


def _batches(cfg: DropLayersConfig, calibration: Iterable[Any] | None) -> list[Any]:
    """The inputs (labels dropped) of at most ``cfg.calibration.batches`` batches, when the criterion needs data."""
    if cfg.criterion not in ("block_influence", "output_similarity"):
        return []
    if calibration is None:
        raise TransformRefusedError(f"{cfg.criterion} needs calibration batches")
    batches: list[Any] = []
    for i, batch in enumerate(calibration):
        if i >= cfg.calibration.batches:
            break
        batches.append(batch[0] if isinstance(batch, (tuple, list)) and len(batch) == 2 else batch)
    return batches


class DropLayersTechnique(Technique[DropLayersConfig, DropPlan]):
    """``drop_layers_`` as a technique: candidates are blocks; plan scores them; apply removes the chosen ones."""

    name: ClassVar[str] = "drop_layers"
    title: ClassVar[str] = "drop_layers"
    config: ClassVar[type[Config]] = DropLayersConfig
    verb: ClassVar[str] = "remove"

    def candidates(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """The default candidate blocks (see :func:`candidate_blocks`)."""
        return [(b, get_module(model, b)) for b in candidate_blocks(model)]

    def select(self, model: nn.Module, cfg: DropLayersConfig, filter_fn: FilterFn | None) -> Selection:
        """The blocks of ``cfg.blocks`` (or the default ones) that ``filter_fn`` accepts."""
        blocks = candidate_blocks(model, cfg.blocks)
        if not blocks:
            raise TransformRefusedError("no candidate blocks (give `blocks`, a regex over module names)")
        no_targets: dict[str, Any] | None = None  # blocks are chosen by the `blocks` regex; filter_fn still applies
        chosen, skipped = select_layers([(b, get_module(model, b)) for b in blocks], no_targets, filter_fn=filter_fn)
        return Selection(chosen, [SkippedLayer(n, r) for n, r in skipped])

    @torch.no_grad()
    def plan(self, model: nn.Module, cfg: DropLayersConfig, selection: Selection, inputs: Inputs) -> DropPlan:
        """Score the chosen blocks on the calibration batches and pick the ``k`` most redundant (the model only runs)."""
        blocks = [name for name, _, _ in selection.chosen]
        refuse_if_empty(blocks, selection.skipped, "remove")
        batches = _batches(cfg, inputs.calibration)
        gen = torch.Generator().manual_seed(cfg.seed)
        chosen: list[str]
        if cfg.criterion == "output_similarity":
            chosen, scores = output_similarity_choice(model, blocks, batches, cfg.k)
        else:
            scores = REDUNDANCY.get(cfg.criterion)(model, blocks, batches, gen)
        valid = [b for b in blocks if scores[b] == scores[b]]  # not NaN
        skipped = selection.skipped + [
            SkippedLayer(b, "cannot be removed: its output shape differs from its input's") for b in blocks if b not in valid
        ]
        if len(valid) < cfg.k:
            raise TransformRefusedError(f"only {len(valid)} removable block(s) for k={cfg.k}: {', '.join(valid)}")
        if cfg.criterion != "output_similarity":
            chosen = sorted(valid, key=lambda b: (-scores[b], blocks.index(b)))[: cfg.k]
        removed = []
        for rank, b in enumerate(chosen):
            mod = get_module(model, b)
            n = sum(p.numel() for p in mod.parameters())
            details = {"criterion": cfg.criterion, "score": scores[b], "rank": rank + 1}
            removed.append(LayerReport(b, type(mod).__name__, (), n, 0, "removed", details))
        removed_names = ", ".join(chosen)
        skipped += [
            SkippedLayer(b, f"kept: {cfg.criterion} score {scores[b]:.4g}, less redundant than the k={cfg.k} removed "
                            f"({removed_names})")
            for b in valid if b not in chosen
        ]
        meta = {"criterion": cfg.criterion, "scores": scores, "removed": chosen}
        return DropPlan(skipped=skipped, meta=meta, removed=removed)

    def apply(self, model: nn.Module, plan: DropPlan) -> list[LayerReport]:
        """Remove the chosen blocks from their containers."""
        remove_from_container(model, [l.name for l in plan.removed])
        return plan.removed

    def skip_reason(self, name: str, module: nn.Module, params: list[str]) -> str | None:
        """A layer outside every candidate block: ``drop_layers_`` removes whole blocks, never single layers.

        Example:
            >>> DROP_LAYERS.skip_reason("norm", nn.LayerNorm(4), ["weight", "bias"])
            'LayerNorm: in no candidate block (drop_layers_ removes whole blocks, chosen by `blocks`); weight, bias left as they were'
        """
        if name == "":
            return super().skip_reason(name, module, params)
        left = left_as_was(params)
        return f"{type(module).__name__}: in no candidate block (drop_layers_ removes whole blocks, chosen by `blocks`); {left}"


#: the ``drop_layers_`` technique
DROP_LAYERS = DropLayersTechnique()


def drop_layers_(
    model: nn.Module,
    config: DropLayersConfig | dict[str, Any] | None = None,
    *,
    filter_fn: FilterFn | None = None,
    calibration: Iterable[Any] | None = None,
    example_input: Any = None,
    **deprecated: Any,
) -> Report:
    """Remove the ``k`` most redundant blocks of ``model`` in place (heal afterwards by fine-tuning or distillation).

    Args:
        model: the model (modified in place; left bit-identical when anything fails).
        config: a :class:`DropLayersConfig` or a mapping validated into one (``None``: defaults).
        filter_fn: optional ``(module, name) -> bool``; rejected blocks are kept.
        calibration: batches (``x`` or ``(x, y)``) for ``block_influence`` and
            ``output_similarity``; labels are ignored.
        example_input: unused (the criteria run on ``calibration``); accepted for the common signature.

    Returns:
        A :class:`Report`: removed blocks (action ``removed``, with score and rank) and kept ones
        under ``meta["scores"]``; blocks that could not be scored are listed as skipped.

    Raises:
        TransformRefusedError: no candidate blocks (or ``filter_fn`` rejects them all), fewer
            removable blocks than ``k``, or ``block_influence``/``output_similarity`` without
            calibration data. The model is then unchanged.

    Example:
        >>> model = ts.create_model("transformer_encoder", image_size=8, patch_size=4)
        >>> loader = ts.load_data("digits").loader("train", 64)
        >>> report = drop_layers_(model, {"k": 2}, calibration=[x for x, _ in loader])
        >>> [l.action for l in report.layers], len(model.blocks)
        (['removed', 'removed'], 2)
    """
    inputs = legacy_inputs("drop_layers_", Inputs(calibration, example_input), deprecated)
    return run(DROP_LAYERS, model, config, filter_fn=filter_fn, inputs=inputs)
