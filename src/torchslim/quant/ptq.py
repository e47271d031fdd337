"""Post-training quantization: the ``quantize_`` verb (weight-only or static with calibration).

Everything is computed on a copy of the model (BatchNorm folding, layer swaps,
activation placement, calibration); only when all of it succeeded does the copy's
state replace the model's, so a refusal leaves the model bit-identical.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from torchslim.errors import ConfigError, ConfigIssue, TorchslimError, TransformRefusedError
from torchslim.graph import provenance
from torchslim.graph.transaction import transplant
from torchslim.measure.accuracy import logits_of
from torchslim.quant.affine import check_spec_fits, dequantize, quantize, sqnr_db
from torchslim.quant.config import LayerQuantConfig, QuantizeConfig, WeightQuantConfig
from torchslim.quant.fake import FakeQuantize
from torchslim.quant.model import (
    ACT_DICT,
    QUANT_LAYERS,
    activation_quantizers,
    calibrate,
    place_activation_quant,
    quantizable_layers,
    scale_range,
    swap_layer,
)
from torchslim.quant.smooth import attach_input_scales, smooth_layernorm_inputs_
from torchslim.report import LayerReport, Report, SkippedLayer
from torchslim.targets import select_layers

FilterFn = Callable[[nn.Module, str], bool]
#: the provenance kind of quantization records
QUANT = "quant"


def _select(
    model: nn.Module, config: QuantizeConfig, filter_fn: FilterFn | None
) -> tuple[list[tuple[str, nn.Module, WeightQuantConfig]], list[SkippedLayer]]:
    if any(isinstance(m, QUANT_LAYERS) for m in model.modules()):
        raise TransformRefusedError("the model is already quantized (it has quantized layers)")
    layers = quantizable_layers(model)
    if not layers:
        raise TransformRefusedError("the model has no quantizable layer (Linear or Conv)")
    picked, skipped_pairs = select_layers(
        layers, config.targets, filter_fn=filter_fn, keep_first_last=config.keep_first_last, kept_note="kept in float"
    )
    chosen: list[tuple[str, nn.Module, WeightQuantConfig]] = []
    skipped = [SkippedLayer(n, r) for n, r in skipped_pairs]
    issues: list[ConfigIssue] = []
    for name, module, match in picked:
        override = match.value if match is not None and isinstance(match.value, LayerQuantConfig) else None
        try:
            wcfg = config.layer_weight(override)
        except Exception as exc:
            issues.append(ConfigIssue(f"targets.{match.key if match else name}", str(exc)))
            continue
        spec = wcfg.spec()
        try:
            check_spec_fits(spec, tuple(module.weight.shape), name)
        except TorchslimError as exc:
            path = f"targets.{match.key}.group_size" if override and override.group_size else "weight.group_size"
            issues.append(ConfigIssue(path, str(exc), wcfg.group_size))
            continue
        chosen.append((name, module, wcfg))
    if issues:
        raise ConfigError(issues)
    if not chosen:
        raise TransformRefusedError("no layer left to quantize: " + "; ".join(f"{s.name}: {s.reason}" for s in skipped))
    return chosen, skipped


def _take(calibration: Iterable[Any] | None, n: int) -> list[Any]:
    if calibration is None:
        raise TransformRefusedError("static quantization needs calibration data (pass calibration=loader)")
    return list(itertools.islice(iter(calibration), n))


_transplant = transplant  # the name quant.packed used before graph.transaction had it


def build_structure(work: nn.Module, config: QuantizeConfig, wcfg_of: dict[str, WeightQuantConfig]) -> dict[str, Any]:
    """Fold BatchNorm, swap the named layers and place activation points on ``work`` (no data needed).

    Returns facts for the report's ``meta`` (folds, placement). Shared by
    :func:`quantize_` and :func:`torchslim.quant.packed.load_packed`.

    Example:
        >>> m = nn.Sequential(nn.Linear(4, 2))
        >>> build_structure(m, QuantizeConfig(mode="weight_only"), {"0": WeightQuantConfig()})["batchnorm_folded"]
        []
    """
    meta: dict[str, Any] = {}
    folded: list[tuple[str, str]] = []
    if config.fold_batchnorm:
        from torchslim.fold.batchnorm import find_conv_bn_pairs, fold_batchnorms_

        was_training = work.training
        work.eval()
        try:
            pairs = find_conv_bn_pairs(work)
        except TorchslimError as exc:
            pairs = []
            meta["batchnorm_note"] = str(exc)
        folded = fold_batchnorms_(work, pairs)
        work.train(was_training)
    meta["batchnorm_folded"] = [{"layer": a, "batchnorm": b} for a, b in folded]
    for name, module in work.named_modules():
        if name in wcfg_of:
            swap_layer(module, wcfg_of[name], learn_scale=config.learn_scale)
    if config.mode == "static":
        placement = place_activation_quant(work, config.activation, learn_scale=config.learn_scale)
        meta["activation_placement"] = {
            "method": placement.method,
            "points": placement.points,
            "shared_inputs": placement.shared,
        }
        if placement.note:
            meta["activation_placement"]["note"] = placement.note
    return meta


def quantize_(
    model: nn.Module,
    config: QuantizeConfig | dict[str, Any] | None = None,
    *,
    calibration: Iterable[Any] | None = None,
    filter_fn: FilterFn | None = None,
) -> Report:
    """Quantize ``model`` in place (fake-quant simulation) and report every layer.

    BatchNorm is folded first (when the model can be traced), weights are
    quantized per the config, and in ``static`` mode activation quantization
    points are placed and calibrated on up to ``calibration.batches`` batches
    (with ``activation.smooth``, Linear layers reading a LayerNorm are smoothed
    on the same batches first: :mod:`torchslim.quant.smooth`).
    Export with :func:`torchslim.quant.onnx.export_qdq` for real int8 execution
    in ONNX Runtime and store with :func:`torchslim.quant.packed.save_packed`.

    Args:
        model: the model (modified in place; eval-mode statistics are used).
        config: a :class:`QuantizeConfig` or a mapping validated into one.
        calibration: ``(inputs, targets)`` batches (or bare inputs) for ``static`` mode.
        filter_fn: optional ``(module, name) -> bool``; layers it rejects stay float.

    Returns:
        A :class:`Report`: per layer the bits, granularity, scale range and weight
        SQNR; ``meta`` has activation points, scale ranges and BatchNorm folds.

    Raises:
        ConfigError: a bad config (names the field, the value, the allowed values).
        TransformRefusedError: nothing to quantize, already quantized, or no calibration data.

    Example:
        >>> model = ts.create_model("lenet300", in_features=64)
        >>> loader = ts.load_data("digits").loader("train", 64)
        >>> report = quantize_(model, {"mode": "static", "weight": {"bits": 8}}, calibration=loader)
        >>> report.layers[0].details["bits"]
        8
    """
    config = QuantizeConfig.parse(config)
    chosen, skipped = _select(model, config, filter_fn)
    batches = _take(calibration, config.calibration.batches) if config.mode == "static" else []
    if config.mode == "static" and not batches:
        raise TransformRefusedError("the calibration loader is empty: static quantization needs at least one batch")
    work = copy.deepcopy(model)
    wcfg_of = {n: c for n, _, c in chosen}
    meta: dict[str, Any] = {"mode": config.mode, "config": config.model_dump()}
    smoothed_by: dict[str, str] = {}  # layer -> the LayerNorm whose output it reads
    if config.mode == "static" and config.activation.smooth is not None:
        groups = smooth_layernorm_inputs_(work, list(wcfg_of), batches, config.activation.smooth,
                                          mask_key=config.activation.mask_key)
        smoothed_by = {n: g.layernorm for g in groups for n in g.layers}
        meta["smoothing"] = {"alpha": config.activation.smooth, "groups": [dataclasses.asdict(g) for g in groups]}
        if not groups:
            meta["smoothing"]["note"] = "no quantized Linear reads a LayerNorm output: nothing smoothed"
    meta.update(build_structure(work, config, wcfg_of))
    names = set(wcfg_of)
    if config.mode == "static":
        tokens: dict[str, int] = {}
        meta["calibration_batches"] = calibrate(work, batches, config.activation.mask_key, tokens)
        if tokens:  # dict batches with a token mask: statistics over the real tokens only
            meta["calibration_tokens"] = {"mask_key": config.activation.mask_key, **tokens}
        acts = {}
        for aname, fq in activation_quantizers(work):
            qp = fq.qparams()
            acts[aname.removeprefix(ACT_DICT + ".")] = {"scale": float(qp.scale), "zero_point": int(qp.zero_point)}
        meta["activations"] = acts
        scales = [a["scale"] for a in acts.values()]
        meta["activation_scale_range"] = [min(scales), max(scales)] if scales else None
    layers: list[LayerReport] = []
    for name, module in work.named_modules():
        if name not in names:
            continue
        qp = module.weight_fq.qparams()
        w_ref = module.weight.detach()  # float weight after BatchNorm folding
        w_q = dequantize(quantize(module.weight.detach(), qp), qp)
        lo, hi = scale_range(qp)
        cfg = wcfg_of[name]
        layers.append(
            LayerReport(
                name=name,
                kind=type(module).__name__.removeprefix("Quant"),
                shape=tuple(module.weight.shape),
                params=module.weight.numel(),
                nonzeros=int(torch.count_nonzero(w_q)),
                action="quantized",
                details={
                    "bits": cfg.bits,
                    "granularity": cfg.granularity,
                    **({"group_size": cfg.group_size} if cfg.granularity == "group" else {}),
                    "symmetric": cfg.symmetric,
                    "observer": cfg.observer,
                    "scale_min": lo,
                    "scale_max": hi,
                    "weight_sqnr_db": sqnr_db(w_ref, w_q),
                    "weight_rel_error": float(
                        torch.linalg.vector_norm(w_q - w_ref) / torch.linalg.vector_norm(w_ref).clamp_min(1e-12)
                    ),
                    "act_bits": config.activation.bits if config.mode == "static" else None,
                    **({"smoothed_input_of": smoothed_by[name]} if name in smoothed_by else {}),
                },
            )
        )
    if batches:
        from torchslim.measure.macs import batch_inputs, call_model, eval_mode

        sample = batch_inputs(batches[0])
        with torch.no_grad(), eval_mode(model), eval_mode(work):
            ref_out = logits_of(call_model(model, sample))
            q_out = logits_of(call_model(work, sample))
        meta["output_sqnr_db"] = sqnr_db(ref_out, q_out)
        meta["output_top1_agreement"] = float((ref_out.argmax(-1) == q_out.argmax(-1)).float().mean())
    provenance.record(work, QUANT, {
        "config": config.model_dump(),
        "layers": {n: c.model_dump() for n, c in wcfg_of.items()},
        **({"smoothed": list(smoothed_by)} if smoothed_by else {}),
    })
    transplant(model, work)
    return Report(title="quantize", technique="quantize", layers=layers, skipped=skipped, meta=meta)


def quant_info(model: nn.Module) -> dict[str, Any] | None:
    """What :func:`quantize_` did to ``model`` (its config and per-layer weight configs), or ``None``."""
    info = provenance.latest(model, QUANT)
    return info if isinstance(info, dict) else None


def rebuild_quantized(model: nn.Module, info: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
    """Give a fresh float ``model`` the quantized structure ``info`` describes, shaped to hold ``state``.

    BatchNorm folds, layer swaps and activation points are rebuilt (no data
    needed); scale/zero-point buffers take the shapes stored in ``state`` and
    learned (LSQ) scales get their parameters, so ``load_state_dict(state)``
    then fits exactly. Observers are switched off: the loaded scales are final.

    Raises:
        TorchslimError: ``info`` is not a quantization record.

    Example:
        >>> qmodel = ts.create_model("lenet5")
        >>> x = torch.randn(8, 1, 28, 28)
        >>> report = quantize_(qmodel, {"weight": {"bits": 4}}, calibration=[x])
        >>> model = ts.create_model("lenet5")
        >>> rebuild_quantized(model, quant_info(qmodel), qmodel.state_dict())
        >>> model.load_state_dict(qmodel.state_dict())
        <All keys matched successfully>
        >>> torch.equal(model.eval()(x), qmodel.eval()(x))
        True
    """
    _rebuild_quantized(model, info, state)
    provenance.record(model, QUANT, info)


@provenance.register_rebuilder("quant")
def _rebuild_quantized(model: nn.Module, info: Any, state: dict[str, torch.Tensor]) -> None:
    """:func:`rebuild_quantized` without appending the record (the provenance rebuilder of ``quant``)."""
    if not isinstance(info, dict) or "config" not in info or not isinstance(info.get("layers"), dict):
        raise TorchslimError("the quantization record lacks its config or layers")
    config = QuantizeConfig.parse(info["config"])
    wcfg_of = {n: WeightQuantConfig.parse(c) for n, c in info["layers"].items()}
    attach_input_scales(model, info.get("smoothed", []), state)
    build_structure(model, config, wcfg_of)
    own = model.state_dict()
    modules = dict(model.named_modules())
    for key, value in state.items():
        mod_name, _, attr = key.rpartition(".")
        module = modules.get(mod_name)
        if not isinstance(module, FakeQuantize):
            continue
        if attr == "log_scale" and key not in own:
            module.log_scale = nn.Parameter(torch.empty_like(value))
        elif key in own and own[key].shape != value.shape and attr in module._buffers:
            module._buffers[attr] = torch.empty_like(value)
    for module in model.modules():
        if isinstance(module, FakeQuantize):
            module.observing = False
