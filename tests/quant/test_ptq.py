"""PTQ on real data (digits): accuracy bounds, report contents, BatchNorm folding, refusals, the technique object."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from torchslim.errors import ConfigError, TransformRefusedError
from torchslim.measure import evaluate_accuracy
from torchslim.quant import QUANTIZE, QuantizeConfig, quantize_
from torchslim.quant.model import QuantConv2d, activation_quantizers
from torchslim.quant.ptq import quant_info
from torchslim.technique import Inputs


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


def _batches(digits, n: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(digits.train.x[i : i + 128], digits.train.y[i : i + 128]) for i in range(0, 128 * n, 128)]


def test_deprecated_loader_keyword_warns_and_quantizes_the_same(trained, digits) -> None:
    other = copy.deepcopy(trained)
    with pytest.warns(DeprecationWarning, match=r"call quantize_\(\.\.\., calibration=\.\.\.\)"):
        old = quantize_(trained, {"mode": "static"}, loader=_batches(digits))
    new = quantize_(other, {"mode": "static"}, calibration=_batches(digits))
    assert old == new
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in trained.state_dict().items())


def test_plan_only_reads_and_apply_transplants(trained, digits) -> None:
    before = _state(trained)
    cfg = QuantizeConfig.parse({"mode": "static", "weight": {"bits": 4}})
    plan = QUANTIZE.plan(trained, cfg, QUANTIZE.select(trained, cfg, None), Inputs(calibration=_batches(digits)))
    assert [layer.name for layer in plan.work.layers] == ["conv1", "conv2", "conv3", "fc"]
    assert plan.meta["calibration_batches"] == 2 and "output_sqnr_db" in plan.meta
    assert type(trained.conv1) is nn.Conv2d and isinstance(trained.bn1, nn.BatchNorm2d) and quant_info(trained) is None
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items())
    module = trained.conv1
    layers = QUANTIZE.apply(trained, plan)
    assert layers is plan.work.layers and trained.conv1 is not module  # the quantized copy's modules moved in
    assert isinstance(trained.conv1, QuantConv2d) and quant_info(trained)["layers"]["fc"]["bits"] == 4


class _Outputs(nn.Module):
    """Two Linear layers whose output is wrapped the way ``kind`` says (not a logits tensor)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)

    def forward(self, x: torch.Tensor):
        h = self.fc2(torch.relu(self.fc1(x)))
        if self.kind == "hidden":
            return {"last_hidden_state": h, "pooled": h.mean(0)}
        if self.kind == "tuple":
            return (None, h)
        if self.kind == "dict":
            return {"pooled": h.mean(0), "h": h}
        if self.kind == "model_output":
            from transformers.modeling_outputs import BaseModelOutput

            return BaseModelOutput(last_hidden_state=h)
        if self.kind == "integer":
            return h.argmax(-1)
        return {"size": 3}


@pytest.mark.parametrize(
    ("kind", "compared"),
    [("hidden", "last_hidden_state"), ("tuple", "output[1]"), ("dict", "output['pooled']"),
     ("model_output", "last_hidden_state"), ("integer", None), ("no_tensor", None)],
)
def test_output_metrics_never_fail_the_verb(kind: str, compared: str | None) -> None:
    if kind == "model_output":
        pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = _Outputs(kind)
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(1))
    report = quantize_(model, {"mode": "static"}, calibration=[x])
    assert [layer.name for layer in report.layers] == ["fc1", "fc2"] and isinstance(model.fc1, nn.Linear)
    if compared is None:
        assert "output_sqnr_db" not in report.meta and "output_top1_agreement" not in report.meta
        assert "left out" in report.meta["output_note"]
    else:
        assert report.meta["output_compared"] == compared and report.meta["output_sqnr_db"] > 20
        assert 0.0 <= report.meta["output_top1_agreement"] <= 1.0 and "output_note" not in report.meta


def test_logits_outputs_keep_the_report_as_it_was(trained, digits) -> None:
    report = quantize_(trained, {"mode": "static"}, calibration=_batches(digits))
    assert "output_compared" not in report.meta and "output_note" not in report.meta


def test_an_untraceable_model_falls_back_and_the_report_says_why(digits, untraceable) -> None:
    torch.manual_seed(0)
    model = untraceable().eval()
    report = quantize_(model, {"mode": "static"}, calibration=_batches(digits))
    placement = report.meta["activation_placement"]
    assert placement["method"] == "layer_inputs" and placement["points"] == ["conv", "fc"]
    assert "activation placement: torch.fx cannot trace Untraceable" in placement["note"]
    assert "control flow" in placement["note"] and "each quantized layer quantizes its own input" in placement["note"]
    assert "cannot trace" in report.meta["batchnorm_note"] and report.meta["batchnorm_folded"] == []
    assert isinstance(model.bn, nn.BatchNorm2d) and model.conv.input_fq is not None


def test_a_quantized_graph_refuses_an_argument_its_calibration_did_not_give_and_a_copy_runs_its_own_graph():
    """The graph replacing forward was traced with the calibration batches' arguments only: a mask given later
    would be dropped into **kwargs (silently) or bound to the traced default. And the replaced forward must follow
    a deep copy: the copy's graph, not the original's."""
    import copy

    from torchslim.errors import TorchslimError

    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x, mask=None, **kwargs):
            h = torch.relu(self.a(x))
            return self.b(h if mask is None else h * mask)

    torch.manual_seed(0)
    model = Masked().eval()
    quantize_(model, {"mode": "static", "guard": {"enabled": False}}, calibration=[torch.randn(16, 4) for _ in range(2)])
    x = torch.randn(3, 4)
    assert torch.equal(model(x), model(x, mask=None))
    with pytest.raises(TorchslimError, match="mask would be ignored"):
        model(x, mask=torch.zeros(3, 8))
    clone = copy.deepcopy(model)
    with torch.no_grad():
        clone.a.weight.zero_()
    assert not torch.equal(clone(x), model(x))
