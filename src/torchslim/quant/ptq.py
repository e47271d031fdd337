"""Post-training quantization: the ``quantize_`` verb and its technique object :data:`QUANTIZE`.

:meth:`Quantize.plan` builds the quantized model on a copy (SmoothQuant
smoothing, BatchNorm folding, layer swaps, activation placement, calibration)
and measures it (the per-layer reports, the float/quantized output agreement);
the model itself is only read. :meth:`Quantize.apply` records what was done
(:mod:`torchslim.graph.provenance`) and transplants the copy into the model,
which keeps its identity. The driver :func:`torchslim.technique.run` runs all of
it in one transaction: a refusal leaves the model bit-identical.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from torchslim.errors import ConfigError, ConfigIssue, TorchslimError, TransformRefusedError
from torchslim.fold.batchnorm import find_conv_bn_pairs, fold_batchnorms_
from torchslim.graph import provenance
from torchslim.graph.transaction import transplant
from torchslim.measure.macs import batch_inputs, call_model, eval_mode
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
from torchslim.targets import Match, select_layers
from torchslim.technique import FilterFn, Inputs, Plan, Selection, Technique, legacy_inputs, refuse_if_empty, run

#: the provenance kind of quantization records
QUANT = "quant"
#: where the compared tensor came from when :func:`comparable_output` finds it where ``logits_of`` did
_LOGITS_PLACES = ("output", "logits", "output[0]")


# ----------------------------------------------------------------------------- selection and per-layer configs


def quantizable_selection(
    model: nn.Module,
    targets: Mapping[str, LayerQuantConfig | None] | None = None,
    *,
    filter_fn: FilterFn | None = None,
    keep_first_last: bool = False,
) -> Selection:
    """The float Linear/Conv layers of ``model`` chosen by the targets grammar, and the skipped ones.

    Raises:
        TransformRefusedError: the model is already quantized or has no Linear/Conv layer.

    Example:
        >>> m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> sel = quantizable_selection(m, keep_first_last=True)
        >>> [n for n, _, _ in sel.chosen], [(s.name, s.reason) for s in sel.skipped][0]
        ([], ('0', 'first layer kept (keep_first_last; kept in float)'))
    """
    if any(isinstance(m, QUANT_LAYERS) for m in model.modules()):
        raise TransformRefusedError("the model is already quantized (it has quantized layers)")
    layers = quantizable_layers(model)
    if not layers:
        raise TransformRefusedError("the model has no quantizable layer (Linear or Conv)")
    chosen, skipped = select_layers(
        layers, targets, filter_fn=filter_fn, keep_first_last=keep_first_last, kept_note="kept in float"
    )
    return Selection(chosen, [SkippedLayer(n, r) for n, r in skipped])


def layer_configs(
    config: QuantizeConfig, chosen: list[tuple[str, nn.Module, Match[Any] | None]]
) -> list[tuple[str, nn.Module, WeightQuantConfig]]:
    """The weight config of every chosen layer (its ``targets`` override applied), checked against its shape.

    Raises:
        ConfigError: every override that is invalid or whose ``group_size`` does not fit its layer.

    Example:
        >>> [(n, c.bits) for n, _, c in layer_configs(QuantizeConfig(), [("fc", nn.Linear(4, 2), None)])]
        [('fc', 8)]
    """
    out: list[tuple[str, nn.Module, WeightQuantConfig]] = []
    issues: list[ConfigIssue] = []
    for name, module, match in chosen:
        override = match.value if match is not None and isinstance(match.value, LayerQuantConfig) else None
        try:
            wcfg = config.layer_weight(override)
        except Exception as exc:  # noqa: BLE001 - pydantic's error, reported with the field path
            issues.append(ConfigIssue(f"targets.{match.key if match else name}", str(exc)))
            continue
        try:
            check_spec_fits(wcfg.spec(), tuple(cast(torch.Tensor, module.weight).shape), name)
        except TorchslimError as exc:
            path = f"targets.{match.key}.group_size" if match and override and override.group_size else "weight.group_size"
            issues.append(ConfigIssue(path, str(exc), wcfg.group_size))
            continue
        out.append((name, module, wcfg))
    if issues:
        raise ConfigError(issues)
    return out


def calibration_batches(config: QuantizeConfig, calibration: Iterable[Any] | None) -> list[Any]:
    """The first ``config.calibration.batches`` batches of ``calibration`` (``static`` mode; none otherwise).

    Raises:
        TransformRefusedError: ``static`` mode without calibration data, or with an empty loader.

    Example:
        >>> len(calibration_batches(QuantizeConfig(calibration={"batches": 2}), [torch.ones(1)] * 5))
        2
    """
    if config.mode != "static":
        return []
    if calibration is None:
        raise TransformRefusedError("static quantization needs calibration data (pass calibration=loader)")
    batches = list(itertools.islice(iter(calibration), config.calibration.batches))
    if not batches:
        raise TransformRefusedError("the calibration loader is empty: static quantization needs at least one batch")
    return batches


# ----------------------------------------------------------------------------- building the quantized copy


def fold_batchnorm(model: nn.Module) -> tuple[list[tuple[str, str]], str]:
    """Fold every Conv/Linear→BatchNorm pair of ``model`` in place with eval statistics: ``(pairs, note)``.

    A model ``torch.fx`` cannot trace is left unfolded and ``note`` says why
    (``""`` when it traced). The model's training mode is put back after.

    Raises:
        TorchslimError: a pair cannot be folded (e.g. a BatchNorm without running statistics).

    Example:
        >>> m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
        >>> fold_batchnorm(m), type(m[1]).__name__, m.training
        (([('0', '1')], ''), 'Identity', True)
    """
    was_training = model.training
    model.eval()
    try:
        pairs, note = find_conv_bn_pairs(model), ""
    except TorchslimError as exc:  # untraceable: reported as the note, the layers stay unfolded
        pairs, note = [], str(exc)
    folded = fold_batchnorms_(model, pairs)
    model.train(was_training)
    return folded, note


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
        folded, note = fold_batchnorm(work)
        if note:
            meta["batchnorm_note"] = note
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


def _smooth(work: nn.Module, config: QuantizeConfig, names: list[str], batches: list[Any]) -> tuple[dict[str, str], dict[str, Any]]:
    """SmoothQuant on ``work`` (``activation.smooth``): ``(layer -> the LayerNorm it reads, meta)``."""
    if config.mode != "static" or config.activation.smooth is None:
        return {}, {}
    groups = smooth_layernorm_inputs_(work, names, batches, config.activation.smooth, mask_key=config.activation.mask_key)
    meta: dict[str, Any] = {"alpha": config.activation.smooth, "groups": [dataclasses.asdict(g) for g in groups]}
    if not groups:
        meta["note"] = "no quantized Linear reads a LayerNorm output: nothing smoothed"
    return {n: g.layernorm for g in groups for n in g.layers}, {"smoothing": meta}


def _calibrate(work: nn.Module, config: QuantizeConfig, batches: list[Any]) -> dict[str, Any]:
    """Calibrate the activation quantizers of ``work`` on ``batches``; their scales for ``meta``."""
    meta: dict[str, Any] = {}
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
    return meta


def layer_report(name: str, module: nn.Module, wcfg: WeightQuantConfig, config: QuantizeConfig,
                 smoothed_input_of: str | None = None) -> LayerReport:
    """The report of one quantized layer: bits, granularity, scale range, weight SQNR and relative error.

    Example:
        >>> fc = nn.Linear(8, 4); swap_layer(fc, WeightQuantConfig(bits=4))
        >>> r = layer_report("fc", fc, WeightQuantConfig(bits=4), QuantizeConfig(mode="weight_only"))
        >>> r.kind, r.details["bits"], r.details["act_bits"], r.details["weight_sqnr_db"] > 10
        ('Linear', 4, None, True)
    """
    qp = cast(FakeQuantize, module.weight_fq).qparams()
    w_ref = cast(torch.Tensor, module.weight).detach()  # float weight after BatchNorm folding
    w_q = dequantize(quantize(w_ref, qp), qp)
    lo, hi = scale_range(qp)
    details = {
        "bits": wcfg.bits,
        "granularity": wcfg.granularity,
        **({"group_size": wcfg.group_size} if wcfg.granularity == "group" else {}),
        "symmetric": wcfg.symmetric,
        "observer": wcfg.observer,
        "scale_min": lo,
        "scale_max": hi,
        "weight_sqnr_db": sqnr_db(w_ref, w_q),
        "weight_rel_error": float(
            torch.linalg.vector_norm(w_q - w_ref) / torch.linalg.vector_norm(w_ref).clamp_min(1e-12)
        ),
        "act_bits": config.activation.bits if config.mode == "static" else None,
        **({"smoothed_input_of": smoothed_input_of} if smoothed_input_of is not None else {}),
    }
    return LayerReport.of(name, module, "quantized", details, weight=w_q, kind=type(module).__name__.removeprefix("Quant"))


# ----------------------------------------------------------------------------- float vs quantized outputs


def comparable_output(output: Any) -> tuple[torch.Tensor, str] | None:
    """The tensor of a model output that the float/quantized comparison uses, and where it was found.

    In order: the output itself when it is a tensor; its ``logits`` (attribute or
    key: Hugging Face outputs, dicts); its ``last_hidden_state``; the first tensor
    among its items (tuple, list) or values (mapping). ``None`` when there is none.

    Example:
        >>> comparable_output({"last_hidden_state": torch.zeros(1, 2)})[1]
        'last_hidden_state'
        >>> comparable_output((None, torch.zeros(2)))[1], comparable_output(("text",))
        ('output[1]', None)
    """
    if isinstance(output, torch.Tensor):
        return output, "output"
    for key in ("logits", "last_hidden_state"):
        value = output.get(key) if isinstance(output, Mapping) else getattr(output, key, None)
        if isinstance(value, torch.Tensor):
            return value, key
    items: Iterable[tuple[Any, Any]] = ()
    if isinstance(output, Mapping):
        items = output.items()
    elif isinstance(output, (tuple, list)):
        items = enumerate(output)
    for key, value in items:
        if isinstance(value, torch.Tensor):
            return value, f"output[{key!r}]"
    return None


def output_agreement(model: nn.Module, work: nn.Module, batch: Any) -> dict[str, Any]:
    """SQNR (dB) and top-1 agreement of ``work``'s output against ``model``'s on ``batch`` (eval mode).

    The tensor compared is :func:`comparable_output`'s; when it is not the output
    itself or its logits, ``output_compared`` says which it was. When the outputs
    have no comparable floating-point tensor of one shape, the metrics are left
    out and ``output_note`` says why: this never raises.

    Example:
        >>> m = nn.Linear(4, 3)
        >>> output_agreement(m, m, torch.randn(2, 4))
        {'output_sqnr_db': inf, 'output_top1_agreement': 1.0}
    """
    sample = batch_inputs(batch)
    with torch.no_grad(), eval_mode(model), eval_mode(work):
        ref_out = call_model(model, sample)
        q_out = call_model(work, sample)
    ref, q = comparable_output(ref_out), comparable_output(q_out)
    if ref is None or q is None:
        kind = type(ref_out if ref is None else q_out).__name__
        return {"output_note": f"the model's output ({kind}) holds no tensor: output_sqnr_db and "
                               "output_top1_agreement left out"}
    (r, where), (y, _) = ref, q
    if r.shape != y.shape or not r.is_floating_point() or not y.is_floating_point():
        return {"output_note": f"the float and quantized {where} ({r.dtype} {tuple(r.shape)} vs {y.dtype} "
                               f"{tuple(y.shape)}) cannot be compared: output_sqnr_db and output_top1_agreement left out"}
    meta: dict[str, Any] = {} if where in _LOGITS_PLACES else {"output_compared": where}
    meta["output_sqnr_db"] = sqnr_db(r, y)
    meta["output_top1_agreement"] = float((r.argmax(-1) == y.argmax(-1)).float().mean())
    return meta


# ----------------------------------------------------------------------------- the technique


@dataclass
class QuantWork:
    """What :meth:`Quantize.apply` puts into the model.

    Attributes:
        model: the quantized, calibrated copy of the model.
        record: the provenance record (config, per-layer weight configs, smoothed layers).
        layers: the per-layer reports, measured on ``model``.
    """

    model: nn.Module
    record: dict[str, Any]
    layers: list[LayerReport]


class Quantize(Technique[QuantizeConfig, Plan]):
    """Post-training quantization (:func:`quantize_`): plan builds and calibrates the copy, apply transplants it."""

    name = "quantize"
    title = "quantize"
    config = QuantizeConfig
    verb = "quantize"

    def candidates(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """The float Linear/Conv layers (exact classes)."""
        return quantizable_layers(model)

    def select(self, model: nn.Module, cfg: QuantizeConfig, filter_fn: FilterFn | None) -> Selection:
        """:func:`quantizable_selection` with the config's ``targets`` and ``keep_first_last``."""
        return quantizable_selection(model, cfg.targets, filter_fn=filter_fn, keep_first_last=cfg.keep_first_last)

    def plan(self, model: nn.Module, cfg: QuantizeConfig, selection: Selection, inputs: Inputs) -> Plan:
        """Build, calibrate and measure the quantized copy; ``model`` is only read."""
        chosen = layer_configs(cfg, selection.chosen)
        refuse_if_empty(chosen, selection.skipped, "quantize")
        batches = calibration_batches(cfg, inputs.calibration)
        work = copy.deepcopy(model)
        wcfg_of = {n: c for n, _, c in chosen}
        meta: dict[str, Any] = {"mode": cfg.mode, "config": cfg.model_dump()}
        smoothed_by, smooth_meta = _smooth(work, cfg, list(wcfg_of), batches)
        meta.update(smooth_meta)
        meta.update(build_structure(work, cfg, wcfg_of))
        if cfg.mode == "static":
            meta.update(_calibrate(work, cfg, batches))
        layers = [
            layer_report(name, module, wcfg_of[name], cfg, smoothed_by.get(name))
            for name, module in work.named_modules()
            if name in wcfg_of
        ]
        if batches:
            meta.update(output_agreement(model, work, batches[0]))
        record = {
            "config": cfg.model_dump(),
            "layers": {n: c.model_dump() for n, c in wcfg_of.items()},
            **({"smoothed": list(smoothed_by)} if smoothed_by else {}),
        }
        return Plan(selection.skipped, meta, QuantWork(work, record, layers))

    def apply(self, model: nn.Module, plan: Plan) -> list[LayerReport]:
        """Record the quantization on the copy and transplant it into ``model``."""
        work: QuantWork = plan.work
        provenance.record(work.model, QUANT, work.record)
        transplant(model, work.model)
        return work.layers


