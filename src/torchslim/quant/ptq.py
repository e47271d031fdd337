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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from torchslim.errors import ConfigError, ConfigIssue, TorchslimError, TransformRefusedError
from torchslim.fold.batchnorm import find_conv_bn_pairs, fold_batchnorms_
from torchslim.graph import provenance
from torchslim.graph.trace import input_names
from torchslim.graph.transaction import transplant
from torchslim.measure.macs import batch_inputs
from torchslim.quant.affine import check_spec_fits, dequantize, quantize, sqnr_db
from torchslim.quant.attention import QuantMultiheadAttention, keep_off_fast_path_
from torchslim.quant.config import LayerQuantConfig, QuantizeConfig, WeightQuantConfig
from torchslim.quant.correct import correct_biases
from torchslim.quant.coverage import float_modules
from torchslim.quant.fake import FakeQuantize
from torchslim.quant.guard import GuardOutcome, run_guard, split_holdout
from torchslim.quant.layers import (
    OTHER_QUANTIZABLE,
    QUANT_CLASS,
    QUANT_LAYERS,
    QUANT_MODULES,
    float_weights,
    quantizable_layers,  # noqa: F401 - importable from here as before
    quantizable_modules,
    swap_layer,  # noqa: F401 - importable from here as before
    swap_module,
    weights_of,
)
from torchslim.quant.metrics import LOGITS_PLACES, comparable_output, output_agreement  # noqa: F401 - as before
from torchslim.quant.model import (
    ACT_DICT,
    activation_quantizers,
    calibrate,
    place_activation_quant,
    preserve_kernel_sums_,
    scale_range,
)
from torchslim.quant.smooth import attach_input_scales, smooth_layernorm_inputs_
from torchslim.quant.weight_only import QuantEmbedding, QuantGRU, QuantLSTM
from torchslim.report import LayerReport, Report, SkippedLayer
from torchslim.targets import Match, select_layers
from torchslim.technique import FilterFn, Inputs, Plan, Selection, Technique, legacy_inputs, refuse_if_empty, run

#: the provenance kind of quantization records
QUANT = "quant"


# ----------------------------------------------------------------------------- selection and per-layer configs


def quantizable_selection(
    model: nn.Module,
    targets: Mapping[str, LayerQuantConfig | None] | None = None,
    *,
    filter_fn: FilterFn | None = None,
    keep_first_last: bool = False,
) -> Selection:
    """The float layers of ``model`` chosen by the targets grammar, and the skipped ones.

    The candidates are :func:`~torchslim.quant.layers.quantizable_modules`: Linear/Conv,
    ``MultiheadAttention``, and (weight-only) ``Embedding``, ``GRU`` and ``LSTM``.

    Raises:
        TransformRefusedError: the model is already quantized or has no quantizable layer.

    Example:
        >>> m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> sel = quantizable_selection(m, keep_first_last=True)
        >>> [n for n, _, _ in sel.chosen], [(s.name, s.reason) for s in sel.skipped][0]
        ([], ('0', 'first layer kept (keep_first_last; kept in float)'))
    """
    if any(isinstance(m, QUANT_MODULES) for m in model.modules()):
        raise TransformRefusedError("the model is already quantized (it has quantized layers)")
    layers = quantizable_modules(model)
    if not layers:
        raise TransformRefusedError(
            "the model has no quantizable layer (Linear, Conv, MultiheadAttention, Embedding, GRU or LSTM)")
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
            for pname, weight in float_weights(module):
                check_spec_fits(wcfg.spec(), tuple(weight.shape), name if pname == "weight" else f"{name}.{pname}")
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


