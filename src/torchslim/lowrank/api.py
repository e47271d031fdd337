"""The ``factorize_`` verb: low-rank factorisation of Linear and Conv2d layers, in place.

* Linear and 1×1 Conv2d → truncated SVD (two thinner layers, :mod:`~torchslim.lowrank.svd`).
* k×k Conv2d (ungrouped) → Tucker-2 (1×1 → k×k core → 1×1, :mod:`~torchslim.lowrank.tucker`).

The rank of each layer comes from one rule: a fixed ``rank``, the retained
``energy`` of the squared singular values, a parameter ``ratio`` per layer, or a
whole-model MAC budget ``macs_ratio`` (the per-layer ratio is found by bisection on
the layers' measured output sizes). Layers whose factorisation would not be
smaller are skipped and reported.

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

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from torchslim.config import CalibrationConfig, Config, calibration_field
from torchslim.errors import TransformRefusedError
from torchslim.graph.surgery import replace_module
from torchslim.lowrank.svd import rank_for_energy, singular_values, svd_linear, svd_rank_for_ratio, whitening_factor
from torchslim.lowrank.tucker import tucker2_conv, tucker2_ranks_for_ratio
from torchslim.measure import count_macs
from torchslim.measure.macs import ExampleInput, batch_inputs, call_model, eval_mode
from torchslim.report import LayerReport, Report, SkippedLayer
from torchslim.targets import resolve_targets

FilterFn = Callable[[nn.Module, str], bool]


class LayerFactorizeConfig(Config):
    """Per-layer override of the rank rule (set at most one)."""

    rank: int | None = Field(default=None, ge=1)
    energy: float | None = Field(default=None, gt=0, le=1)
    ratio: float | None = Field(default=None, gt=0, lt=1)

    @model_validator(mode="after")
    def _one_rule(self) -> LayerFactorizeConfig:
        if sum(v is not None for v in (self.rank, self.energy, self.ratio)) > 1:
            raise ValueError("set at most one of rank, energy, ratio")
        return self


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


@dataclass
class _Layer:
    name: str
    module: nn.Module
    method: str  # "svd" | "tucker2"
    rule: LayerFactorizeConfig
    in_pixels: int = 1  # spatial positions (or tokens) of the input per sample
    out_pixels: int = 1


def _method(module: nn.Module) -> str | None:
    if isinstance(module, nn.Linear):
        return "svd"
    if isinstance(module, nn.Conv2d) and module.groups == 1:
        return "svd" if module.kernel_size == (1, 1) else "tucker2"
    return None


def _ranks(layer: _Layer, rule: LayerFactorizeConfig) -> tuple[int, ...]:
    m = layer.module
    w = m.weight
    if layer.method == "svd":
        out_f, in_f = w.shape[0], w[0].numel()
        if rule.rank is not None:
            return (min(rule.rank, out_f, in_f),)
        if rule.energy is not None:
            return (rank_for_energy(singular_values(w), rule.energy),)
        return (min(out_f, in_f, svd_rank_for_ratio(in_f, out_f, rule.ratio or 0.5)),)
    c_out, c_in, k = w.shape[0], w.shape[1], w.shape[2] * w.shape[3]
    if rule.rank is not None:
        return (min(rule.rank, c_in), min(rule.rank, c_out))
    if rule.energy is not None:
        r_out = rank_for_energy(singular_values(w), rule.energy)
        r_in = rank_for_energy(singular_values(w.transpose(0, 1)), rule.energy)
        return (r_in, r_out)
    r_in, r_out = tucker2_ranks_for_ratio(c_in, c_out, k, rule.ratio or 0.5)
    return (min(r_in, c_in), min(r_out, c_out))


def _cost(layer: _Layer, ranks: tuple[int, ...] | None) -> tuple[int, int]:
    """``(params, macs)`` of a layer's weights, dense (``ranks=None``) or factorised."""
    w = layer.module.weight
    out_f, in_f = w.shape[0], w[0].numel()
    if ranks is None:
        return w.numel(), w.numel() * layer.out_pixels
    if layer.method == "svd":
        (r,) = ranks
        return r * (in_f + out_f), r * (in_f + out_f) * layer.out_pixels
    r_in, r_out = ranks
    c_in, kk = w.shape[1], w.shape[2] * w.shape[3]
    params = c_in * r_in + r_in * r_out * kk + r_out * out_f
    macs = c_in * r_in * layer.in_pixels + (r_in * r_out * kk + r_out * out_f) * layer.out_pixels
    return params, macs


