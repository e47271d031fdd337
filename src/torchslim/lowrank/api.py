"""The ``factorize_`` verb: low-rank factorisation of Linear and Conv2d layers, in place.

* Linear and 1×1 Conv2d → truncated SVD (two thinner layers, :mod:`~torchslim.lowrank.svd`).
* k×k Conv2d (ungrouped) → Tucker-2 (1×1 → k×k core → 1×1, :mod:`~torchslim.lowrank.tucker`).

The rank of each layer comes from one rule: a fixed ``rank``, the retained
``energy`` of the squared singular values, a parameter ``ratio`` per layer, or a
whole-model MAC budget ``macs_ratio`` (the per-layer ratio is found by
:func:`torchslim.budget.bisect` on the layers' measured output sizes). Layers whose
factorisation would not be smaller are skipped and reported; so are layers whose
parent reads their ``.weight`` directly (``nn.MultiheadAttention``'s ``out_proj``,
:data:`WEIGHT_READERS`), which gains nothing from it, and layers whose weight is tied to another
module's (:func:`tied_weights`), which it would untie. Any other code that reads a factorised layer's
``weight`` or shape attributes gets them from the :class:`~torchslim.lowrank.factored.LowRank` it
became (the product of the factors).

``factorize_`` runs :data:`FACTORIZE` through :func:`torchslim.technique.run`
(select with the one targets grammar, plan every new module, swap them in), so a
refusal or a failure leaves the model as it was. The per-layer arithmetic is in
:mod:`torchslim.lowrank.layers`.

With ``data_aware`` the SVD layers are truncated against their inputs on
calibration batches (SVD-LLM's truncation-aware data whitening): the second moment
``C = Σ x xᵀ`` of each layer's inputs is collected with forward pre-hooks, and the
truncated SVD of ``W L`` (``C = L Lᵀ``) minimises ``‖(W − W')X‖_F`` instead of
``‖W − W'‖_F``.

Example:
    >>> model = ts.create_model("resnet_cifar", depth=8)
    >>> x = torch.randn(8, 3, 16, 16)
    >>> report = ts.factorize_(model, {"macs_ratio": 0.5}, example_input=x[:1])
    >>> report.meta["macs_after"] / report.meta["macs_before"] <= 0.5
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, cast

import torch
from pydantic import Field, model_validator
from torch import nn

from torchslim.budget import bisect
from torchslim.config import CalibrationConfig, Config, calibration_field
from torchslim.errors import TransformRefusedError
from torchslim.graph.surgery import is_conv1d, replace_module
from torchslim.lowrank.layers import (
    LayerFactorizeConfig,
    LowRankLayer,
    input_grams,
    layer_cost,
    layer_method,
    layer_ranks,
    measure_pixels,
)
from torchslim.lowrank.svd import svd_linear, whitening_factor
from torchslim.lowrank.tucker import tucker2_conv
from torchslim.measure import count_macs
from torchslim.measure.macs import ExampleInput
from torchslim.report import LayerReport, Report, SkippedLayer
from torchslim.targets import Match, select_layers
from torchslim.technique import Inputs, Plan, Selection, Technique, legacy_inputs, run

FilterFn = Callable[[nn.Module, str], bool]

__all__ = [
    "FACTORIZE",
    "WEIGHT_READERS",
    "FactorizeConfig",
    "FactorizePlan",
    "FactorizeTechnique",
    "LayerFactorizeConfig",
    "LowRankSwap",
    "factorize_",
    "tied_weights",
    "weight_read_by_parent",
]


class FactorizeConfig(Config):
    """How ``factorize_`` chooses layers and ranks.

    Attributes:
        rank: the same rank for every layer (Tucker-2: both ranks).
        energy: keep the smallest rank holding this fraction of the squared singular values.
        ratio: parameters kept per layer (factorised / dense).
        macs_ratio: whole-model MAC budget (after / before); needs ``example_input``.
            Exactly one of ``rank``, ``energy``, ``ratio``, ``macs_ratio`` may be set;
            none means ``ratio: 0.5``.
        method: ``auto`` (SVD for Linear/1×1, Tucker-2 for k×k), ``svd`` (Linear/1×1 only)
            or ``tucker2`` (k×k convs only).
        keep_first_last: leave the first and last candidate layers dense (name them in
            ``targets`` to factorise them).
        hooi_iters: HOOI refinement sweeps of Tucker-2.
        targets: ordered map (exact name or ``re:`` pattern → per-layer overrides or ``null``);
            when given, unmatched layers are skipped.
        data_aware: truncate each SVD layer (Linear, 1×1 Conv2d) against its inputs on
            calibration data instead of its weights alone: with the inputs' second moment
            ``C = Σ x xᵀ = L Lᵀ`` (float64, Cholesky), the truncated SVD of ``W L`` gives the
            rank-r ``W'`` minimising ``‖(W − W')X‖_F`` on the calibration inputs ("truncation-aware
            data whitening", SVD-LLM, Wang et al. 2024, arXiv:2403.07378). Needs
            ``factorize_(..., calibration=batches)``. Ranks are still chosen by the rule above
            (``energy`` on the plain singular values of ``W``). Tucker-2 layers ignore it
            (their report says ``data_aware: False``); layers the calibration batches never
            reach are skipped.
        calibration: the calibration batches of ``data_aware`` (at most ``batches`` of them are
            used; a recipe stage draws ``batch_size`` samples each from ``split``).
        whitening_eps: ``C`` is regularised as ``C + eps·mean(diag C)·I`` before its Cholesky
            factorisation; ``eps`` is multiplied by 10 (up to 8 times) while it fails.
    """

    RENAMED: ClassVar[dict[str, str]] = {"calibration_batches": "calibration.batches"}

    rank: int | None = Field(default=None, ge=1)
    energy: float | None = Field(default=None, gt=0, le=1)
    ratio: float | None = Field(default=None, gt=0, lt=1)
    macs_ratio: float | None = Field(default=None, gt=0, lt=1)
    method: Literal["auto", "svd", "tucker2"] = "auto"
    keep_first_last: bool = True
    hooi_iters: int = Field(default=5, ge=0, le=50)
    targets: dict[str, LayerFactorizeConfig | None] | None = None
    data_aware: bool = False
    calibration: CalibrationConfig = calibration_field(batches=8, batch_size=128)
    whitening_eps: float = Field(default=1e-6, gt=0, lt=1)

    @model_validator(mode="after")
    def _one_rule(self) -> FactorizeConfig:
        if sum(v is not None for v in (self.rank, self.energy, self.ratio, self.macs_ratio)) > 1:
            raise ValueError("set at most one of rank, energy, ratio, macs_ratio")
        return self


#: Modules whose own forward reads a child layer's ``.weight`` directly instead of calling the child:
#: replacing that child by a low-rank ``nn.Sequential`` (which has no ``.weight``) breaks the parent's
#: forward. ``{parent class: {child attribute: what reads it}}``; :func:`factorize_` skips those children.
WEIGHT_READERS: dict[type[nn.Module], dict[str, str]] = {
    nn.MultiheadAttention: {"out_proj": "F.multi_head_attention_forward reads out_proj.weight and out_proj.bias"},
    nn.TransformerEncoderLayer: {
        "linear1": "its inference fast path reads linear1.weight and linear1.bias",
        "linear2": "its inference fast path reads linear2.weight and linear2.bias",
    },
}


def weight_read_by_parent(model: nn.Module) -> dict[str, str]:
    """``{layer name: why}`` for every layer whose parent reads its ``.weight`` directly (see :data:`WEIGHT_READERS`).

    Example:
        >>> model = nn.Sequential(nn.MultiheadAttention(8, 2), nn.Linear(8, 8))
        >>> reasons = weight_read_by_parent(model)
        >>> list(reasons), reasons["0.out_proj"].split(":")[0]
        (['0.out_proj'], 'its parent 0 (MultiheadAttention) reads it directly (F.multi_head_attention_forward reads out_proj.weight and out_proj.bias)')
    """
    out: dict[str, str] = {}
    for parent_name, parent in model.named_modules():
        for cls, children in WEIGHT_READERS.items():
            if not isinstance(parent, cls):
                continue
            for child, why in children.items():
                if isinstance(getattr(parent, child, None), nn.Module):
                    name = f"{parent_name}.{child}" if parent_name else child
                    out[name] = (
                        f"its parent {parent_name or '<root>'} ({type(parent).__name__}) reads it directly ({why}): "
                        "a low-rank replacement would break the model"
                    )
    return out


def tied_weights(model: nn.Module) -> dict[str, str]:
    """``{layer name: why}`` for every layer whose ``weight`` is the same tensor as another module's parameter
    (tied weights: a language model's output head and its token embedding, an encoder and its decoder).

    Factorising such a layer would untie it (the other holder keeps the dense tensor) and add parameters.

    Example:
        >>> emb, head = nn.Embedding(10, 4), nn.Linear(4, 10, bias=False)
        >>> head.weight = emb.weight
        >>> tied_weights(nn.ModuleDict({"emb": emb, "head": head}))["head"].split(":")[0]
        'its weight is tied to emb.weight (the same tensor)'
    """
    holders: dict[int, list[str]] = {}
    for mname, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            holders.setdefault(id(param), []).append(f"{mname}.{pname}" if mname else pname)
    out: dict[str, str] = {}
    for name, module in model.named_modules():
        weight = module._parameters.get("weight")
        others = [h for h in holders.get(id(weight), []) if h != f"{name}.weight"] if weight is not None else []
        if name and others:
            out[name] = (f"its weight is tied to {', '.join(others)} (the same tensor): a low-rank replacement "
                         "would untie them and add parameters")
    return out


def _rule(cfg: FactorizeConfig, match: Match[LayerFactorizeConfig] | None) -> LayerFactorizeConfig:
    """The layer's rank rule: its targets entry when that sets one, else the config's."""
    value = match.value if match is not None else None
    if value is not None and any(v is not None for v in (value.rank, value.energy, value.ratio)):
        return value
    return LayerFactorizeConfig(rank=cfg.rank, energy=cfg.energy, ratio=cfg.ratio)


@dataclass
class LowRankSwap:
    """One planned factorisation: the layer, its ranks, the new module, the data-aware facts for the report."""

    layer: LowRankLayer
    ranks: tuple[int, ...]
    new: nn.Sequential
    whitening: dict[str, Any]

    def report(self) -> LayerReport:
        """The ``factorized`` report: the dense weight's shape, the factors' parameters and non-zeros."""
        l, w = self.layer, cast(torch.Tensor, self.layer.module.weight)
        weights = [m.weight for m in self.new if isinstance(m.weight, torch.Tensor)]
        p_after = sum(t.numel() for t in weights)
        details = {
            "method": l.method,
            "ranks": list(self.ranks),
            "params_before": w.numel(),
            "params_after": p_after,
            "rule": {k: v for k, v in l.rule.model_dump(exclude={"version"}).items() if v is not None},
            **self.whitening,
        }
        nonzeros = sum(int((t != 0).sum()) for t in weights)
        return LayerReport(l.name, type(l.module).__name__, tuple(w.shape), p_after, nonzeros, "factorized", details)


@dataclass
class FactorizePlan(Plan):
    """The factorisations ``factorize_`` will swap in (``work``), and the example input that counts MACs after."""

    work: list[LowRankSwap] = field(default_factory=list)
    example_input: Any = None


def _fit_macs_budget(layers: list[LowRankLayer], macs_ratio: float, macs_before: int) -> None:
    """Give every layer the one parameter ratio (bisected) that brings the model's MACs within ``macs_ratio``.

    Raises:
        TransformRefusedError: even the smallest ranks (ratio 0.01) exceed the budget.
    """
    budget = macs_ratio * macs_before
    dense = sum(layer_cost(l, None)[1] for l in layers)
    fixed = macs_before - dense

    def total(ratio: float) -> float:
        out = fixed
        for l in layers:
            ranks = layer_ranks(l, LayerFactorizeConfig(ratio=ratio))
            p, m = layer_cost(l, ranks)
            out += m if p < layer_cost(l, None)[0] else layer_cost(l, None)[1]
        return out

    lo, hi = 0.01, 0.99
    if total(lo) > budget:
        raise TransformRefusedError(
            f"a MAC budget of {macs_ratio} cannot be met by factorising {len(layers)} layer(s): "
            f"{int(total(lo))} MACs at the smallest ranks vs {int(budget)} allowed"
        )
    ratio = bisect(lambda r: total(r) <= budget, lo, hi, iters=40, fits_below=True)
    for l in layers:
        l.rule = LayerFactorizeConfig(ratio=ratio)


def _shrinking(layers: list[LowRankLayer], skipped: list[SkippedLayer]) -> list[tuple[LowRankLayer, tuple[int, ...]]]:
    """The layers whose ranks make them smaller, with those ranks; the others are added to ``skipped``."""
    todo = []
    for l in layers:
        ranks = layer_ranks(l, l.rule)
        p_dense, p_fact = layer_cost(l, None)[0], layer_cost(l, ranks)[0]
        if p_fact >= p_dense:
            skipped.append(SkippedLayer(l.name, f"rank {ranks} would not shrink the layer ({p_fact} >= {p_dense} weights)"))
            continue
        todo.append((l, ranks))
    return todo


def _factorise(
    l: LowRankLayer, ranks: tuple[int, ...], cfg: FactorizeConfig, grams: dict[str, tuple[torch.Tensor, int]]
) -> LowRankSwap | str:
    """The low-rank replacement of one layer (whitened when ``data_aware``), or why there is none."""
    whitening: dict[str, Any] = {"data_aware": False}
    if l.method == "svd":
        whitener = None
        if cfg.data_aware:
            if l.name not in grams:
                return "data_aware: the calibration batches never reached this layer"
            gram, rows = grams[l.name]
            whitener, eps = whitening_factor(gram, cfg.whitening_eps)
            whitening = {"data_aware": True, "whitening_eps": eps, "calibration_rows": rows}
        new = svd_linear(l.module, ranks[0], whitener=whitener)
    else:
        new = tucker2_conv(cast(nn.Conv2d, l.module), ranks[0], ranks[1], cfg.hooi_iters)  # tucker2: Conv2d only
    new.train(l.module.training)
    return LowRankSwap(l, ranks, new, whitening)


class FactorizeTechnique(Technique[FactorizeConfig, FactorizePlan]):
    """``factorize_`` as a technique: select Linear/Conv2d layers, plan every factorisation, swap them in."""

    name: ClassVar[str] = "factorize"
    title: ClassVar[str] = "factorize"
    config: ClassVar[type[Config]] = FactorizeConfig
    verb: ClassVar[str] = "factorise"
    #: the kinds named in a skip reason (Hugging Face ``Conv1D`` is factorised too: it is no torch class)
    handles: ClassVar[tuple[type[nn.Module], ...]] = (nn.Linear, nn.Conv2d)

    def candidates(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """Every named Linear, Hugging Face ``Conv1D`` and Conv2d layer, in registration order."""
        return [(n, m) for n, m in model.named_modules() if n and (isinstance(m, (nn.Linear, nn.Conv2d)) or is_conv1d(m))]

    def select(self, model: nn.Module, cfg: FactorizeConfig, filter_fn: FilterFn | None) -> Selection:
        """The targets grammar, then (in this order) the layers a parent reads directly, the layers with no
        low-rank form (or not of ``cfg.method``) and the first/last layers (``keep_first_last``).

        Raises:
            TransformRefusedError: no candidate layer, or ``targets`` names (by its exact name) a layer
                whose parent reads its weight directly.
        """
        layers = self.candidates(model)
        if not layers:
            raise TransformRefusedError("the model has no Linear or Conv2d layer to factorise")
        chosen, skipped = select_layers(layers, cfg.targets, filter_fn=filter_fn)
        _, edges = select_layers(
            layers, cfg.targets, keep_first_last=cfg.keep_first_last, kept_note="name it in targets to factorise it"
        )
        early, late, matches = dict(skipped), dict(edges), {n: m for n, _, m in chosen}
        readers = {**tied_weights(model), **weight_read_by_parent(model)}
        selection = Selection([])
        for name, module in layers:
            reason = early.get(name) or self._reason(name, module, cfg, matches.get(name), readers) or late.get(name)
            if reason is None:
                selection.chosen.append((name, module, matches.get(name)))
            else:
                selection.skipped.append(SkippedLayer(name, reason))
        return selection

    @staticmethod
    def _reason(
        name: str, module: nn.Module, cfg: FactorizeConfig, match: Match[Any] | None, readers: dict[str, str]
    ) -> str | None:
        """Why a layer the targets grammar chose cannot be factorised, or ``None``; refuses a named one a parent reads."""
        if name in readers:
            if match is not None and match.key == name:
                raise TransformRefusedError(f"cannot factorise {name}: {readers[name]}; remove {name!r} from targets")
            return readers[name]
        method = layer_method(module)
        if method is None:
            return f"grouped/depthwise convolution (groups {module.groups}) has no low-rank form here"
        if cfg.method != "auto" and method != cfg.method:
            return f"method {cfg.method} does not apply to {type(module).__name__} {tuple(module.weight.shape)}"
        return None

    @torch.no_grad()
    def plan(self, model: nn.Module, cfg: FactorizeConfig, selection: Selection, inputs: Inputs) -> FactorizePlan:
        """Ranks (by rule or MAC budget), calibration statistics and every new module; the model is only run."""
        if cfg.data_aware and inputs.calibration is None:
            raise TransformRefusedError(
                "data_aware factorisation needs calibration batches: pass factorize_(..., calibration=loader) "
                "(batches of x or (x, y)), or set data_aware: false"
            )
        example_input = inputs.example_input
        if cfg.macs_ratio is not None and example_input is None:
            raise TransformRefusedError("macs_ratio needs example_input (one batch) to count MACs")
        chosen = [LowRankLayer(n, m, layer_method(m) or "", _rule(cfg, match)) for n, m, match in selection.chosen]
        skipped = list(selection.skipped)
        macs_before = count_macs(model, example_input) if example_input is not None else None
        if example_input is not None:
            measure_pixels(model, chosen, example_input)
        if cfg.macs_ratio is not None and macs_before is not None:
            _fit_macs_budget(chosen, cfg.macs_ratio, macs_before)
        todo = _shrinking(chosen, skipped)
        grams: dict[str, tuple[torch.Tensor, int]] = {}
        calibration_used = 0
        svd_layers = [l for l, _ in todo if l.method == "svd"]
        if cfg.data_aware and inputs.calibration is not None and svd_layers:
            grams, calibration_used = input_grams(model, svd_layers, inputs.calibration, cfg.calibration.batches)
        work: list[LowRankSwap] = []
        for l, ranks in todo:
            swap = _factorise(l, ranks, cfg, grams)
            if isinstance(swap, str):
                skipped.append(SkippedLayer(l.name, swap))
            else:
                work.append(swap)
        if not work:
            raise TransformRefusedError("no layer to factorise: " + "; ".join(f"{s.name}: {s.reason}" for s in skipped))
        meta: dict[str, Any] = {"factorized": len(work)}
        if cfg.data_aware:
            meta["calibration_batches"] = calibration_used
        if macs_before is not None:
            meta["macs_before"] = macs_before
        return FactorizePlan(skipped=skipped, meta=meta, work=work, example_input=example_input)

    def apply(self, model: nn.Module, plan: FactorizePlan) -> list[LayerReport]:
        """Swap every planned low-rank module in."""
        layers = []
        for swap in plan.work:
            replace_module(model, swap.layer.name, swap.new)
            layers.append(swap.report())
        return layers

    def report(self, model: nn.Module, cfg: FactorizeConfig, plan: FactorizePlan, layers: list[LayerReport]) -> Report:
        """The report, with the model's MACs after factorising when an example input was given."""
        meta = dict(plan.meta)
        if plan.example_input is not None:
            meta["macs_after"] = count_macs(model, plan.example_input)
        return Report(title=self.title, technique=self.name, layers=layers, skipped=plan.skipped, meta=meta)


#: the ``factorize_`` technique
FACTORIZE = FactorizeTechnique()


def factorize_(
    model: nn.Module,
    config: FactorizeConfig | dict[str, Any] | None = None,
    *,
    filter_fn: FilterFn | None = None,
    calibration: Iterable[Any] | None = None,
    example_input: ExampleInput | None = None,
    **deprecated: Any,
) -> Report:
    """Factorise the model's Linear/Conv2d layers into low-rank products, in place.

    Every factorisation is computed before any module is swapped (:data:`FACTORIZE`
    run by :func:`torchslim.technique.run`), so a refusal or any failure leaves the
    model unchanged. Layers whose parent reads their ``.weight`` directly (the
    ``out_proj`` of ``nn.MultiheadAttention``, see :data:`WEIGHT_READERS`) are skipped
    with the reason. Heal the result with :func:`torchslim.finetune` or
    :func:`torchslim.distill`.

    Args:
        model: the model (modified in place).
        config: a :class:`FactorizeConfig` or a mapping validated into one (``None``: defaults).
        filter_fn: optional ``(module, name) -> bool``; layers it rejects are skipped.
        calibration: batches for ``data_aware`` (each a tensor, a dict of keyword tensors,
            or an ``(x, y)`` pair whose ``x`` is the model input); at most
            ``calibration.batches`` of them are run through the model.
        example_input: one batch; needed for ``macs_ratio`` (and gives ``meta`` MAC counts).

    Returns:
        A :class:`Report` with one ``factorized`` layer per swap (method, ranks, params
        before/after, ``data_aware``; whitened layers also ``whitening_eps`` and
        ``calibration_rows``) and every skipped layer with its reason.

    Raises:
        TransformRefusedError: nothing to factorise, ``macs_ratio`` without ``example_input``,
            ``data_aware`` without (or with empty) ``calibration``, or ``targets`` naming a
            layer whose parent reads its weight directly. The model is then unchanged.

    Example:
        >>> model = ts.create_model("lenet300", in_features=64)
        >>> report = ts.factorize_(model, {"energy": 0.9})
        >>> report.layers[0].name, report.layers[0].details["method"]
        ('fc2', 'svd')
        >>> data = ts.load_data("digits")
        >>> model = ts.create_model("lenet300", in_features=64)
        >>> report = ts.factorize_(model, {"ratio": 0.5, "data_aware": True}, calibration=data.loader("train"))
        >>> report.layers[0].details["data_aware"], report.layers[0].details["ranks"]
        (True, [37])
    """
    inputs = legacy_inputs("factorize_", Inputs(calibration, example_input), deprecated)
    return run(FACTORIZE, model, config, filter_fn=filter_fn, inputs=inputs)
