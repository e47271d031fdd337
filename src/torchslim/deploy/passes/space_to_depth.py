"""Conv over few input channels → 2×2 max-pool, rewritten as SpaceToDepth → Conv → channel-group max (exact).

Example:
    >>> from torchslim.deploy import export_qdq, qdq_summary
    >>> from torchslim.quant import quantize_
    >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 2))
    >>> x = torch.randn(8, 1, 8, 8)
    >>> report = quantize_(model, {"mode": "static"}, calibration=[x])
    >>> ops = qdq_summary(export_qdq(model, x[:1]))             # run by export_qdq
    >>> ops["SpaceToDepth"], "MaxPool" in ops
    (1, False)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from torchslim.deploy.onnx_graph import (
    IntConvWeights,
    attr,
    const_values,
    drop_unused_initializers,
    graph_index,
    int_conv_weights,
    set_nodes,
)

__all__ = ["same_qparams", "space_to_depth_conv_pool", "space_to_depth_weights"]


def same_qparams(consts: dict[str, np.ndarray], a: Any, b: Any) -> bool:
    """Whether two per-tensor Quantize/DequantizeLinear nodes have equal constant scale and zero point."""

    def params(node: Any) -> tuple[Any, Any] | None:
        scale = consts.get(node.input[1])
        zp = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
        if scale is None or zp is None or np.asarray(scale).size != 1 or np.asarray(zp).size != 1:
            return None
        return np.asarray(scale).reshape(()), np.asarray(zp).reshape(())

    pa, pb = params(a), params(b)
    return (pa is not None and pb is not None and pa[0] == pb[0] and pa[1] == pb[1]
            and pa[1].dtype == pb[1].dtype and attr(a, "axis", 1) == attr(b, "axis", 1))


def space_to_depth_weights(w_int: np.ndarray, zp: np.ndarray) -> np.ndarray:
    """The ``(4·Cout, 4·Cin, ⌊kh/2⌋+1, ⌊kw/2⌋+1)`` kernel that computes a conv at the four positions of
    each 2×2 window from the input's SpaceToDepth; taps outside the original kernel hold ``zp`` (per
    output channel), the weights' zero point, so they add nothing.

    ``W'[s·Cout + o, (bh·2 + bw)·Cin + c, u, v] = W[o, c, 2u + bh - sh, 2v + bw - sw]`` with ``s = 2·sh + sw``.

    Example:
        >>> w = np.arange(1, 10, dtype=np.int8).reshape(1, 1, 3, 3)
        >>> space_to_depth_weights(w, np.zeros(1, np.int8))[0, :, 0, 0]      # position (0, 0): W[0, 0, 0:2, 0:2]
        array([1, 2, 4, 5], dtype=int8)
    """
    cout, cin, kh, kw = w_int.shape
    kh2, kw2 = kh // 2 + 1, kw // 2 + 1
    w2 = np.empty((4 * cout, 4 * cin, kh2, kw2), w_int.dtype)
    w2[...] = np.tile(zp, 4)[:, None, None, None]
    for sh in range(2):
        for sw in range(2):
            s = 2 * sh + sw
            for bh in range(2):
                for bw in range(2):
                    for u in range(kh2):
                        i = 2 * u + bh - sh
                        if not 0 <= i < kh:
                            continue
                        for v in range(kw2):
                            j = 2 * v + bw - sw
                            if 0 <= j < kw:
                                c0 = (bh * 2 + bw) * cin
                                w2[s * cout : (s + 1) * cout, c0 : c0 + cin, u, v] = w_int[:, :, i, j]
    return w2


@dataclass
class _Index:
    """What the matcher reads: constants, producers and readers, inferred input dims, the default opset."""

    consts: dict[str, np.ndarray]
    producers: dict[str, Any]
    readers: dict[str, list[Any]]
    outputs: set[str]
    dims: dict[str, list[int]]
    opset: int

    def only_reader(self, name: str, op: str) -> Any:
        r = self.readers.get(name, [])
        return r[0] if len(r) == 1 and r[0].op_type == op and name not in self.outputs else None


@dataclass
class _Match:
    """A matched conv → (Relu →) Q → DQ → MaxPool chain."""

    conv: Any
    dq_in: Any  # the conv input's DequantizeLinear
    weights: IntConvWeights
    bias: np.ndarray | None
    q: Any  # the conv output's QuantizeLinear
    dq: Any
    pool: Any


def _not_set(auto_pad: Any) -> bool:
    return auto_pad in (b"NOTSET", "NOTSET")


def _plain_conv(conv: Any) -> bool:
    """Stride 1, dilation 1, no padding."""
    if not _not_set(attr(conv, "auto_pad", b"NOTSET")):
        return False
    if any(v != 1 for v in attr(conv, "strides", [1, 1])) or any(v != 1 for v in attr(conv, "dilations", [1, 1])):
        return False
    return not any(v != 0 for v in attr(conv, "pads", [0, 0, 0, 0]))


def _plain_2x2_pool(pool: Any) -> bool:
    """One output, 2×2 kernel, stride 2, no padding, dilation 1, floor mode."""
    if len(pool.output) != 1 or attr(pool, "ceil_mode", 0) != 0:
        return False
    if list(attr(pool, "kernel_shape", [])) != [2, 2] or list(attr(pool, "strides", [1, 1])) != [2, 2]:
        return False
    if any(v != 0 for v in attr(pool, "pads", [0, 0, 0, 0])) or any(v != 1 for v in attr(pool, "dilations", [1, 1])):
        return False
    return _not_set(attr(pool, "auto_pad", b"NOTSET"))


def _match(index: _Index, conv: Any, max_in_channels: int) -> _Match | None:
    """The chain starting at ``conv`` when every part of it fits the rewrite, else ``None``."""
    consts = index.consts
    dq_in = index.producers.get(conv.input[0])
    weights = int_conv_weights(conv, index.producers, index.readers, consts)
    if dq_in is None or dq_in.op_type != "DequantizeLinear" or weights is None:
        return None
    has_bias = len(conv.input) > 2 and bool(conv.input[2])
    bias = consts.get(conv.input[2]) if has_bias else None
    if has_bias and bias is None:
        return None
    if np.asarray(consts.get(dq_in.input[1], np.zeros(2))).size != 1:
        return None
    if weights.values.shape[1] > max_in_channels or not _plain_conv(conv):
        return None
    x_dims = index.dims.get(conv.input[0], [])
    if len(x_dims) != 4 or x_dims[2] <= 0 or x_dims[3] <= 0 or x_dims[2] % 2 or x_dims[3] % 2:
        return None
    nxt = index.readers.get(conv.output[0], [])
    relu = nxt[0] if len(nxt) == 1 and nxt[0].op_type == "Relu" else None
    q = index.only_reader(relu.output[0] if relu is not None else conv.output[0], "QuantizeLinear")
    if q is None or np.asarray(consts.get(q.input[1], np.zeros(2))).size != 1:
        return None
    dq = index.only_reader(q.output[0], "DequantizeLinear")
    pool = index.only_reader(dq.output[0], "MaxPool") if dq is not None else None
    if pool is None or not _plain_2x2_pool(pool):
        return None
    return _Match(conv, dq_in, weights, bias, q, dq, pool)


def _rewrite_weights(m: _Match, tag: str) -> list[Any]:
    """Point the conv at the space-to-depth kernel (scales, zero points and bias tiled four times);
    returns the new initializers."""
    weights, conv = m.weights, m.conv
    dq_w, w_zp = weights.dq, weights.zero_point
    kh, kw = weights.values.shape[2:]
    new_inits = [numpy_helper.from_array(space_to_depth_weights(weights.values, weights.zp_per_out), tag + "_w")]
    dq_w.input[0] = tag + "_w"
    if weights.per_channel:
        new_inits.append(numpy_helper.from_array(np.tile(np.asarray(weights.scale).reshape(-1), 4), tag + "_w_scale"))
        dq_w.input[1] = tag + "_w_scale"
        if w_zp is not None and np.asarray(w_zp).ndim == 1:
            new_inits.append(numpy_helper.from_array(np.tile(np.asarray(w_zp).reshape(-1), 4), tag + "_w_zp"))
            dq_w.input[2] = tag + "_w_zp"
    if m.bias is not None:
        new_inits.append(numpy_helper.from_array(np.tile(np.asarray(m.bias).reshape(-1), 4), tag + "_b"))
        conv.input[2] = tag + "_b"
    del conv.attribute[:]
    conv.attribute.extend([helper.make_attribute("kernel_shape", [kh // 2 + 1, kw // 2 + 1])])
    return new_inits


def _rewrite_input(index: _Index, m: _Match, tag: str, instead: dict[int, list[Any]]) -> list[Any]:
    """The nodes ahead of the conv: dequantized x → SpaceToDepth → the same quantizer again (exact: a
    permutation of grid values); where x is quantized only for this conv, the float x goes through
    SpaceToDepth and is quantized once (its old quantizer pair is dropped through ``instead``)."""
    conv, dq_in = m.conv, m.dq_in
    s2d_in, s2d_out = conv.input[0], tag + "_x"
    q_in = index.producers.get(dq_in.input[0])
    if (q_in is not None and q_in.op_type == "QuantizeLinear" and len(index.readers.get(conv.input[0], [])) == 1
            and index.only_reader(q_in.output[0], "DequantizeLinear") is dq_in
            and same_qparams(index.consts, q_in, dq_in)):
        s2d_in = q_in.input[0]
        instead[id(q_in)] = []
        instead[id(dq_in)] = []
    conv.input[0] = tag + "_xdq"
    q_args = list(dq_in.input[1:])
    return [
        helper.make_node("SpaceToDepth", [s2d_in], [s2d_out], blocksize=2, name=tag + "/SpaceToDepth"),
        helper.make_node("QuantizeLinear", [s2d_out, *q_args], [tag + "_xq"], name=tag + "/QuantizeLinear"),
        helper.make_node("DequantizeLinear", [tag + "_xq", *q_args], [tag + "_xdq"], name=tag + "/Dequantize"),
    ]


def _rewrite_pool(index: _Index, m: _Match, tag: str, instead: dict[int, list[Any]]) -> list[Any]:
    """The nodes that replace the max-pool: the four channel groups are the four positions of each 2x2
    window. Where the pooled tensor is quantized again with the conv output's own parameters, split and
    max run on the integers (max commutes with a monotone quantizer), else on the dequantized values."""
    requant = index.only_reader(m.pool.output[0], "QuantizeLinear")
    integer = requant is not None and same_qparams(index.consts, m.q, requant)
    parts = [f"{tag}_part{k}" for k in range(4)]
    # before opset 18 an equal split needs no attribute
    extra: dict[str, Any] = {"num_outputs": 4} if index.opset >= 18 else {}
    source, result = (m.q.output[0], requant.output[0]) if integer else (m.dq.output[0], m.pool.output[0])
    split = helper.make_node("Split", [source], parts, axis=1, name=tag + "/Split", **extra)
    pooled = helper.make_node("Max", parts, [result], name=tag + "/Max")
    if integer:
        instead[id(m.dq)] = []
        instead[id(requant)] = []
    return [split, pooled]


def space_to_depth_conv_pool(proto: onnx.ModelProto, max_in_channels: int = 3) -> int:
    """Rewrite Conv (few input channels) → 2×2 max-pool as SpaceToDepth → Conv → channel-group max.

    A convolution over 1-3 input channels wastes most of an int8 kernel's lanes
    (ONNX Runtime's QLinearConv ran LeNet-5's 1-channel 5×5 conv at a twentieth
    of the rate of its 20-channel one). When a 2×2, stride-2 max-pool follows,
    the pair is re-expressed exactly: the input is split into its four 2×2
    sub-grids (``SpaceToDepth``, 4·Cin channels at half the resolution), one
    convolution with a ⌊k/2⌋+1 kernel computes the conv at all four pooled
    positions at once (4·Cout channels; taps outside the original kernel hold
    the weight's zero point), and the pool becomes an elementwise ``Max`` of
    the four channel groups, on the integers where the pooled tensor is
    quantized again with the same parameters (as one shared quantizer
    exports). The integer products and sums are the same ones, so ONNX
    Runtime's outputs are bit-identical; the conv runs on 4·Cin channels.

    Matched: Conv (2-D, group 1, stride 1, dilation 1, no padding) reading a
    per-tensor DequantizeLinear, weights an integer constant through
    DequantizeLinear (per tensor or per output channel), constant or no bias,
    at most ``max_in_channels`` input channels and an input of even height and
    width; then (Relu,) QuantizeLinear → DequantizeLinear → MaxPool(2, stride 2,
    no padding), each the only reader of the one before. Returns how many
    were rewritten.
    """
    graph = proto.graph
    consts = const_values(graph)
    all_nodes, producers, readers, outputs = graph_index(graph)
    try:
        shapes = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # noqa: BLE001  # pragma: no cover - shape inference is best effort
        return 0
    dims: dict[str, list[int]] = {}
    for vi in list(shapes.graph.value_info) + list(shapes.graph.input):
        d = vi.type.tensor_type.shape.dim
        dims[vi.name] = [x.dim_value if x.HasField("dim_value") else -1 for x in d]
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 17)
    index = _Index(consts, producers, readers, outputs, dims, opset)
    before: dict[int, list[Any]] = {}  # id(conv) -> nodes to put ahead of it
    instead: dict[int, list[Any]] = {}  # id(node) -> the nodes that replace it (a max-pool, dropped quantizers)
    for conv in [n for n in all_nodes if n.op_type == "Conv"]:
        m = _match(index, conv, max_in_channels)
        if m is None:
            continue
        tag = f"{conv.output[0]}_s2d"
        new_inits = _rewrite_weights(m, tag)
        before[id(conv)] = _rewrite_input(index, m, tag, instead)
        instead[id(m.pool)] = _rewrite_pool(index, m, tag, instead)
        graph.initializer.extend(new_inits)
    if before:  # one rebuild at the end: a repeated field's messages are copied when it is rebuilt
        nodes = []
        for node in all_nodes:
            nodes.extend(before.get(id(node), []))
            nodes.extend(instead.get(id(node), [node]))
        set_nodes(graph, nodes)
        drop_unused_initializers(graph)
    return len(before)