def _measure_pixels(model: nn.Module, layers: list[_Layer], example_input: ExampleInput) -> None:
    hooks = []

    def make(layer: _Layer) -> Any:
        def hook(_m: nn.Module, args: Any, out: torch.Tensor) -> None:
            x = args[0]
            if isinstance(layer.module, nn.Linear):
                layer.in_pixels = layer.out_pixels = max(1, x[:1].numel() // layer.module.in_features)
            else:
                layer.in_pixels, layer.out_pixels = x[0, 0].numel(), out[0, 0].numel()

        return hook

    for layer in layers:
        hooks.append(layer.module.register_forward_hook(make(layer)))
    try:
        from torchslim.measure.macs import first_sample

        with eval_mode(model), torch.no_grad():
            call_model(model, first_sample(example_input))
    finally:
        for h in hooks:
            h.remove()


def _input_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as rows ``(n, in)``: tokens of a Linear, the strided (padded) pixels a 1×1 conv sees."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, module.in_features)
    if not isinstance(module, nn.Conv2d):
        raise TypeError(f"expected a Linear or 1×1 Conv2d, got {type(module).__name__}")
    padding: Any = 0 if isinstance(module.padding, str) else module.padding  # 'same'/'valid' pad nothing at 1×1
    if module.padding_mode != "zeros" and any(padding):
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode)
        padding = 0
    cols = F.unfold(x, 1, padding=padding, stride=module.stride)  # (N, C, L); zero padding adds nothing to C
    return cols.transpose(1, 2).reshape(-1, module.in_channels)


def _input_grams(
    model: nn.Module, layers: list[_Layer], calibration: Iterable[Any], batches: int
) -> tuple[dict[str, tuple[torch.Tensor, int]], int]:
    """``{name: (Σ x xᵀ in float64, rows)}`` of each layer's inputs over the calibration batches, and the batches run.

    The model is only run (eval mode, no grad); its hooks are removed and modes restored afterwards.
    """
    grams: dict[str, tuple[torch.Tensor, int]] = {}

    def make(layer: _Layer) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            rows = _input_rows(module, args[0].detach())
            dev = rows.device if rows.device.type != "mps" else torch.device("cpu")  # no float64 on MPS
            rows = rows.to(device=dev, dtype=torch.float64)
            empty = (torch.zeros(rows.shape[1], rows.shape[1], dtype=torch.float64, device=dev), 0)
            gram, n = grams.get(layer.name, empty)
            grams[layer.name] = (gram.addmm_(rows.T, rows), n + rows.shape[0])

        return hook

    hooks = [l.module.register_forward_pre_hook(make(l)) for l in layers]
    used = 0
    try:
        with eval_mode(model), torch.no_grad():
            for batch in itertools.islice(iter(calibration), batches):
                call_model(model, batch_inputs(batch))
                used += 1
    finally:
        for h in hooks:
            h.remove()
    if used == 0:
        raise TransformRefusedError("the calibration batches are empty: data_aware factorisation needs at least one")
    return grams, used


