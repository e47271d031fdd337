"""Mixed precision: per-layer sensitivity to weight bits, then the best bit allocation under a size budget.

Sensitivity of layer ``l`` at ``b`` bits is the mean KL divergence between the
float model's output distribution and the output with only ``l``'s weight
fake-quantized to ``b`` bits, over a few calibration batches. The allocation
minimises the summed sensitivity subject to ``sum(params_l * bits_l) / 8 <=
budget`` exactly (a multiple-choice knapsack solved by dynamic programming over
the budget in units of ``resolution`` bytes, vectorised with numpy).

Example:
    >>> model = ts.create_model("lenet300", in_features=64)
    >>> loader = ts.load_data("digits").loader("train", 64)
    >>> cfg = MixedPrecisionConfig(candidate_bits=[2, 4, 8], average_bits=4)
    >>> report = mixed_precision_(model, cfg, calibration=loader)
    >>> sorted(report.meta["bits"]), set(report.meta["bits"].values()) <= {2, 4, 8}
    (['fc1', 'fc2', 'fc3'], True)
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from torchslim.config import Config
from torchslim.errors import TransformRefusedError
from torchslim.measure.accuracy import logits_of
from torchslim.measure.macs import batch_inputs, call_model, eval_mode
from torchslim.quant.affine import fake_quantize, qparams_from_tensor
from torchslim.quant.config import LayerQuantConfig, QuantizeConfig
from torchslim.quant.fake import FakeQuantize
from torchslim.quant.layers import float_weights, quantizable_modules
from torchslim.quant.model import quantizable_layers
from torchslim.quant.ptq import QUANTIZE, fold_batchnorm, quantizable_selection
from torchslim.report import LayerReport, Report
from torchslim.technique import FilterFn, Inputs, Plan, Selection, Technique, legacy_inputs, refuse_if_empty, run


class MixedPrecisionConfig(Config):
    """Per-layer weight bits chosen from measured sensitivity under a size budget.

    Attributes:
        candidate_bits: the widths a layer may get (each 2 to 8).
        average_bits: the budget as average bits per quantized weight (e.g. 4 = the
            bytes of a uniform 4-bit model).
        quantize: the base quantization config (its ``weight.bits`` is overridden per layer).
        sensitivity_batches: calibration batches used to measure sensitivity.
        resolution: budget unit in bytes for the exact allocation.
    """

    candidate_bits: list[int] = Field(default_factory=lambda: [2, 3, 4, 5, 6, 8], min_length=1)
    average_bits: float = Field(default=4.0, ge=2.0, le=8.0)
    quantize: QuantizeConfig = Field(default_factory=QuantizeConfig)
    sensitivity_batches: int = Field(default=4, ge=1)
    resolution: int = Field(default=1, ge=1)

    @field_validator("candidate_bits")
    @classmethod
    def _check_bits(cls, v: list[int]) -> list[int]:
        bad = [b for b in v if not 2 <= b <= 8]
        if bad:
            raise ValueError(f"every candidate bit width must be in [2, 8], got {bad}")
        return sorted(set(v))


@torch.no_grad()
def layer_sensitivity(
    model: nn.Module,
    batches: list[Any],
    candidate_bits: Iterable[int],
    config: QuantizeConfig | None = None,
    layers: list[str] | None = None,
) -> dict[str, dict[int, float]]:
    """KL(float ‖ one-layer-quantized) of the model's outputs for every layer and bit width.

    A layer is a float Linear/Conv (``layers=None``: these) or, when ``layers`` names it,
    any module :func:`~torchslim.quant.layers.quantizable_modules` offers (an
    ``Embedding``, ``GRU``/``LSTM`` or ``MultiheadAttention``: all its weights
    (:func:`~torchslim.quant.layers.float_weights`) are quantized together).
    The model is restored exactly after each trial.

    Example:
        >>> m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> s = layer_sensitivity(m, [torch.randn(16, 4)], [2, 8])
        >>> s["0"][2] >= s["0"][8]
        True
        >>> g = nn.Sequential(nn.Embedding(10, 4))
        >>> sorted(layer_sensitivity(g, [torch.arange(8)[None]], [2, 8], layers=["0"])["0"])
        [2, 8]
    """
    config = config or QuantizeConfig()
    inputs = [batch_inputs(b, model) for b in batches]
    if not inputs:
        raise TransformRefusedError("the calibration loader is empty: sensitivity needs at least one batch")
    offered = quantizable_layers(model) if layers is None else quantizable_modules(model)
    chosen = [(n, m) for n, m in offered if layers is None or n in layers]
    out: dict[str, dict[int, float]] = {}
    with eval_mode(model):
        ref = [F.log_softmax(logits_of(call_model(model, x)).float(), dim=-1) for x in inputs]
        for name, module in chosen:
            weights = [w.data for _, w in float_weights(module)]
            originals = [w.clone() for w in weights]
            out[name] = {}
            for bits in candidate_bits:
                spec = config.layer_weight(LayerQuantConfig(bits=bits)).spec()
                for w, original in zip(weights, originals):
                    w.copy_(fake_quantize(original, qparams_from_tensor(original, spec)))
                kl = 0.0
                for x, r in zip(inputs, ref):
                    q = F.log_softmax(logits_of(call_model(model, x)).float(), dim=-1)
                    kl += float(F.kl_div(q, r, log_target=True, reduction="batchmean"))
                out[name][bits] = kl / len(inputs)
                for w, original in zip(weights, originals):
                    w.copy_(original)
    return out


def weight_count(module: nn.Module) -> int:
    """The number of weights quantizing ``module`` quantizes (all of :func:`~torchslim.quant.layers.float_weights`).

    Example:
        >>> weight_count(nn.Linear(4, 3)), weight_count(nn.GRU(4, 2))
        (12, 36)
    """
    return sum(w.numel() for _, w in float_weights(module))


def allocate_bits(
    sensitivity: dict[str, dict[int, float]],
    params: dict[str, int],
    budget_bytes: float,
    *,
    resolution: int = 1,
) -> dict[str, int]:
    """Bits per layer minimising summed sensitivity with ``sum(params * bits) / 8 <= budget_bytes``.

    Raises:
        TransformRefusedError: even the smallest widths exceed the budget.

    Example:
        >>> allocate_bits({"a": {2: 1.0, 8: 0.0}, "b": {2: 0.1, 8: 0.0}}, {"a": 8, "b": 8}, 10, resolution=1)
        {'a': 8, 'b': 2}
    """
    names = list(sensitivity)
    cap = int(math.floor(budget_bytes / resolution + 1e-9))
    inf = float("inf")
    best = np.zeros(cap + 1)  # best[c]: least summed sensitivity within c units
    pointers = []
    for name in names:
        options = [(math.ceil(params[name] * b / (8 * resolution)), s, b) for b, s in sorted(sensitivity[name].items())]
        new = np.full(cap + 1, inf)
        pick = np.full(cap + 1, -1, dtype=np.int64)
        for k, (units, s, _b) in enumerate(options):
            if units > cap:
                continue
            cand = np.full(cap + 1, inf)
            cand[units:] = best[: cap + 1 - units] + s
            better = cand < new
            new[better], pick[better] = cand[better], k
        best = new
        pointers.append((pick, options))
    if not np.isfinite(best[cap]):
        smallest = sum(params[n] * min(sensitivity[n]) / 8 for n in names)
        raise TransformRefusedError(
            f"budget of {budget_bytes:.0f} bytes is below the smallest allocation ({smallest:.0f} bytes)"
        )
    choice: dict[str, int] = {}
    c = cap
    for name, (pick, options) in zip(reversed(names), reversed(pointers)):
        units, _s, b = options[int(pick[c])]
        choice[name] = b
        c -= units
    return {n: choice[n] for n in names}


def _batches(cfg: MixedPrecisionConfig, calibration: Iterable[Any] | None) -> list[Any]:
    """The batches both sensitivity and the quantization's calibration read."""
    if calibration is None:
        raise TransformRefusedError("mixed precision needs calibration data (pass calibration=loader)")
    batches = list(itertools.islice(iter(calibration), max(cfg.sensitivity_batches, cfg.quantize.calibration.batches)))
    if not batches:
        raise TransformRefusedError("the calibration loader is empty: mixed precision needs at least one batch")
    return batches


