"""SmoothQuant: Linear layers reading a LayerNorm get per-channel input scales migrated into their weights."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from torchslim.deploy import OrtModel, export_qdq
from torchslim.errors import ConfigError, TorchslimError
from torchslim.quant import load_packed, quantize_, save_packed
from torchslim.quant.model import set_enabled
from torchslim.quant.smooth import _smoothing_scale, smooth_layernorm_inputs_


class _Block(nn.Module):
    """LayerNorm -> (q, k) gated, residual, LayerNorm -> fc1 -> ReLU -> fc2, with outlier LayerNorm channels."""

    def __init__(self, traceable: bool = True) -> None:
        super().__init__()
        self.traceable = traceable
        self.ln1, self.ln2 = nn.LayerNorm(16), nn.LayerNorm(16)
        self.q, self.k = nn.Linear(16, 16), nn.Linear(16, 16)
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 4)
        with torch.no_grad():
            self.ln1.weight[3] = 30.0  # the outlier channels transformers' LayerNorms are known for
            self.ln2.weight[5] = 20.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.traceable and bool(x.abs().sum() < 0):  # data-dependent branch: torch.fx cannot trace it
            raise AssertionError
        h = self.ln1(x)
        h2 = self.ln2(self.q(h) * torch.sigmoid(self.k(h)) + h)
        return self.fc2(torch.relu(self.fc1(h2)))


def _data(n: int = 256) -> torch.Tensor:
    return torch.randn(n, 16, generator=torch.Generator().manual_seed(1))


def _calib(x: torch.Tensor) -> list[tuple[torch.Tensor, None]]:
    return [(x[i : i + 32], None) for i in range(0, 128, 32)]


def _quantized(smooth: float | None, traceable: bool = True, observer: str = "minmax",
               bias_correction: bool = True) -> tuple[nn.Module, nn.Module, object]:
    torch.manual_seed(0)
    ref = _Block(traceable).eval()
    model = copy.deepcopy(ref)
    act = {"observer": observer, **({"smooth": smooth} if smooth is not None else {})}
    config = {"mode": "static", "activation": act, "bias_correction": bias_correction}
    report = quantize_(model, config, calibration=_calib(_data()))
    return ref, model, report


def test_smoothing_scale_formula() -> None:
    s = _smoothing_scale(torch.tensor([16.0, 4.0, 0.0]), torch.tensor([4.0, 1.0, 2.0]), 0.5)
    assert torch.allclose(s, torch.tensor([2.0, 2.0, 1.0]))  # sqrt(16)/sqrt(4), sqrt(4)/sqrt(1), dead channel 1
    assert torch.allclose(_smoothing_scale(torch.tensor([8.0]), torch.tensor([3.0]), 1.0), torch.tensor([8.0]))


@pytest.mark.parametrize("traceable", [True, False], ids=["graph", "layer-inputs"])
def test_smoothing_finds_layernorm_readers_and_keeps_the_float_function(traceable) -> None:
    ref, model, report = _quantized(0.5, traceable, bias_correction=False)  # bias correction moves the float biases
    method = report.meta["activation_placement"]["method"]
    assert method == ("graph" if traceable else "layer_inputs")
    groups = {g["layernorm"]: g["layers"] for g in report.meta["smoothing"]["groups"]}
    assert groups == {"ln1": ["k", "q"], "ln2": ["fc1"]}  # fc2 reads a ReLU: left alone
    assert torch.equal(model.q.input_smooth.inv_scale, model.k.input_smooth.inv_scale)  # one vector per LayerNorm
    assert getattr(model.fc2, "input_smooth", None) is None
    by_name = {layer.name: layer.details for layer in report.layers}
    assert by_name["q"]["smoothed_input_of"] == "ln1" and "smoothed_input_of" not in by_name["fc2"]
    # the largest LayerNorm channel came down to the others' size
    g1 = next(g for g in report.meta["smoothing"]["groups"] if g["layernorm"] == "ln1")
    assert g1["act_absmax_before"] > 40 and g1["act_absmax_after"] < 0.5 * g1["act_absmax_before"]
    # with quantization switched off the smoothed model computes the original function
    set_enabled(model, weights=False, activations=False)
    x = _data()
    with torch.no_grad():
        a, b = ref(x), model(x)
    assert float((a - b).abs().max() / a.abs().max()) <= 1e-5


@pytest.mark.parametrize("observer", ["minmax", "mse"])
def test_smoothing_cuts_the_quantization_error_of_outlier_channels(observer) -> None:
    # layer-input quantization (what a transformer gets): only the layers' inputs are quantized, so the
    # LayerNorm outliers are the error; in graph placement the residual add's own quantizer still sees them
    x = _data()[128:]  # held out from calibration
    errors = {}
    for smooth in (None, 0.5):
        ref, model, _ = _quantized(smooth, traceable=False, observer=observer)
        with torch.no_grad():
            errors[smooth] = float(((model(x) - ref(x)) ** 2).mean() / (ref(x) ** 2).mean())
    assert errors[0.5] < 0.2 * errors[None]


def test_smoothed_model_exports_one_mul_per_layernorm_and_runs_in_onnx_runtime(tmp_path) -> None:
    _, model, _ = _quantized(0.5, traceable=False)
    x = _data()[128:]
    proto = export_qdq(model, x[:1], tmp_path / "m.onnx")
    consts = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    smooth_muls = [n for n in proto.graph.node if n.op_type == "Mul" and consts.get(n.input[1]) is not None
                   and consts[n.input[1]].shape == (16,)]
    assert len(smooth_muls) == 2  # q and k share theirs
    q_in = [n.input[0] for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    assert len(q_in) == len(set(q_in))  # q and k read one quantized tensor
    with torch.no_grad():
        sim = model(x)
    out = OrtModel(proto, threads=1)(x)
    assert float((out - sim).abs().max() / sim.abs().max()) < 0.02


def test_smoothed_model_packed_round_trip_is_bit_exact(tmp_path) -> None:
    ref, model, _ = _quantized(0.5, traceable=False)
    save_packed(model, tmp_path / "q")
    loaded = load_packed(copy.deepcopy(ref), tmp_path / "q")
    x = _data()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert torch.equal(loaded.q.input_smooth.inv_scale, model.q.input_smooth.inv_scale)


def test_smoothed_model_checkpoint_round_trip_is_bit_exact(tmp_path) -> None:
    from torchslim.train import load_checkpoint, save_checkpoint

    ref, model, _ = _quantized(0.5, traceable=True)
    save_checkpoint(model, tmp_path / "ck")
    loaded = copy.deepcopy(ref)
    load_checkpoint(loaded, tmp_path / "ck")
    x = _data()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_model_without_layernorm_is_quantized_as_without_smoothing() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    a, b = copy.deepcopy(net), copy.deepcopy(net)
    calib = _calib(_data())
    report = quantize_(a, {"mode": "static", "activation": {"smooth": 0.5}}, calibration=calib)
    quantize_(b, {"mode": "static"}, calibration=calib)
    assert report.meta["smoothing"]["groups"] == [] and "nothing smoothed" in report.meta["smoothing"]["note"]
    x = _data()
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


@pytest.mark.parametrize(
    "config,field",
    [({"mode": "static", "activation": {"smooth": 0.0}}, "activation.smooth"),
     ({"mode": "static", "activation": {"smooth": 1.5}}, "activation.smooth"),
     ({"mode": "weight_only", "activation": {"smooth": 0.5}}, "smooth")],
)
def test_bad_smoothing_config_is_refused_and_model_untouched(config, field) -> None:
    torch.manual_seed(0)
    model = _Block().eval()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match=field):
        quantize_(model, config, calibration=_calib(_data()))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(TorchslimError, match="alpha"):
        smooth_layernorm_inputs_(model, ["q"], [_data()], 0.0)
    assert np.array_equal(before["q.weight"].numpy(), model.q.weight.detach().numpy())