def _select(model: nn.Module, cfg: FactorizeConfig, filter_fn: FilterFn | None) -> tuple[list[_Layer], list[SkippedLayer]]:
    cands = [(n, m) for n, m in model.named_modules() if n and isinstance(m, (nn.Linear, nn.Conv2d))]
    if not cands:
        raise TransformRefusedError("the model has no Linear or Conv2d layer to factorise")
    matches = resolve_targets([n for n, _ in cands], cfg.targets) if cfg.targets is not None else {}
    first, last = cands[0][0], cands[-1][0]
    chosen, skipped = [], []
    base_rule = LayerFactorizeConfig(rank=cfg.rank, energy=cfg.energy, ratio=cfg.ratio)
    for name, module in cands:
        match = matches.get(name)
        method = _method(module)
        if filter_fn is not None and not filter_fn(module, name):
            skipped.append(SkippedLayer(name, "rejected by filter_fn"))
        elif cfg.targets is not None and match is None:
            skipped.append(SkippedLayer(name, "not matched by any targets key"))
        elif match is not None and match.skip:
            skipped.append(SkippedLayer(name, f"excluded by targets[{match.key!r}] = null"))
        elif method is None:
            skipped.append(SkippedLayer(name, f"grouped/depthwise convolution (groups {module.groups}) has no low-rank form here"))
        elif cfg.method != "auto" and method != cfg.method:
            skipped.append(SkippedLayer(name, f"method {cfg.method} does not apply to {type(module).__name__} {tuple(module.weight.shape)}"))
        elif cfg.keep_first_last and name in (first, last) and not (match and match.key == name):
            which = "first" if name == first else "last"
            skipped.append(SkippedLayer(name, f"{which} layer kept (keep_first_last; name it in targets to factorise it)"))
        else:
            rule = base_rule
            if match is not None and match.value is not None and any(
                v is not None for v in (match.value.rank, match.value.energy, match.value.ratio)
            ):
                rule = match.value
            chosen.append(_Layer(name, module, method, rule))
    return chosen, skipped