def build_structure(work: nn.Module, config: QuantizeConfig, wcfg_of: dict[str, WeightQuantConfig],
                    inputs: list[str] | None = None) -> dict[str, Any]:
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
    for name, module in list(work.named_modules()):
        if name in wcfg_of:
            swap_module(module, wcfg_of[name], learn_scale=config.learn_scale)
            if wcfg_of[name].rounding == "kernel_sum":
                preserve_kernel_sums_(module)
    slow = keep_off_fast_path_(work)
    if slow:
        meta["fused_path_off"] = slow  # quantized layers torch's fused encoder path would bypass
    if config.mode == "static":
        placement = place_activation_quant(work, config.activation, learn_scale=config.learn_scale, inputs=inputs)
        meta["activation_placement"] = {
            "method": placement.method,
            "points": placement.points,
            "shared_inputs": placement.shared,
        }
        if placement.note:
            meta["activation_placement"]["note"] = placement.note
        if config.activation.float_points:
            meta["activation_placement"]["float_points"] = list(config.activation.float_points)
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
                 smoothed_input_of: str | None = None, output_sqnr: float | None = None) -> LayerReport:
    """The report of one quantized layer: bits, granularity, scale range, weight SQNR and relative error.

    Example:
        >>> fc = nn.Linear(8, 4); swap_module(fc, WeightQuantConfig(bits=4))
        >>> r = layer_report("fc", fc, WeightQuantConfig(bits=4), QuantizeConfig(mode="weight_only"))
        >>> r.kind, r.details["bits"], r.details["act_bits"], r.details["weight_sqnr_db"] > 10
        ('Linear', 4, None, True)
    """
    pairs = [(pname, w.detach(), fq.qparams()) for pname, w, fq in weights_of(module)]  # float weights after folding
    w_ref = torch.cat([w.flatten() for _, w, _ in pairs]) if len(pairs) > 1 else pairs[0][1]
    w_q = [dequantize(quantize(w, qp), qp) for _, w, qp in pairs]
    w_q_all = torch.cat([w.flatten() for w in w_q]) if len(w_q) > 1 else w_q[0]
    ranges = [scale_range(qp) for _, _, qp in pairs]
    details = {
        "bits": wcfg.bits,
        "granularity": wcfg.granularity,
        **({"group_size": wcfg.group_size} if wcfg.granularity == "group" else {}),
        "symmetric": wcfg.symmetric,
        "observer": wcfg.observer,
        "scale_min": min(lo for lo, _ in ranges),
        "scale_max": max(hi for _, hi in ranges),
        "weight_sqnr_db": sqnr_db(w_ref, w_q_all),
        "weight_rel_error": float(
            torch.linalg.vector_norm(w_q_all - w_ref) / torch.linalg.vector_norm(w_ref).clamp_min(1e-12)
        ),
        **({"weights": [p for p, _, _ in pairs]} if len(pairs) > 1 else {}),
        "act_bits": config.activation.bits if config.mode == "static" and not weight_only_io(module) else None,
        **({"note": _NOTES[type(module)]} if type(module) in _NOTES else {}),
        **({"smoothed_input_of": smoothed_input_of} if smoothed_input_of is not None else {}),
        **({"output_sqnr_db": output_sqnr} if output_sqnr is not None else {}),
    }
    return LayerReport.of(name, module, "quantized", details, weight=w_q_all, kind=type(module).__name__.removeprefix("Quant"))


#: what a quantized layer of these classes leaves in float, in its report
_NOTES: dict[type[nn.Module], str] = {
    QuantMultiheadAttention: "input and output projection weights int8; in static mode its query input (and key "
                             "and value when they are the query tensor) quantized; attention scores, softmax and "
                             "the context read by the output projection in float",
    QuantEmbedding: "weight-only: one scale per row (token vector); ids in, float vectors out",
    QuantGRU: "weight-only: input and hidden weight matrices, one scale per gate row; inputs, states and biases float",
    QuantLSTM: "weight-only: input and hidden weight matrices, one scale per gate row; inputs, states and biases float",
}


def weight_only_io(module: nn.Module) -> bool:
    """Whether a quantized module takes no activation quantization (embeddings, recurrent layers).

    Example:
        >>> weight_only_io(nn.Linear(2, 2))
        False
    """
    return isinstance(module, (QuantEmbedding, QuantGRU, QuantLSTM))


# ----------------------------------------------------------------------------- the technique


