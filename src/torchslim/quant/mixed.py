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
from collections.abc import Callable, Iterable
from typing import Any

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
from torchslim.quant.model import quantizable_layers
from torchslim.quant.ptq import quantize_
from torchslim.report import Report


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

    The model is restored exactly after each trial.

    Example:
        >>> m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> s = layer_sensitivity(m, [torch.randn(16, 4)], [2, 8])
        >>> s["0"][2] >= s["0"][8]
        True
    """
    config = config or QuantizeConfig()
    inputs = [batch_inputs(b) for b in batches]
    if not inputs:
        raise TransformRefusedError("the calibration loader is empty: sensitivity needs at least one batch")
    chosen = [(n, m) for n, m in quantizable_layers(model) if layers is None or n in layers]
    out: dict[str, dict[int, float]] = {}
    with eval_mode(model):
        ref = [F.log_softmax(logits_of(call_model(model, x)).float(), dim=-1) for x in inputs]
        for name, module in chosen:
            original = module.weight.data.clone()
            out[name] = {}
            for bits in candidate_bits:
                spec = config.layer_weight(LayerQuantConfig(bits=bits)).spec()
                module.weight.data.copy_(fake_quantize(original, qparams_from_tensor(original, spec)))
                kl = 0.0
                for x, r in zip(inputs, ref):
                    q = F.log_softmax(logits_of(call_model(model, x)).float(), dim=-1)
                    kl += float(F.kl_div(q, r, log_target=True, reduction="batchmean"))
                out[name][bits] = kl / len(inputs)
                module.weight.data.copy_(original)
    return out


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
    import numpy as np

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


def mixed_precision_(
    model: nn.Module,
    config: MixedPrecisionConfig | dict[str, Any] | None = None,
    *,
    calibration: Iterable[Any] | None = None,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
) -> Report:
    """Measure sensitivity, allocate bits under the budget, then ``quantize_`` with per-layer bits.

    Args:
        model: the float model (quantized in place).
        config: a :class:`MixedPrecisionConfig` or a mapping validated into one.
        calibration: batches for sensitivity (and for static calibration).
        filter_fn: layers it rejects stay float.

    Returns:
        The quantization :class:`Report`, with ``meta["bits"]`` (chosen bits per layer),
        ``meta["sensitivity"]`` and ``meta["budget_bytes"]``.

    Example:
        >>> model = ts.create_model("lenet300", in_features=64)
        >>> loader = ts.load_data("digits").loader("train", 64)
        >>> cfg = {"average_bits": 4, "candidate_bits": [2, 4, 8]}
        >>> report = mixed_precision_(model, cfg, calibration=loader)
        >>> params = {l.name: l.params for l in report.layers}
        >>> sum(params[n] * b for n, b in report.meta["bits"].items()) / 8 <= report.meta["budget_bytes"]
        True
    """
    cfg = MixedPrecisionConfig.parse(config)
    if calibration is None:
        raise TransformRefusedError("mixed precision needs calibration data (pass calibration=loader)")
    batches = list(itertools.islice(iter(calibration), max(cfg.sensitivity_batches, cfg.quantize.calibration.batches)))
    if not batches:
        raise TransformRefusedError("the calibration loader is empty: mixed precision needs at least one batch")
    probe = copy.deepcopy(model)
    if cfg.quantize.fold_batchnorm:
        from torchslim.fold.batchnorm import find_conv_bn_pairs, fold_batchnorms_

        probe.eval()
        try:
            fold_batchnorms_(probe, find_conv_bn_pairs(probe))
        except Exception:  # untraceable: measure without folding
            pass
    names = [n for n, m in quantizable_layers(probe) if filter_fn is None or filter_fn(m, n)]
    sens = layer_sensitivity(probe, batches[: cfg.sensitivity_batches], cfg.candidate_bits, cfg.quantize, names)
    params = {n: probe.get_submodule(n).weight.numel() for n in names}
    budget = sum(params.values()) * cfg.average_bits / 8
    bits = allocate_bits(sens, params, budget, resolution=cfg.resolution)
    targets = {n: {"bits": b} for n, b in bits.items()}
    qcfg = QuantizeConfig.parse({**cfg.quantize.model_dump(), "targets": targets})
    report = quantize_(model, qcfg, calibration=batches, filter_fn=filter_fn)
    report.meta["bits"] = bits
    report.meta["sensitivity"] = {n: {str(b): v for b, v in d.items()} for n, d in sens.items()}
    report.meta["budget_bytes"] = budget
    report.meta["weight_bytes"] = sum(params[n] * b / 8 for n, b in bits.items())
    report.technique = "quantize-mixed"
    return report