@torch.no_grad()
def factorize_(
    model: nn.Module,
    config: FactorizeConfig | dict[str, Any] | None = None,
    *,
    filter_fn: FilterFn | None = None,
    example_input: ExampleInput | None = None,
    calibration: Iterable[Any] | None = None,
) -> Report:
    """Factorise the model's Linear/Conv2d layers into low-rank products, in place.

    Every factorisation is computed before any module is swapped, so a refusal
    leaves the model unchanged. Heal the result with :func:`torchslim.finetune` or
    :func:`torchslim.distill`.

    Args:
        model: the model (modified in place).
        config: a :class:`FactorizeConfig` or a mapping validated into one.
        filter_fn: optional ``(module, name) -> bool``; layers it rejects are skipped.
        example_input: one batch; needed for ``macs_ratio`` (and gives ``meta`` MAC counts).
        calibration: batches for ``data_aware`` (each a tensor, a dict of keyword tensors,
            or an ``(x, y)`` pair whose ``x`` is the model input); at most
            ``calibration.batches`` of them are run through the model.

    Returns:
        A :class:`Report` with one ``factorized`` layer per swap (method, ranks, params
        before/after, ``data_aware``; whitened layers also ``whitening_eps`` and
        ``calibration_rows``) and every skipped layer with its reason.

    Raises:
        TransformRefusedError: nothing to factorise, ``macs_ratio`` without ``example_input``,
            ``data_aware`` without (or with empty) ``calibration``. The model is then unchanged.

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
    cfg = FactorizeConfig.parse(config if config is not None else {})
    if cfg.data_aware and calibration is None:
        raise TransformRefusedError(
            "data_aware factorisation needs calibration batches: pass factorize_(..., calibration=loader) "
            "(batches of x or (x, y)), or set data_aware: false"
        )
    chosen, skipped = _select(model, cfg, filter_fn)
    if cfg.macs_ratio is not None and example_input is None:
        raise TransformRefusedError("macs_ratio needs example_input (one batch) to count MACs")
    macs_before = count_macs(model, example_input) if example_input is not None else None
    if example_input is not None:
        _measure_pixels(model, chosen, example_input)
    if cfg.macs_ratio is not None and macs_before is not None:
        budget = cfg.macs_ratio * macs_before
        dense = sum(_cost(l, None)[1] for l in chosen)
        fixed = macs_before - dense

        def total(ratio: float) -> float:
            out = fixed
            for l in chosen:
                ranks = _ranks(l, LayerFactorizeConfig(ratio=ratio))
                p, m = _cost(l, ranks)
                out += m if p < _cost(l, None)[0] else _cost(l, None)[1]
            return out

        lo, hi = 0.01, 0.99
        if total(lo) > budget:
            raise TransformRefusedError(
                f"a MAC budget of {cfg.macs_ratio} cannot be met by factorising {len(chosen)} layer(s): "
                f"{int(total(lo))} MACs at the smallest ranks vs {int(budget)} allowed"
            )
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if total(mid) <= budget else (lo, mid)
        for l in chosen:
            l.rule = LayerFactorizeConfig(ratio=lo)

    todo: list[tuple[_Layer, tuple[int, ...]]] = []
    for l in chosen:
        ranks = _ranks(l, l.rule)
        p_dense, p_fact = _cost(l, None)[0], _cost(l, ranks)[0]
        if p_fact >= p_dense:
            skipped.append(SkippedLayer(l.name, f"rank {ranks} would not shrink the layer ({p_fact} >= {p_dense} weights)"))
            continue
        todo.append((l, ranks))
    grams: dict[str, tuple[torch.Tensor, int]] = {}
    calibration_used = 0
    if cfg.data_aware and calibration is not None:
        svd_layers = [l for l, _ in todo if l.method == "svd"]
        if svd_layers:
            grams, calibration_used = _input_grams(model, svd_layers, calibration, cfg.calibration.batches)
    plans: list[tuple[_Layer, tuple[int, ...], nn.Module, dict[str, Any]]] = []
    for l, ranks in todo:
        whitening: dict[str, Any] = {"data_aware": False}
        if l.method == "svd":
            whitener = None
            if cfg.data_aware:
                if l.name not in grams:
                    skipped.append(SkippedLayer(l.name, "data_aware: the calibration batches never reached this layer"))
                    continue
                gram, rows = grams[l.name]
                whitener, eps = whitening_factor(gram, cfg.whitening_eps)
                whitening = {"data_aware": True, "whitening_eps": eps, "calibration_rows": rows}
            new: nn.Module = svd_linear(l.module, ranks[0], whitener=whitener)
        else:
            new = tucker2_conv(l.module, ranks[0], ranks[1], cfg.hooi_iters)
        new.train(l.module.training)
        plans.append((l, ranks, new, whitening))
    if not plans:
        raise TransformRefusedError(
            "no layer to factorise: " + "; ".join(f"{s.name}: {s.reason}" for s in skipped)
        )
    layers = []
    for l, ranks, new, whitening in plans:
        w = l.module.weight
        replace_module(model, l.name, new)
        p_after = sum(m.weight.numel() for m in new)
        layers.append(
            LayerReport(
                name=l.name,
                kind=type(l.module).__name__,
                shape=tuple(w.shape),
                params=p_after,
                nonzeros=sum(int((m.weight != 0).sum()) for m in new),
                action="factorized",
                details={
                    "method": l.method,
                    "ranks": list(ranks),
                    "params_before": w.numel(),
                    "params_after": p_after,
                    "rule": {k: v for k, v in l.rule.model_dump(exclude={"version"}).items() if v is not None},
                    **whitening,
                },
            )
        )
    meta: dict[str, Any] = {"factorized": len(layers)}
    if cfg.data_aware:
        meta["calibration_batches"] = calibration_used
    if example_input is not None and macs_before is not None:
        meta["macs_before"] = macs_before
        meta["macs_after"] = count_macs(model, example_input)
    return Report(title="factorize", technique="factorize", layers=layers, skipped=skipped, meta=meta)
