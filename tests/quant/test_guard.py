"""The accuracy guard of static PTQ: held-back batches, per-layer SQNR, the warning and the measured float fallback."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from torchslim.errors import ConfigError
from torchslim.quant import QuantizeConfig, quantize_
from torchslim.quant.correct import uncorrected
from torchslim.quant.fake import FakeQuantize
from torchslim.quant.guard import AccuracyWarning, kept_in_float, split_holdout
from torchslim.quant.model import QuantLinear
from torchslim.zoo import create_model


def _outlier_model() -> tuple[nn.Module, list[torch.Tensor]]:
    """Input channel 0 is a thousand times the others (read with tiny weights): one per-tensor input scale
    leaves the other channels a few levels, and the first layer needs to stay float."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    with torch.no_grad():
        model[0].weight[:, 0] /= 1000.0
    g = torch.Generator().manual_seed(1)
    scale = torch.tensor([1000.0] + [1.0] * 15)
    return model, [torch.randn(64, 16, generator=g) * scale for _ in range(8)]


def _healthy_model() -> tuple[nn.Module, list[torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    with torch.no_grad():
        model[2].weight.mul_(8.0)  # clear winners: top-1 agreement measures the quantization, not ties
    g = torch.Generator().manual_seed(1)
    return model, [torch.randn(64, 16, generator=g) for _ in range(8)]


def test_a_model_that_needs_it_warns_and_the_fallback_restores_the_floor() -> None:
    model, batches = _outlier_model()
    float_model = copy.deepcopy(model)
    with pytest.warns(AccuracyWarning, match=r"most sensitive layers: 0 .*fallback auto kept 1 layer\(s\) in float \(0\)"):
        report = quantize_(model, {"guard": {"fallback": "auto"}}, calibration=batches)
    guard = report.meta["guard"]
    assert guard["measured_on"] == "2 held-back batch(es)" and report.meta["calibration_batches"] == 6
    assert not guard["passed"] and guard["before"]["output_sqnr_db"] < 15
    assert list(guard["sensitive_layers"])[0] == "0"
    assert guard["fallback"] == {"float_layers": ["0"], "after": guard["fallback"]["after"], "passed": True}
    assert guard["fallback"]["after"]["output_sqnr_db"] >= 15 and guard["fallback"]["after"]["output_top1_agreement"] >= 0.9
    assert report.meta["output_sqnr_db"] == guard["fallback"]["after"]["output_sqnr_db"]  # the figures after
    # the layer kept in float is skipped with the reason; the others are quantized, with their output SQNR
    assert type(model[0]) is nn.Linear and isinstance(model[2], QuantLinear)
    skipped = {s.name: s.reason for s in report.skipped}
    assert skipped["0"].startswith("kept in float by the accuracy guard (guard.fallback auto)")
    assert [layer.name for layer in report.layers] == ["2", "4"]
    assert all(layer.details["output_sqnr_db"] > 15 for layer in report.layers)
    # measured, not guessed: the held-back batches agree with the float model as the report says
    held = batches[6:]
    with torch.no_grad():
        ref, out = torch.cat([float_model(x) for x in held]), torch.cat([model(x) for x in held])
    assert float((ref.argmax(1) == out.argmax(1)).float().mean()) == guard["fallback"]["after"]["output_top1_agreement"]


def test_without_fallback_it_only_warns_and_quantizes_everything() -> None:
    model, batches = _outlier_model()
    with pytest.warns(AccuracyWarning, match="set guard.fallback: auto"):
        report = quantize_(model, {}, calibration=batches)
    assert "fallback" not in report.meta["guard"] and [layer.name for layer in report.layers] == ["0", "2", "4"]
    assert report.meta["output_sqnr_db"] < 15


def test_a_healthy_model_passes_without_warning_or_fallback() -> None:
    model, batches = _healthy_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error", AccuracyWarning)
        report = quantize_(model, {"guard": {"fallback": "auto"}}, calibration=batches)
    guard = report.meta["guard"]
    assert guard["passed"] and "fallback" not in guard and "sensitive_layers" not in guard
    assert guard["before"]["output_sqnr_db"] > 30 and guard["before"]["output_top1_agreement"] >= 0.9
    assert [layer.name for layer in report.layers] == ["0", "2"]
    assert all(layer.details["output_sqnr_db"] > 30 for layer in report.layers)


def test_the_floor_and_holdout_are_configurable() -> None:
    model, batches = _healthy_model()
    with pytest.warns(AccuracyWarning):
        report = quantize_(copy.deepcopy(model), {"guard": {"min_sqnr_db": 200.0, "holdout": 0.5}}, calibration=batches)
    assert report.meta["guard"]["measured_on"] == "4 held-back batch(es)" and report.meta["calibration_batches"] == 4
    off = quantize_(copy.deepcopy(model), {"guard": {"enabled": False}}, calibration=batches)
    assert "guard" not in off.meta and off.meta["calibration_batches"] == 8
    assert "output_sqnr_db" in off.meta  # measured on the first calibration batch, as before the guard


def test_a_single_batch_is_measured_on_and_the_report_says_so() -> None:
    model, batches = _healthy_model()
    report = quantize_(model, {}, calibration=batches[:1])
    assert report.meta["guard"]["measured_on"] == "the first calibration batch (none held back)"
    assert split_holdout([1, 2, 3], QuantizeConfig().guard) == ([1, 2, 3], [])


@pytest.mark.parametrize(
    ("guard", "field"),
    [({"min_agreement": 1.5}, "guard.min_agreement"), ({"holdout": 1.0}, "guard.holdout"),
     ({"fallback": "always"}, "guard.fallback"), ({"floor": 3}, "guard.floor"), ({"version": 7}, "guard.version")],
)
def test_guard_config_errors_name_the_field(guard: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        QuantizeConfig.parse({"guard": guard})


def test_every_layer_kept_in_float_is_the_float_model_despite_bias_correction() -> None:
    """Bias correction shifts each quantized layer's bias to make up for its quantization error; a layer kept in
    float must run with its own bias (else "all in float" is not the float model), nested blocks included."""
    torch.manual_seed(0)
    base = create_model("resnet_cifar", depth=8, in_channels=3).eval()
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(8, 3, 16, 16, generator=g) + 1.0 for _ in range(3)]  # a large mean: a real bias shift
    model = copy.deepcopy(base)
    report = quantize_(model, {"mode": "static", "guard": {"enabled": False}}, calibration=batches)
    assert report.meta["bias_correction"]["max_shift"] > 1e-3
    state = {k: v.clone() for k, v in model.state_dict().items()}
    layers = [n for n, m in model.named_modules() if hasattr(m, "weight_fq")]
    points = [n for n, m in model.named_modules() if n.startswith("quant_act.") and isinstance(m, FakeQuantize)]
    x = batches[0]
    with torch.no_grad():
        ref = base(x)
        with kept_in_float(model, layers + points):
            torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-4)
        modules = dict(model.named_modules())
        with uncorrected([modules[n] for n in layers]), kept_in_float(model, layers + points):  # nested: once
            torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-4)
        assert (model(x) - ref).abs().max() > 1e-3  # quantized again after the blocks
    for k, v in model.state_dict().items():  # the corrected biases are back, bit for bit
        assert torch.equal(v, state[k]), k


def test_the_sensitivity_sweep_with_cached_weights_measures_what_it_measured_without(monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard's one-layer-in-float sweep runs the model once per layer; the weights' fake-quantized copies are
    kept between those forwards (cached_weights). The figures must be the ones the uncached sweep gives."""
    import contextlib

    import torchslim.quant.guard as guard_module

    results = []
    for cached in (True, False):
        if not cached:
            monkeypatch.setattr(guard_module, "cached_weights", lambda _m: contextlib.nullcontext())
        model, batches = _outlier_model()
        with pytest.warns(AccuracyWarning):
            report = quantize_(model, {"guard": {"fallback": "auto"}}, calibration=batches)
        results.append((report.meta["guard"]["sensitive_layers"], report.meta["guard"]["fallback"]))
    assert results[0] == results[1]