def _probe(model: nn.Module, config: QuantizeConfig) -> tuple[nn.Module, str]:
    """A copy of ``model`` with BatchNorm folded as the quantization will fold it; the note says why not."""
    probe = copy.deepcopy(model)
    note = ""
    if config.fold_batchnorm:
        _, note = fold_batchnorm(probe)  # an untraceable model is measured unfolded, as it is quantized
    return probe, note


class MixedPrecision(Technique[MixedPrecisionConfig, Plan]):
    """Mixed-precision quantization (:func:`mixed_precision_`): sensitivity, allocation, then :data:`QUANTIZE`'s plan."""

    name = "quantize-mixed"
    title = "quantize"
    config = MixedPrecisionConfig
    verb = "quantize"
    function = "mixed_precision_"
    handles = QUANTIZE.handles

    def candidates(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """The float layers :func:`~torchslim.quant.layers.quantizable_modules` offers (exact classes)."""
        return quantizable_modules(model)

    def select(self, model: nn.Module, cfg: MixedPrecisionConfig, filter_fn: FilterFn | None) -> Selection:
        """Every float layer ``filter_fn`` accepts (the bits per layer replace ``quantize.targets``)."""
        return quantizable_selection(model, filter_fn=filter_fn)

    def plan(self, model: nn.Module, cfg: MixedPrecisionConfig, selection: Selection, inputs: Inputs) -> Plan:
        """Measure sensitivity on a folded copy, allocate bits under the budget, plan the quantization with them."""
        batches = _batches(cfg, inputs.calibration)
        refuse_if_empty(selection.chosen, selection.skipped, "quantize")
        probe, note = _probe(model, cfg.quantize)
        names = [n for n, _, _ in selection.chosen]
        sens = layer_sensitivity(probe, batches[: cfg.sensitivity_batches], cfg.candidate_bits, cfg.quantize, names)
        params = {n: weight_count(probe.get_submodule(n)) for n in names}
        budget = sum(params.values()) * cfg.average_bits / 8
        bits = allocate_bits(sens, params, budget, resolution=cfg.resolution)
        qcfg = QuantizeConfig.parse({**cfg.quantize.model_dump(), "targets": {n: {"bits": b} for n, b in bits.items()}})
        qselection = QUANTIZE.select(model, qcfg, lambda _module, name: name in bits)
        qplan = QUANTIZE.plan(model, qcfg, qselection, Inputs(calibration=batches))
        meta = qplan.meta
        if note:
            meta.setdefault("batchnorm_note", note)
        meta["bits"] = bits
        meta["sensitivity"] = {n: {str(b): v for b, v in d.items()} for n, d in sens.items()}
        meta["budget_bytes"] = budget
        meta["weight_bytes"] = sum(params[n] * b / 8 for n, b in bits.items())
        return Plan(qplan.skipped, meta, qplan.work)

    def apply(self, model: nn.Module, plan: Plan) -> list[LayerReport]:
        """As :data:`QUANTIZE`: transplant the quantized copy."""
        return QUANTIZE.apply(model, plan)

    def skip_reason(self, name: str, module: nn.Module, params: list[str]) -> str | None:
        """A quantizer's learned step size belongs to the quantization (no entry); otherwise the generic reason."""
        return None if isinstance(module, FakeQuantize) else super().skip_reason(name, module, params)


#: the mixed-precision quantization technique (:func:`mixed_precision_` runs it)
MIXED_PRECISION = MixedPrecision()


def mixed_precision_(
    model: nn.Module,
    config: MixedPrecisionConfig | dict[str, Any] | None = None,
    *,
    filter_fn: FilterFn | None = None,
    calibration: Iterable[Any] | None = None,
    example_input: Any = None,
    **deprecated: Any,
) -> Report:
    """Measure sensitivity, allocate bits under the budget, then quantize with per-layer bits.

    Sensitivity is measured on a copy with BatchNorm folded as the quantization
    folds it (a model ``torch.fx`` cannot trace is measured unfolded and
    ``meta["batchnorm_note"]`` says why).

    Args:
        model: the float model (quantized in place; left bit-identical when the verb refuses or fails).
        config: a :class:`MixedPrecisionConfig` or a mapping validated into one.
        filter_fn: layers it rejects stay float.
        calibration: batches for sensitivity (and for static calibration); earlier ``loader=`` (deprecated).
        example_input: unused (accepted for the one verb signature).
        **deprecated: old keyword names (``loader=``), with a ``DeprecationWarning``.

    Returns:
        The quantization :class:`Report`, with ``meta["bits"]`` (chosen bits per layer),
        ``meta["sensitivity"]``, ``meta["budget_bytes"]`` and ``meta["weight_bytes"]``.

    Raises:
        ConfigError: a bad config.
        TransformRefusedError: no calibration data, nothing to quantize, or a budget below the smallest widths.

    Example:
        >>> model = ts.create_model("lenet300", in_features=64)
        >>> loader = ts.load_data("digits").loader("train", 64)
        >>> cfg = {"average_bits": 4, "candidate_bits": [2, 4, 8]}
        >>> report = mixed_precision_(model, cfg, calibration=loader)
        >>> params = {l.name: l.params for l in report.layers}
        >>> sum(params[n] * b for n, b in report.meta["bits"].items()) / 8 <= report.meta["budget_bytes"]
        True
    """
    inputs = legacy_inputs("mixed_precision_", Inputs(calibration, example_input), deprecated)
    return run(MIXED_PRECISION, model, config, filter_fn=filter_fn, inputs=inputs)
