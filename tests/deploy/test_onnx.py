"""QDQ export: runs in ONNX Runtime as integer kernels and agrees with our fake-quant simulation."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from torchslim.deploy import OrtModel, export_fp32, export_qdq, ort_optimize, passes, qdq_summary
from torchslim.errors import TorchslimError
from torchslim.measure import evaluate_accuracy
from torchslim.quant import quantize_
from torchslim.quant.affine import quantize


def _optimized_ops(proto: onnx.ModelProto, tmp_path) -> dict[str, int]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return qdq_summary(onnx.load(str(tmp_path / "opt.onnx")))


def test_qdq_runs_as_int8_and_agrees_with_simulation(trained, digits, tmp_path) -> None:
    quantize_(trained, {"mode": "static"}, calibration=digits.loader("train", 128))
    path = tmp_path / "m.int8.onnx"
    proto = export_qdq(trained, digits.example_input(), path)
    assert path.exists()
    ops = qdq_summary(proto)
    assert ops["QuantizeLinear"] >= 5 and ops["DequantizeLinear"] >= 9
    # ONNX Runtime turns every conv and the residual add into integer kernels
    fused = _optimized_ops(proto, tmp_path)
    assert fused.get("QLinearConv") == 3 and fused.get("QLinearAdd") == 1 and "Conv" not in fused
    # the classifier's input quantizer sits before Flatten, so the global pool runs in integers too
    assert fused.get("QLinearGlobalAveragePool") == 1 and "GlobalAveragePool" not in fused
    ort_model = OrtModel(proto, threads=1)
    x = digits.test.x
    with torch.no_grad():
        sim = trained(x)
    got = ort_model(x)
    agreement = float((sim.argmax(1) == got.argmax(1)).float().mean())
    assert agreement >= 0.99
    assert abs(ort_model.accuracy(digits.loader("test", 512)) - evaluate_accuracy(trained, digits.loader("test", 512))) <= 0.01


def test_weights_are_our_integers_with_our_scales(trained, digits) -> None:
    quantize_(trained, {"mode": "static", "weight": {"bits": 4}}, calibration=digits.loader("train", 128))
    proto = export_qdq(trained, digits.example_input())
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    int_weights = [v for k, v in inits.items() if v.dtype == np.int8 and v.ndim == 4]
    assert len(int_weights) == 3
    qp = trained.conv2.weight_fq.qparams()
    ours = quantize(trained.conv2.weight.detach(), qp).numpy().astype(np.int8)
    assert any(w.shape == ours.shape and np.array_equal(w, ours) for w in int_weights)
    assert all(w.min() >= -8 and w.max() <= 7 for w in int_weights)  # 4-bit values in int8 containers
    scales = [v for v in inits.values() if v.dtype == np.float32 and v.shape == qp.scale.shape]
    assert any(np.array_equal(s, qp.scale.numpy()) for s in scales)


def test_fp32_export_and_errors(trained, digits) -> None:
    proto = export_fp32(trained, digits.example_input())
    with torch.no_grad():
        want = trained(digits.test.x[:16])
    np.testing.assert_allclose(OrtModel(proto, threads=1)(digits.test.x[:16]).numpy(), want.numpy(), rtol=1e-4, atol=1e-4)
    with pytest.raises(TorchslimError, match="needs a quantized model"):
        export_qdq(trained, digits.example_input())
    quantize_(trained, {"mode": "static", "activation": {"bits": 4}}, calibration=digits.loader("train", 128))
    with pytest.raises(TorchslimError, match="4 bits: ONNX QDQ export needs 8-bit activations"):
        export_qdq(trained, digits.example_input())


def test_learned_scales_export_as_constants(trained, digits) -> None:
    quantize_(trained, {"mode": "static", "weight": {"bits": 4}, "learn_scale": True}, calibration=digits.loader("train", 128))
    with torch.no_grad():
        trained.conv2.weight_fq.log_scale.add_(0.05)  # as if QAT had moved it
    proto = export_qdq(trained, digits.example_input())
    assert "Exp" not in qdq_summary(proto)
    x = digits.test.x
    with torch.no_grad():
        sim = trained(x)
    assert float((OrtModel(proto, threads=1)(x).argmax(1) == sim.argmax(1)).float().mean()) >= 0.99



class _QKV(torch.nn.Module):
    """Q, K and V projections of one normalised input (3-D, as in a transformer); not fx-traceable."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(16)
        self.q, self.k, self.v = (torch.nn.Linear(16, 16) for _ in range(3))
        self.out = torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.abs().sum() < 0):  # data-dependent branch: torch.fx cannot trace it
            raise AssertionError
        h = self.norm(x)
        att = torch.softmax(self.q(h) @ self.k(h).transpose(1, 2) / 4.0, dim=-1)
        return self.out(att @ self.v(h))