@dataclass
class BuiltModel:
    """A quantized, calibrated copy of a model, with the report facts of its building.

    Attributes:
        model: the copy.
        meta: the report's ``meta`` so far (config, folds, placement, calibration, bias correction).
        smoothed_by: quantized layer -> the LayerNorm whose output SmoothQuant rescaled for it.
        config: the config it was built with (the guard's fallback adds ``activation.float_points``).
    """

    model: nn.Module
    meta: dict[str, Any]
    smoothed_by: dict[str, str]
    config: QuantizeConfig


def build_calibrated(model: nn.Module, config: QuantizeConfig, wcfg_of: dict[str, WeightQuantConfig],
                     batches: Sequence[Any]) -> BuiltModel:
    """A quantized copy of ``model`` (layers ``wcfg_of``): smoothed, folded, swapped, calibrated, bias-corrected.

    Example:
        >>> m = nn.Sequential(nn.Linear(4, 2))
        >>> built = build_calibrated(m, QuantizeConfig(), {"0": WeightQuantConfig()}, [torch.randn(8, 4)])
        >>> type(built.model[0]).__name__, built.meta["calibration_batches"], built.meta["bias_correction"]["layers"]
        ('QuantLinear', 1, 1)
    """
    work = copy.deepcopy(model)
    meta: dict[str, Any] = {"mode": config.mode, "config": config.model_dump()}
    smoothed_by, smooth_meta = _smooth(work, config, list(wcfg_of), list(batches))
    meta.update(smooth_meta)
    inputs = input_names(model, batch_inputs(batches[0], model)) if batches else None
    meta.update(build_structure(work, config, wcfg_of, inputs))
    if inputs is not None:
        meta["inputs"] = inputs  # the forward's other arguments are traced at their defaults
    if config.mode == "static":
        meta.update(_calibrate(work, config, list(batches)))
        if config.bias_correction:
            layers = [(n, m) for n, m in work.named_modules() if n in wcfg_of and isinstance(m, QUANT_LAYERS)]
            meta["bias_correction"] = correct_biases(work, layers, batches, config.activation.mask_key)
    return BuiltModel(work, meta, smoothed_by, config)


