"""Affine math: hand-computed cases, and bit-exact agreement with ONNX Runtime's QuantizeLinear/DequantizeLinear."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from torchslim.errors import ConfigError, TorchslimError
from torchslim.quant.affine import (
    QParams,
    QuantSpec,
    check_spec_fits,
    dequantize,
    qparams_from_range,
    qparams_from_tensor,
    quantize,
)
from torchslim.quant.config import QuantizeConfig


def _qp(scale: float, zp: int, qmin: int, qmax: int) -> QParams:
    return QParams(torch.tensor(scale), torch.tensor(zp, dtype=torch.int32), qmin, qmax)


def test_round_half_to_even_and_saturation() -> None:
    qp = _qp(0.5, 0, -128, 127)
    x = torch.tensor([0.25, 0.75, -0.25, -0.75, 1.25, 63.75, 64.0, 1000.0, -1000.0])
    # x / 0.5 = 0.5, 1.5, -0.5, -1.5, 2.5, 127.5, 128, 2000, -2000 -> ties go to even, then saturate
    assert quantize(x, qp).tolist() == [0, 2, 0, -2, 2, 127, 127, 127, -128]


def test_asymmetric_uint8_hand_computed() -> None:
    qp = qparams_from_range(torch.tensor(-1.0), torch.tensor(3.0), QuantSpec(signed=False, symmetric=False))
    assert float(qp.scale) == pytest.approx(4.0 / 255)
    assert int(qp.zero_point) == 64  # 0 - round(-1 / (4/255)) = round(63.75)
    q = quantize(torch.tensor([-1.0, 0.0, 3.0, 5.0]), qp)
    assert q.tolist() == [0, 64, 255, 255]
    assert dequantize(torch.tensor([64]), qp).tolist() == [0.0]


def test_symmetric_4bit_and_2bit() -> None:
    qp4 = qparams_from_tensor(torch.tensor([-3.5, 1.0]), QuantSpec(bits=4))
    assert float(qp4.scale) == pytest.approx(3.5 / 7.5)
    assert (qp4.qmin, qp4.qmax) == (-8, 7)
    qp2 = qparams_from_tensor(torch.tensor([-1.5, 1.5]), QuantSpec(bits=2))
    assert (qp2.qmin, qp2.qmax) == (-2, 1)
    # scale = 1.5 / ((1 - (-2)) / 2) = 1.0; -1.5 and -0.5 are ties (to even), 1.5 saturates
    assert float(qp2.scale) == 1.0
    assert quantize(torch.tensor([-1.5, -0.5, 0.4, 1.5]), qp2).tolist() == [-2, 0, 0, 1]


def test_per_channel_any_axis_and_groups() -> None:
    x = torch.tensor([[1.0, -2.0, 4.0, 8.0], [0.5, 0.25, -1.0, 2.0]])
    col = qparams_from_tensor(x, QuantSpec(granularity="channel", axis=1))
    assert col.scale.shape == (4,) and col.axis == 1
    # symmetric scale = max|x| / ((qmax - qmin) / 2) = max|x| / 127.5
    assert torch.allclose(col.scale * 127.5, torch.tensor([1.0, 2.0, 4.0, 8.0]))
    grp = qparams_from_tensor(x, QuantSpec(granularity="group", axis=1, group_size=2))
    assert grp.scale.shape == (2, 2)
    assert torch.allclose(grp.scale * 127.5, torch.tensor([[2.0, 8.0], [0.5, 2.0]]))
    # row 0: 1 / (2/127.5) = 63.75 -> 64; -2 / float32(2/127.5) = -127.4999... -> -127;
    # 4 / (8/127.5) = 63.75 -> 64; 8 / float32(8/127.5) = 127.4999... -> 127
    assert quantize(x, grp)[0].tolist() == [64, -127, 64, 127]


def _ort_qdq(x: np.ndarray, qp: QParams, elem: int, with_q: bool) -> tuple[np.ndarray | None, np.ndarray]:
    kw: dict = {"axis": qp.axis if qp.axis is not None else 1}
    if qp.group_size is not None:
        kw["block_size"] = qp.group_size
    zp_np = qp.zero_point.numpy()
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **kw),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **kw),
    ]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, x.shape)]
    if with_q:
        outs.append(helper.make_tensor_value_info("q", elem, x.shape))
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        outs,
        initializer=[numpy_helper.from_array(qp.scale.numpy(), "s"), helper.make_tensor("z", elem, zp_np.shape, zp_np.flatten().tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    res = sess.run(None, {"x": x})
    return (res[1] if with_q else None), res[0]


CASES = [
    (QuantSpec(), TensorProto.INT8),
    (QuantSpec(signed=False, symmetric=False), TensorProto.UINT8),
    (QuantSpec(signed=True, symmetric=False), TensorProto.INT8),
    (QuantSpec(signed=False, symmetric=True), TensorProto.UINT8),
    (QuantSpec(granularity="channel", axis=0), TensorProto.INT8),
    (QuantSpec(granularity="channel", axis=2, signed=False, symmetric=False), TensorProto.UINT8),
    (QuantSpec(granularity="group", axis=1, group_size=8), TensorProto.INT8),
    (QuantSpec(bits=4, granularity="group", axis=1, group_size=8), TensorProto.INT4),
    (QuantSpec(bits=4, signed=False, symmetric=False, granularity="channel", axis=0), TensorProto.UINT4),
]


@pytest.mark.parametrize(("spec", "elem"), CASES, ids=[f"{s.bits}b-{s.granularity}-{'s' if s.signed else 'u'}{'sym' if s.symmetric else 'asym'}" for s, _ in CASES])
def test_bit_exact_against_onnxruntime(spec: QuantSpec, elem: int) -> None:
    gen = torch.Generator().manual_seed(spec.bits * 10 + len(spec.granularity))
    for _trial in range(5):
        x = torch.randn(6, 32, 5, generator=gen) * 3
        qp = qparams_from_tensor(x * 0.7, spec)  # a clipped range: saturation is exercised
        if qp.axis is None:  # exact ties x / scale = k + 0.5 exercise round-half-to-even
            x.view(-1)[:40] = (torch.arange(40) - 20 + 0.5) * qp.scale
        q_ort, y_ort = _ort_qdq(x.numpy(), qp, elem, with_q=spec.bits == 8)
        q = quantize(x, qp)
        if q_ort is not None:
            np.testing.assert_array_equal(q_ort.astype(np.int32), q.numpy())
        np.testing.assert_array_equal(y_ort, dequantize(q, qp).numpy())


def test_bad_configs_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"weight\.bits"):
        QuantizeConfig.parse({"weight": {"bits": 9}})
    with pytest.raises(ConfigError, match=r"activation\.bits"):
        QuantizeConfig.parse({"activation": {"bits": 1}})
    with pytest.raises(ConfigError, match=r"weight\.granularity.*'tensor', 'channel' or 'group'"):
        QuantizeConfig.parse({"weight": {"granularity": "row"}})
    with pytest.raises(ConfigError, match=r"group_size is required"):
        QuantizeConfig.parse({"weight": {"granularity": "group"}})
    with pytest.raises(ConfigError, match=r"weight\.observer.*registered: minmax"):
        QuantizeConfig.parse({"weight": {"observer": "nope"}})
    with pytest.raises(ConfigError, match=r"mode"):
        QuantizeConfig.parse({"mode": "dynamic"})
    with pytest.raises(TorchslimError, match="group_size 5 does not divide dimension 1 of size 32"):
        check_spec_fits(QuantSpec(granularity="group", axis=1, group_size=5), (4, 32), "fc")


def test_narrow_two_bit_is_ternary() -> None:
    spec = QuantizeConfig.parse({"weight": {"bits": 2, "narrow": True}}).weight.spec()
    assert (spec.qmin, spec.qmax) == (-1, 1)
    w = torch.tensor([[-0.9, 0.1, 0.6, 1.0]])  # one output channel
    qp = qparams_from_tensor(w, spec)
    assert qp.scale.tolist() == pytest.approx([1.0])  # max|w| / ((1 - (-1)) / 2)
    assert quantize(w, qp).tolist() == [[-1, 0, 1, 1]]