def test_shared_inputs_quantize_once_and_ort_optimize_fuses_bias_bit_exactly(tmp_path) -> None:
    torch.manual_seed(0)
    model = _QKV().eval()
    x = torch.randn(64, 6, 16)
    report = quantize_(model, {"mode": "static"}, calibration=[(x[i : i + 16], None) for i in range(0, 64, 16)])
    assert report.meta["activation_placement"]["method"] == "layer_inputs"  # each layer quantizes its own input
    proto = export_qdq(model, x[:1])
    # Q, K and V read one tensor with equal calibrated parameters: one QuantizeLinear feeds all three
    q_in = [n.input[0] for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    assert len(q_in) == len(set(q_in)) == 2
    fast = ort_optimize(proto, tmp_path / "fast.onnx")
    assert (tmp_path / "fast.onnx").exists()
    matmuls = [n for n in fast.graph.node if n.op_type == "MatMulIntegerToFloat"]
    assert len(matmuls) == 4 and all(len(n.input) == 7 and n.input[6] for n in matmuls)
    assert "Add" not in qdq_summary(fast)  # every bias moved into its integer matmul
    np.testing.assert_array_equal(OrtModel(fast, threads=1)(x).numpy(), OrtModel(proto, threads=1)(x).numpy())
    with torch.no_grad():
        sim = model(x)
    np.testing.assert_allclose(OrtModel(fast, threads=1)(x).numpy(), sim.numpy(), atol=2e-2)
    with pytest.raises(TorchslimError, match="ort_optimize takes"):
        ort_optimize(123)


def _without_hoist(monkeypatch) -> None:
    """export_qdq without the pass that moves QuantizeLinear above Flatten/Reshape."""
    kept = tuple(p for p in passes.QDQ_PASSES if p.name != "hoist_quantize_linear")
    assert len(kept) == len(passes.QDQ_PASSES) - 1
    monkeypatch.setattr(passes, "QDQ_PASSES", kept)


def test_quantize_hoisted_above_flatten_is_bit_exact(trained, digits, monkeypatch) -> None:
    quantize_(trained, {"mode": "static"}, calibration=digits.loader("train", 128))
    hoisted = export_qdq(trained, digits.example_input())
    _without_hoist(monkeypatch)
    plain = export_qdq(trained, digits.example_input())
    order = [n.op_type for n in hoisted.graph.node]
    assert order.index("Flatten") == order.index("QuantizeLinear", order.index("GlobalAveragePool")) + 1
    assert [n.op_type for n in plain.graph.node] != order
    x = digits.test.x
    np.testing.assert_array_equal(OrtModel(hoisted, threads=1)(x).numpy(), OrtModel(plain, threads=1)(x).numpy())


class _TwoHeads(torch.nn.Module):
    """Two pooled heads, each flatten -> Linear: two quantizers to move above their Flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.avg, self.max = torch.nn.AdaptiveAvgPool2d(1), torch.nn.AdaptiveMaxPool2d(1)
        self.fc1, self.fc2 = torch.nn.Linear(8, 10), torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        return self.fc1(torch.flatten(self.avg(h), 1)) + self.fc2(torch.flatten(self.max(h), 1))


def test_every_quantizer_behind_a_flatten_is_moved(digits, monkeypatch) -> None:
    torch.manual_seed(0)
    model = _TwoHeads().eval()
    quantize_(model, {"mode": "static"}, calibration=digits.loader("train", 128))
    hoisted = export_qdq(model, digits.example_input())
    _without_hoist(monkeypatch)
    plain = export_qdq(model, digits.example_input())
    producers = {o: n for n in hoisted.graph.node for o in n.output}
    flattens = [n for n in hoisted.graph.node if n.op_type == "Flatten"]
    assert len(flattens) == 2 and all(producers[f.input[0]].op_type == "QuantizeLinear" for f in flattens)
    onnx.checker.check_model(hoisted)
    x = digits.test.x
    np.testing.assert_array_equal(OrtModel(hoisted, threads=1)(x).numpy(), OrtModel(plain, threads=1)(x).numpy())


class _Stem(torch.nn.Module):
    """conv over few channels -> (ReLU) -> 2x2 max-pool -> conv -> classifier: the LeNet stem."""

    def __init__(self, k: int = 3, relu: bool = False, cin: int = 1, pad: int = 0, pool: int = 2, side: int = 8) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, 6, k, padding=pad)
        self.relu = relu
        self.pool = torch.nn.MaxPool2d(pool)
        self.conv2 = torch.nn.Conv2d(6, 8, 3, padding=1)
        with torch.no_grad():
            side = (side + 2 * pad - k + 1) // pool
        self.fc = torch.nn.Linear(8 * side * side, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x)
        h = self.pool(torch.relu(h) if self.relu else h)
        return self.fc(torch.flatten(self.conv2(h), 1))


@pytest.mark.parametrize(
    "k,relu,weight",
    [(3, False, {}), (4, True, {}), (5, False, {"granularity": "tensor"}), (3, True, {"granularity": "tensor", "symmetric": False})],
)
def test_few_channel_conv_before_a_pool_runs_as_space_to_depth_bit_exactly(digits, tmp_path, k, relu, weight) -> None:
    torch.manual_seed(0)
    model = _Stem(k=k, relu=relu).eval()
    quantize_(model, {"mode": "static", "weight": weight}, calibration=digits.loader("train", 128))
    fast = export_qdq(model, digits.example_input())
    plain = export_qdq(model, digits.example_input(), space_to_depth=False)
    ops, plain_ops = qdq_summary(fast), qdq_summary(plain)
    assert ops.get("SpaceToDepth") == 1 and ops.get("Max") == 1 and "MaxPool" not in ops
    assert "SpaceToDepth" not in plain_ops and plain_ops.get("MaxPool") == 1
    w = {i.name: onnx.numpy_helper.to_array(i) for i in fast.graph.initializer}
    assert any(v.shape == (24, 4, k // 2 + 1, k // 2 + 1) and v.dtype in (np.int8, np.uint8) for v in w.values())
    # both convolutions still run as integer kernels
    fused = _optimized_ops(fast, tmp_path)
    assert fused.get("QLinearConv") == 2 and "Conv" not in fused
    # the pooled tensor is quantized again with the conv output's parameters: split and max run on the integers
    producers = {o: n for n in fast.graph.node for o in n.output}
    # the input is quantized once, after SpaceToDepth
    s2d = next(n for n in fast.graph.node if n.op_type == "SpaceToDepth")
    assert s2d.input[0] == fast.graph.input[0].name and ops["QuantizeLinear"] == plain_ops["QuantizeLinear"] - 1
    split = next(n for n in fast.graph.node if n.op_type == "Split")
    assert producers[split.input[0]].op_type == "QuantizeLinear"
    x = digits.test.x
    np.testing.assert_array_equal(OrtModel(fast, threads=1)(x).numpy(), OrtModel(plain, threads=1)(x).numpy())
    with torch.no_grad():
        sim = model(x)
    assert float((sim.argmax(1) == OrtModel(fast, threads=1)(x).argmax(1)).float().mean()) >= 0.99


class _PoolOut(torch.nn.Module):
    """conv -> 2x2 max-pool as the output: nothing quantizes the pooled tensor, so the max runs on floats."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.max_pool2d(self.conv(x), 2)


def test_space_to_depth_pool_on_dequantized_values_is_bit_exact(digits) -> None:
    torch.manual_seed(0)
    model = _PoolOut().eval()
    quantize_(model, {"mode": "static"}, calibration=digits.loader("train", 128))
    fast = export_qdq(model, digits.example_input())
    producers = {o: n for n in fast.graph.node for o in n.output}
    split = next(n for n in fast.graph.node if n.op_type == "Split")
    assert producers[split.input[0]].op_type == "DequantizeLinear"
    x = digits.test.x
    plain = export_qdq(model, digits.example_input(), space_to_depth=False)
    np.testing.assert_array_equal(OrtModel(fast, threads=1)(x).numpy(), OrtModel(plain, threads=1)(x).numpy())


@pytest.mark.parametrize(
    "kwargs",
    [{"pad": 1}, {"cin": 4}, {"pool": 3, "side": 9}, {"side": 9}],
    ids=["padded-conv", "four-channels", "3x3-pool", "odd-input"],
)
def test_space_to_depth_leaves_other_patterns_alone(kwargs) -> None:
    torch.manual_seed(0)
    model = _Stem(**kwargs).eval()
    side, cin = kwargs.get("side", 8), kwargs.get("cin", 1)
    x = torch.randn(64, cin, side, side)
    quantize_(model, {"mode": "static"}, calibration=[(x[i : i + 16], None) for i in range(0, 64, 16)])
    proto = export_qdq(model, x[:1])
    assert "SpaceToDepth" not in qdq_summary(proto)
    np.testing.assert_array_equal(
        OrtModel(proto, threads=1)(x).numpy(), OrtModel(export_qdq(model, x[:1], space_to_depth=False), threads=1)(x).numpy()
    )


def test_space_to_depth_split_is_valid_in_opset_18(digits) -> None:
    torch.manual_seed(0)
    model = _Stem().eval()
    quantize_(model, {"mode": "static"}, calibration=digits.loader("train", 128))
    new, old = export_qdq(model, digits.example_input(), opset=18), export_qdq(model, digits.example_input())
    assert qdq_summary(new).get("SpaceToDepth") == 1
    x = digits.test.x
    np.testing.assert_array_equal(OrtModel(new, threads=1)(x).numpy(), OrtModel(old, threads=1)(x).numpy())


def test_space_to_depth_with_one_output_channel_tiles_its_per_channel_scale(digits) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3), torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(9, 10)).eval()
    quantize_(model, {"mode": "static"}, calibration=digits.loader("train", 128))
    fast = export_qdq(model, digits.example_input())
    assert qdq_summary(fast).get("SpaceToDepth") == 1
    x = digits.test.x
    plain = export_qdq(model, digits.example_input(), space_to_depth=False)
    np.testing.assert_array_equal(OrtModel(fast, threads=1)(x).numpy(), OrtModel(plain, threads=1)(x).numpy())