#: the post-training quantization technique (:func:`quantize_` runs it)
QUANTIZE = Quantize()


def quantize_(
    model: nn.Module,
    config: QuantizeConfig | dict[str, Any] | None = None,
    *,
    filter_fn: FilterFn | None = None,
    calibration: Iterable[Any] | None = None,
    example_input: Any = None,
    **deprecated: Any,
) -> Report:
    """Quantize ``model`` in place (fake-quant simulation) and report every layer.

    BatchNorm is folded first (when the model can be traced), weights are
    quantized per the config, and in ``static`` mode activation quantization
    points are placed and calibrated on up to ``calibration.batches`` batches
    (with ``activation.smooth``, Linear layers reading a LayerNorm are smoothed
    on the same batches first: :mod:`torchslim.quant.smooth`).
    Export with :func:`torchslim.deploy.export_qdq` for real int8 execution
    in ONNX Runtime and store with :func:`torchslim.quant.packed.save_packed`.

    Args:
        model: the model (modified in place; eval-mode statistics are used; left
            bit-identical when the verb refuses or fails).
        config: a :class:`QuantizeConfig` or a mapping validated into one.
        filter_fn: optional ``(module, name) -> bool``; layers it rejects stay float.
        calibration: ``(inputs, targets)`` batches (or bare inputs) for ``static`` mode
            (earlier ``loader=``, deprecated).
        example_input: unused (accepted for the one verb signature).
        **deprecated: old keyword names (``loader=``), with a ``DeprecationWarning``.

    Returns:
        A :class:`Report`: per layer the bits, granularity, scale range and weight
        SQNR; ``meta`` has activation points, scale ranges and BatchNorm folds
        (``batchnorm_note`` says why nothing was folded when the model does not
        trace), and in ``static`` mode the float/quantized agreement on the first
        calibration batch (``output_sqnr_db``, ``output_top1_agreement``; the
        tensor compared is the output, its ``logits``, its ``last_hidden_state``
        or its first tensor, see :func:`comparable_output`; ``output_note`` says
        why they are left out when there is none).

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
    inputs = legacy_inputs("quantize_", Inputs(calibration, example_input), deprecated)
    return run(QUANTIZE, model, config, filter_fn=filter_fn, inputs=inputs)


# ----------------------------------------------------------------------------- records and rebuilding


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