def _guard(model: nn.Module, config: QuantizeConfig, built: BuiltModel, wcfg_of: dict[str, WeightQuantConfig],
           calib: list[Any], held: list[Any]) -> tuple[GuardOutcome, BuiltModel]:
    """The accuracy guard on ``built`` (:func:`~torchslim.quant.guard.run_guard`) and the model it kept."""
    reference = copy.deepcopy(model)
    if config.fold_batchnorm:
        fold_batchnorm(reference)
    rebuilt: list[BuiltModel] = []

    def rebuild(kept_float: list[str]) -> nn.Module:
        points = [n.removeprefix(ACT_DICT + ".") for n in kept_float if n.startswith(ACT_DICT + ".")]
        act = config.activation.model_copy(update={"float_points": [*config.activation.float_points, *points]})
        wcfg = {n: c for n, c in wcfg_of.items() if n not in kept_float}
        rebuilt.append(build_calibrated(model, config.model_copy(update={"activation": act}), wcfg, calib))
        return rebuilt[-1].model

    outcome = run_guard(model, built.model, config, list(wcfg_of), held or calib[:1], reference, rebuild,
                        held_back=bool(held))
    return outcome, next((c for c in rebuilt if c.model is outcome.model), built)


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
    handles = (*QUANT_CLASS, *OTHER_QUANTIZABLE)

    def candidates(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """The float layers :func:`~torchslim.quant.layers.quantizable_modules` offers (exact classes)."""
        return quantizable_modules(model)

    def select(self, model: nn.Module, cfg: QuantizeConfig, filter_fn: FilterFn | None) -> Selection:
        """:func:`quantizable_selection` with the config's ``targets`` and ``keep_first_last``."""
        return quantizable_selection(model, cfg.targets, filter_fn=filter_fn, keep_first_last=cfg.keep_first_last)

    def plan(self, model: nn.Module, cfg: QuantizeConfig, selection: Selection, inputs: Inputs) -> Plan:
        """Build, calibrate and measure the quantized copy (the accuracy guard included); ``model`` is only read."""
        chosen = layer_configs(cfg, selection.chosen)
        refuse_if_empty(chosen, selection.skipped, "quantize")
        batches = calibration_batches(cfg, inputs.calibration)
        calib, held = split_holdout(batches, cfg.guard)
        wcfg_of = {n: c for n, _, c in chosen}
        built = build_calibrated(model, cfg, wcfg_of, calib)
        skipped = list(selection.skipped)
        layer_sqnr: dict[str, float] = {}
        if cfg.mode == "static" and cfg.guard.enabled:
            outcome, built = _guard(model, cfg, built, wcfg_of, calib, held)
            cfg = built.config
            wcfg_of = {n: c for n, c in wcfg_of.items() if n not in outcome.float_layers}
            skipped += [SkippedLayer(n, f"kept in float by the accuracy guard (guard.fallback auto): output SQNR "
                                        f"{db:.1f} dB with it alone in float") for n, db in outcome.float_layers.items()
                        if not n.startswith(ACT_DICT + ".")]
            built.meta.update(outcome.output, guard=outcome.meta)
            layer_sqnr = outcome.layer_sqnr
        elif batches:
            built.meta.update(output_agreement(model, built.model, batches[0]))
        layers = [
            layer_report(name, module, wcfg_of[name], cfg, built.smoothed_by.get(name), layer_sqnr.get(name))
            for name, module in built.model.named_modules()
            if name in wcfg_of
        ]
        skipped += float_modules(built.model, [*wcfg_of, *(s.name for s in skipped)])  # no silent skip
        record = {
            "config": cfg.model_dump(),
            "layers": {n: c.model_dump() for n, c in wcfg_of.items()},
            **({"smoothed": list(built.smoothed_by)} if built.smoothed_by else {}),
            **({"inputs": built.meta["inputs"]} if "inputs" in built.meta else {}),
        }
        return Plan(skipped, built.meta, QuantWork(built.model, record, layers))

    def apply(self, model: nn.Module, plan: Plan) -> list[LayerReport]:
        """Record the quantization on the copy and transplant it into ``model``."""
        work: QuantWork = plan.work
        provenance.record(work.model, QUANT, work.record)
        transplant(model, work.model)
        return work.layers

    def skip_reason(self, name: str, module: nn.Module, params: list[str]) -> str | None:
        """A quantizer's learned step size belongs to the quantization (no entry); otherwise the generic reason."""
        return None if isinstance(module, FakeQuantize) else super().skip_reason(name, module, params)


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
        trace), and in ``static`` mode the float/quantized agreement on the
        calibration batches held back by the accuracy guard (``output_sqnr_db``,
        ``output_top1_agreement``; the tensor compared is the output, its
        ``logits``, its ``last_hidden_state`` or its first tensor, see
        :func:`~torchslim.quant.metrics.comparable_output`; ``output_note`` says
        why they are left out when there is none), the guard's findings
        (``meta["guard"]``, :mod:`torchslim.quant.guard`) and each layer's
        ``output_sqnr_db`` against the float model's same layer. Static mode also
        corrects biases (``bias_correction``, :mod:`torchslim.quant.correct`).

    Warns:
        AccuracyWarning: the quantized model measures below the guard's floor
            (it names the most sensitive layers, and what ``guard.fallback: auto`` did).

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
    build_structure(model, config, wcfg_of, info.get("inputs"))
    own = model.state_dict()
    modules = dict(model.named_modules())
    for key, value in state.items():
        mod_name, _, attr = key.rpartition(".")
        module = modules.get(mod_name)
        if attr == "bias" and key not in own and isinstance(module, QUANT_LAYERS) and module.bias is None:
            module.bias = nn.Parameter(torch.empty_like(value))  # added by bias correction
            continue
        if not isinstance(module, FakeQuantize):
            continue
        if attr == "log_scale" and key not in own:
            module.log_scale = nn.Parameter(torch.empty_like(value))
        elif key in own and own[key].shape != value.shape and attr in module._buffers:
            module._buffers[attr] = torch.empty_like(value)
    for module in model.modules():
        if isinstance(module, FakeQuantize):
            module.observing = False