class _FewChannels(torch.nn.Module):
    """conv over ``cin`` channels (padded, optionally strided) -> ReLU -> conv -> classifier: ResNet-20's stem."""

    def __init__(self, cin: int = 1, stride: int = 1, groups: int = 1, side: int = 8) -> None:
        super().__init__()
        width = 6 if groups == 1 else 2 * cin
        self.conv1 = torch.nn.Conv2d(cin, width, 3, stride=stride, padding=1, groups=groups)
        self.conv2 = torch.nn.Conv2d(width, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * ((side - 1) // stride + 1) ** 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.conv2(torch.relu(self.conv1(x))), 1))


def _calibrated(model: torch.nn.Module, cin: int, weight: dict | None = None, side: int = 8) -> torch.Tensor:
    torch.manual_seed(0)
    x = torch.randn(96, cin, side, side) * torch.linspace(0.5, 2.0, cin).view(1, cin, 1, 1) + 0.3
    quantize_(model, {"mode": "static", "weight": weight or {}}, calibration=[(x[i : i + 32], None) for i in range(0, 96, 32)])
    return x


@pytest.mark.parametrize(
    "cin,stride,weight",
    [(1, 1, {}), (2, 1, {"granularity": "tensor"}), (3, 2, {}), (1, 2, {"granularity": "tensor", "symmetric": False})],
)
def test_few_channel_conv_input_is_padded_to_four_channels_bit_exactly(tmp_path, cin, stride, weight) -> None:
    model = _FewChannels(cin, stride).eval()
    x = _calibrated(model, cin, weight)
    padded = export_qdq(model, x[:1])
    plain = export_qdq(model, x[:1], pad_channels=False)
    ops, plain_ops = qdq_summary(padded), qdq_summary(plain)
    assert ops.get("Pad") == 1 and "Pad" not in plain_ops
    # the pad runs on the quantized input and the conv's weights gained zero-point input channels
    pad = next(n for n in padded.graph.node if n.op_type == "Pad")
    producers = {o: n for n in padded.graph.node for o in n.output}
    assert producers[pad.input[0]].op_type == "QuantizeLinear"
    w = {i.name: onnx.numpy_helper.to_array(i) for i in padded.graph.initializer}
    conv_w = [v for v in w.values() if v.ndim == 4 and v.shape[1] == 4 and v.dtype in (np.int8, np.uint8)]
    assert len(conv_w) == 1 and conv_w[0].shape == (6, 4, 3, 3)
    assert ops["QuantizeLinear"] == plain_ops["QuantizeLinear"]
    fused = _optimized_ops(padded, tmp_path)
    assert fused.get("QLinearConv") == 2 and "Conv" not in fused
    np.testing.assert_array_equal(OrtModel(padded, threads=1)(x).numpy(), OrtModel(plain, threads=1)(x).numpy())


def test_padded_weight_channels_hold_each_output_channels_zero_point() -> None:
    model = _FewChannels(2).eval()
    x = _calibrated(model, 2, {"granularity": "channel", "symmetric": False})
    padded = export_qdq(model, x[:1])
    consts = {i.name: onnx.numpy_helper.to_array(i) for i in padded.graph.initializer}
    conv = next(n for n in padded.graph.node if n.op_type == "Conv")
    dq_w = next(n for n in padded.graph.node if conv.input[1] in n.output)
    w, zp = consts[dq_w.input[0]], consts[dq_w.input[2]]
    assert w.shape == (6, 4, 3, 3) and zp.shape == (6,) and np.any(zp != 0)
    np.testing.assert_array_equal(w[:, 2:], np.broadcast_to(zp[:, None, None, None], (6, 2, 3, 3)))
    plain = export_qdq(model, x[:1], pad_channels=False)
    np.testing.assert_array_equal(OrtModel(padded, threads=1)(x).numpy(), OrtModel(plain, threads=1)(x).numpy())


@pytest.mark.parametrize("kwargs", [{"cin": 4}, {"cin": 2, "groups": 2}], ids=["four-channels", "grouped"])
def test_channel_padding_leaves_wide_and_grouped_convs_alone(kwargs) -> None:
    model = _FewChannels(**kwargs).eval()
    x = _calibrated(model, kwargs["cin"])
    proto = export_qdq(model, x[:1])
    assert "Pad" not in qdq_summary(proto)


def test_space_to_depth_conv_is_not_padded_again(digits) -> None:
    torch.manual_seed(0)
    model = _Stem().eval()
    quantize_(model, {"mode": "static"}, calibration=digits.loader("train", 128))
    ops = qdq_summary(export_qdq(model, digits.example_input()))
    assert ops.get("SpaceToDepth") == 1 and "Pad" not in ops
    # without the space-to-depth rewrite the same conv is the one that gets padded
    assert qdq_summary(export_qdq(model, digits.example_input(), space_to_depth=False)).get("Pad") == 1


def test_an_export_failure_names_the_layer_that_fails_alone_with_the_same_error():
    from torch import nn

    class Scorer(nn.Module):  # torch's exporter has no aten::bilinear at opset 17
        def __init__(self):
            super().__init__()
            self.a, self.b, self.pair, self.out = nn.Linear(6, 12), nn.Linear(6, 12), nn.Bilinear(12, 12, 8), nn.Linear(8, 3)

        def forward(self, x):
            return self.out(torch.relu(self.pair(self.a(x), self.b(x))))

    with pytest.raises(TorchslimError, match=r"ONNX export of Scorer failed at layer 'pair' \(Bilinear\): .*bilinear"):
        export_fp32(Scorer().eval(), torch.randn(2, 6))


def test_check_onnx_reads_a_pair_of_tensors_as_the_two_inputs_of_a_two_input_model():
    """(src, tgt) given to forward(src, tgt) is the model's input, not (inputs, labels): check_onnx called
    forward(src) and crashed ('missing 1 required positional argument')."""
    from torch import nn

    from torchslim.deploy.check import check_onnx

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(5, 3)

        def forward(self, src, tgt):
            return self.a(src) + self.b(tgt)

    torch.manual_seed(0)
    model = Pair().eval()
    batches = [(torch.randn(2, 4), torch.randn(2, 5)) for _ in range(3)]
    result = check_onnx(model, export_fp32(model, batches[0]).SerializeToString(), batches)
    assert result.samples == 6 and result.top1_agreement == 1.0 and result.min_cosine > 0.9999


def test_a_bfloat16_model_exports_its_int8_graph_from_a_float32_copy():
    """The int8 layers' exported weights are float32 while a bfloat16 model's activations are not: the export
    failed ('Input type (CPUBFloat16Type) and weight type (torch.FloatTensor) should be the same')."""
    torch.manual_seed(0)
    from torchslim.zoo import create_model

    model = create_model("lenet5").to(torch.bfloat16).eval()
    batches = [torch.randn(8, 1, 28, 28).to(torch.bfloat16) for _ in range(3)]
    quantize_(model, {"mode": "static", "guard": {"enabled": False}}, calibration=batches)
    proto = export_qdq(model, batches[0])
    assert next(p for p in model.parameters()).dtype == torch.bfloat16  # the model itself is left as it was
    got = torch.as_tensor(OrtModel(proto, threads=1)(batches[0])).float()
    with torch.no_grad():
        sim = model(batches[0]).float()
    assert float(torch.nn.functional.cosine_similarity(got.flatten(), sim.flatten(), dim=0)) > 0.99
