"""PTQ on real data (digits): accuracy bounds, report contents, BatchNorm folding, refusals."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from torchslim.errors import ConfigError, TransformRefusedError
from torchslim.measure import evaluate_accuracy
from torchslim.quant import quantize_
from torchslim.quant.model import QuantConv2d, activation_quantizers


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_float_model_is_good(float_accuracy: float) -> None:
    assert float_accuracy > 0.95


def test_static_w8a8_within_half_a_point(trained, digits, float_accuracy) -> None:
    report = quantize_(trained, {"mode": "static"}, calibration=digits.loader("train", 128))
    acc = evaluate_accuracy(trained, digits.loader("test", 512))
    assert acc >= float_accuracy - 0.005
    assert isinstance(trained.conv1, QuantConv2d)
    assert [d["layer"] for d in report.meta["batchnorm_folded"]] == ["conv1", "conv2"]
    assert isinstance(trained.bn1, nn.Identity)
    names = [layer.name for layer in report.layers]
    assert names == ["conv1", "conv2", "conv3", "fc"]
    for layer in report.layers:
        d = layer.details
        assert d["bits"] == 8 and d["granularity"] == "channel"
        assert 0 < d["scale_min"] <= d["scale_max"]
        assert d["weight_sqnr_db"] > 35
    # graph placement: the residual add and every ReLU output are quantization points
    assert report.meta["activation_placement"]["method"] == "graph"
    # conv2 feeds the residual add (its output is quantized); the add's only consumer is a ReLU,
    # so the add is quantized after that ReLU (relu_1): the pattern ONNX Runtime fuses
    assert {"conv2", "relu_1", "input_0"} <= set(report.meta["activation_placement"]["points"])
    assert report.meta["output_top1_agreement"] > 0.97
    assert len(activation_quantizers(trained)) >= 5


def test_weight_only_4bit_group(trained, digits, float_accuracy) -> None:
    report = quantize_(
        trained,
        {"mode": "weight_only", "weight": {"bits": 4, "granularity": "group", "group_size": 16}, "targets": {"re:conv[23]": {}}},
        calibration=None,
    )
    assert [layer.name for layer in report.layers] == ["conv2", "conv3"]
    assert {s.name for s in report.skipped} == {"conv1", "fc"}
    assert evaluate_accuracy(trained, digits.loader("test", 512)) >= float_accuracy - 0.03


def test_lower_bits_lose_more(trained, digits) -> None:
    accs = {}
    for bits in (8, 2):
        m = copy.deepcopy(trained)
        quantize_(m, {"mode": "weight_only", "weight": {"bits": bits}})
        accs[bits] = evaluate_accuracy(m, digits.loader("test", 512))
    assert accs[2] < accs[8] - 0.05


def test_targets_override_bits_and_skip(trained, digits) -> None:
    report = quantize_(trained, {"targets": {"conv1": None, "fc": {"bits": 4}, "re:conv.*": {}}}, calibration=digits.loader("train", 128))
    bits = {layer.name: layer.details["bits"] for layer in report.layers}
    assert bits == {"conv2": 8, "conv3": 8, "fc": 4}
    assert report.skipped[0].name == "conv1" and "null" in report.skipped[0].reason


@pytest.mark.parametrize(
    ("config", "calibration", "error", "match"),
    [
        ({"weight": {"bits": 9}}, "loader", ConfigError, r"weight\.bits"),
        ({"weight": {"granularity": "group", "group_size": 5}}, "loader", ConfigError, r"weight\.group_size.*does not divide"),
        ({"mode": "static"}, "empty", TransformRefusedError, "calibration loader is empty"),
        ({"mode": "static"}, None, TransformRefusedError, "needs calibration data"),
        ({"targets": {"conv9": {}}}, "loader", ConfigError, r"targets\.conv9: matches no layer"),
    ],
)
def test_refusals_leave_model_bit_identical(trained, digits, config, calibration, error, match) -> None:
    before = _state(trained)
    x = digits.test.x[:32]
    out_before = trained(x).detach()
    loader = {"loader": digits.loader("train", 128), "empty": [], None: None}[calibration]
    with pytest.raises(error, match=match):
        quantize_(trained, config, calibration=loader)
    after = trained.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert type(trained.conv1) is nn.Conv2d and isinstance(trained.bn1, nn.BatchNorm2d)
    assert torch.equal(trained(x).detach(), out_before)


def test_already_quantized_is_refused(trained, digits) -> None:
    quantize_(trained, {"mode": "weight_only"})
    before = _state(trained)
    with pytest.raises(TransformRefusedError, match="already quantized"):
        quantize_(trained, {"mode": "weight_only"})
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items())


def test_verb_is_exported_and_report_renders(trained, digits) -> None:
    import torchslim as ts

    report = ts.quantize_(trained, {"mode": "weight_only", "weight": {"bits": 6}})
    md = report.to_markdown()
    assert "conv1" in md and "quantized" in md
    assert ts.Report.from_dict(report.to_dict()) == report
