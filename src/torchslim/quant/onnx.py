"""ONNX export (fp32 and QDQ int8 with torchslim's own scales) and an ONNX Runtime session wrapper.

The QDQ export runs the quantized simulation through torch's ONNX exporter,
where every :class:`~torchslim.quant.fake.FakeQuantize` emits a
QuantizeLinear/DequantizeLinear pair carrying its own scale and zero point.
Weights are then rewritten as integer initializers computed with
:func:`torchslim.quant.affine.quantize` (bit-exact with ONNX), feeding a
DequantizeLinear, which is the pattern ONNX Runtime turns into integer kernels
(QLinearConv, QLinearMatMul, QLinearAdd...). Bias stays float.

Example:
    >>> from torchslim.quant import quantize_
    >>> model = ts.create_model("lenet300", in_features=64)
    >>> x = torch.randn(8, 1, 8, 8)
    >>> report = quantize_(model, {"weight": {"bits": 8}}, calibration=[x])
    >>> proto = export_qdq(model, x[:1])
    >>> OrtModel(proto, threads=2)(x).shape
    torch.Size([8, 10])
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchslim._io import atomic_write_bytes
from torchslim.errors import TorchslimError
from torchslim.measure.latency import ort_feed, ort_session, onnx_export_bytes
from torchslim.measure.macs import ExampleInput
from torchslim.quant.affine import QParams, fake_quantize, quantize
from torchslim.quant.fake import FakeQuantize
from torchslim.quant.model import QUANT_LAYERS, activation_quantizers

__all__ = ["OrtModel", "export_fp32", "export_qdq", "ort_optimize", "qdq_summary"]


def export_fp32(
    model: nn.Module, example_input: ExampleInput, path: str | os.PathLike[str] | None = None, *, opset: int = 17
) -> Any:
    """Export a float model to ONNX (dynamic batch) and optionally write it atomically.

    Returns:
        The ``onnx.ModelProto``.

    Example:
        >>> proto = export_fp32(nn.Linear(4, 2), torch.randn(1, 4))
        >>> proto.graph.input[0].name
        'input'
    """
    import onnx

    proto = onnx.load_from_string(onnx_export_bytes(model, example_input, opset=opset))
    if path is not None:
        atomic_write_bytes(Path(path), proto.SerializeToString())
    return proto


def _check_exportable(model: nn.Module) -> None:
    for name, fq in activation_quantizers(model):
        if fq.enabled and fq.spec.bits != 8:
            raise TorchslimError(
                f"activation quantizer {name!r} has {fq.spec.bits} bits: ONNX QDQ export needs 8-bit activations"
            )
        if fq.enabled and not bool(fq.initialized):
            raise TorchslimError(f"activation quantizer {name!r} was never calibrated")


def _const_values(graph: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _fold_casts(graph: Any) -> None:
    """Turn Constant nodes, and Cast/Identity nodes of constants, into initializers."""
    from onnx import helper, numpy_helper

    consts = _const_values(graph)
    for node in list(graph.node):
        if node.op_type == "Constant":
            graph.initializer.append(numpy_helper.from_array(np.asarray(consts[node.output[0]]), node.output[0]))
            graph.node.remove(node)
    changed = True
    while changed:
        changed = False
        for node in list(graph.node):
            if node.op_type in ("Cast", "Identity") and node.input[0] in consts:
                value = np.asarray(consts[node.input[0]])
                if node.op_type == "Cast":
                    to = next(a.i for a in node.attribute if a.name == "to")
                    value = value.astype(helper.tensor_dtype_to_np_dtype(to))
                consts[node.output[0]] = value
                graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
                graph.node.remove(node)
                changed = True


def _fold_weight_quantizers(proto: Any) -> int:
    """Replace QuantizeLinear(constant) by an integer initializer computed with our affine math."""
    from onnx import numpy_helper

    graph = proto.graph
    _fold_casts(graph)
    consts = _const_values(graph)
    producers = {out: node for node in graph.node for out in node.output}
    new_inits = []
    remove = []
    folded = 0
    from onnx import helper as _h

    def resolve(name: str) -> np.ndarray | None:
        if name in consts:
            return np.array(consts[name])
        src = producers.get(name)
        if src is not None and src.op_type == "Cast":
            inner = resolve(src.input[0])
            if inner is not None:
                to = next(a.i for a in src.attribute if a.name == "to")
                return inner.astype(_h.tensor_dtype_to_np_dtype(to))
        return None

    for node in graph.node:
        if node.op_type != "QuantizeLinear" or resolve(node.input[0]) is None:
            continue
        x = torch.from_numpy(np.array(resolve(node.input[0]), dtype=np.float32))
        scale = torch.from_numpy(np.array(resolve(node.input[1]), dtype=np.float32))
        zp_raw = resolve(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        zp_np = np.zeros((), np.uint8) if zp_raw is None else zp_raw
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        signed = zp_np.dtype == np.int8
        qmin, qmax = (-128, 127) if signed else (0, 255)
        per_axis = scale.dim() == 1 and x.dim() > 0 and (scale.numel() > 1 or x.shape[axis % x.dim()] == 1)
        qp = QParams(scale, torch.from_numpy(zp_np.astype(np.int32)), qmin, qmax, axis % x.dim() if per_axis else None)
        q = quantize(x, qp).numpy().astype(np.int8 if signed else np.uint8)
        name = node.output[0] + "_int"
        new_inits.append(numpy_helper.from_array(q, name))
        for other in graph.node:
            for i, inp in enumerate(other.input):
                if inp == node.output[0]:
                    other.input[i] = name
        remove.append(node)
        folded += 1
    for node in remove:
        graph.node.remove(node)
    _prune_dead_nodes(graph)
    graph.initializer.extend(new_inits)
    _drop_unused_initializers(graph)
    return folded


def _node_reads(node: Any) -> list[str]:
    """Every tensor name ``node`` reads: its inputs, and (for ``If``/``Loop``/``Scan``) every name its
    subgraphs' nodes read, which may come from the enclosing graph (a superset is safe: the passes use it to
    keep tensors alive and to count readers)."""
    names = list(node.input)
    for attribute in node.attribute:
        graphs = list(attribute.graphs) + ([attribute.g] if attribute.HasField("g") else [])
        for sub in graphs:
            for inner in sub.node:
                names.extend(_node_reads(inner))
            names.extend(o.name for o in sub.output)
    return names


def _set_nodes(graph: Any, nodes: list[Any]) -> None:
    """Replace ``graph.node`` by ``nodes`` (copied first: rebuilding a repeated field would copy them anyway)."""
    copies = [type(n)() for n in nodes]
    for dst, src in zip(copies, nodes):
        dst.CopyFrom(src)
    del graph.node[:]
    graph.node.extend(copies)


def _drop_unused_initializers(graph: Any) -> None:
    used = {i for n in graph.node for i in _node_reads(n)} | {o.name for o in graph.output}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _dedupe_quantize_linear(graph: Any, op_type: str = "QuantizeLinear") -> int:
    """Merge QuantizeLinear (or ``op_type``) nodes that read the same tensor with equal constant operands.

    Each quantized layer carries its own input quantizer, so layers reading one
    tensor (a transformer's Q, K and V projections) export one QuantizeLinear
    each; where their calibrated parameters are equal the integers are identical,
    and one node serves every consumer. The same holds for the smoothing ``Mul``
    of layers that share one LayerNorm (``op_type="Mul"``, run first). Returns
    how many nodes were removed.
    """
    consts = _const_values(graph)

    def key(node: Any) -> tuple[Any, ...]:
        parts: list[Any] = [node.input[0]]
        for name in node.input[1:]:
            value = consts.get(name)
            parts.append(name if value is None else (value.dtype.str, value.shape, value.tobytes()))
        parts.extend(attr.SerializeToString() for attr in node.attribute)
        return tuple(parts)

    first: dict[tuple[Any, ...], str] = {}
    rename: dict[str, str] = {}
    for node in list(graph.node):
        if node.op_type != op_type or node.input[0] in consts or len(node.output) != 1:
            continue
        k = key(node)
        if k in first:
            rename[node.output[0]] = first[k]
            graph.node.remove(node)
        else:
            first[k] = node.output[0]
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    return len(rename)


_SHAPE_ONLY = ("Flatten", "Reshape", "Squeeze", "Unsqueeze")


def _hoist_quantize_linear(graph: Any) -> int:
    """Move a per-tensor QuantizeLinear above the shape-only node (Flatten, Reshape...) that feeds it.

    Quantizing per tensor is elementwise, so ``Q(flatten(x)) == flatten(Q(x))``
    bit for bit; with Q right after the op that produced ``x`` (a global
    average pool before a classifier) ONNX Runtime can run that op in integers
    (``QLinearGlobalAveragePool``) instead of dequantize → float op → quantize.
    Returns how many were moved.
    """
    consts = _const_values(graph)
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    producers = {out: node for node in graph.node for out in node.output}
    position = {out: i for i, node in enumerate(graph.node) for out in node.output}
    graph_outputs = {o.name for o in graph.output}
    before: dict[int, int] = {}  # index of a shape op -> index of the QuantizeLinear that now precedes it
    for qi, q in enumerate(graph.node):
        if q.op_type != "QuantizeLinear":
            continue
        shape_op = producers.get(q.input[0])
        if shape_op is None or shape_op.op_type not in _SHAPE_ONLY or shape_op.domain not in ("", "ai.onnx"):
            continue
        scale = consts.get(q.input[1])
        if scale is None or np.asarray(scale).size != 1:
            continue
        mid = shape_op.output[0]
        if consumers.get(mid, 0) != 1 or mid in graph_outputs:
            continue
        # x -> shape_op -> mid -> Q -> out   becomes   x -> Q -> mid_q -> shape_op -> out
        out, quantized = q.output[0], mid + "_quantized"
        q.input[0], q.output[0] = shape_op.input[0], quantized
        shape_op.input[0], shape_op.output[0] = quantized, out
        before[position[mid]] = qi
    if before:  # one rebuild at the end: a repeated field's messages are copied when it is rebuilt
        moved_q = set(before.values())
        order = []
        for i in range(len(graph.node)):
            if i in moved_q:
                continue
            if i in before:
                order.append(before[i])
            order.append(i)
        _set_nodes(graph, [graph.node[i] for i in order])
    return len(before)


def _graph_index(graph: Any) -> tuple[list[Any], dict[str, Any], dict[str, list[Any]], set[str]]:
    """``(nodes, producer of each tensor, readers of each tensor, graph output names)``.

    The node list is one set of wrappers: passes key their edits by ``id(node)``
    and rebuild the graph once at the end (see :func:`_set_nodes`).
    """
    all_nodes = list(graph.node)
    producers = {out: node for node in all_nodes for out in node.output}
    readers: dict[str, list[Any]] = {}
    for node in all_nodes:
        for name in _node_reads(node):
            readers.setdefault(name, []).append(node)
    return all_nodes, producers, readers, {o.name for o in graph.output}


def _attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _same_qparams(consts: dict[str, np.ndarray], a: Any, b: Any) -> bool:
    """Whether two per-tensor Quantize/DequantizeLinear nodes have equal constant scale and zero point."""

    def params(node: Any) -> tuple[Any, Any] | None:
        scale = consts.get(node.input[1])
        zp = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
        if scale is None or zp is None or np.asarray(scale).size != 1 or np.asarray(zp).size != 1:
            return None
        return np.asarray(scale).reshape(()), np.asarray(zp).reshape(())

    pa, pb = params(a), params(b)
    return (pa is not None and pb is not None and pa[0] == pb[0] and pa[1] == pb[1]
            and pa[1].dtype == pb[1].dtype and _attr(a, "axis", 1) == _attr(b, "axis", 1))


@dataclass
class _IntConvWeights:
    """A Conv's weights as an integer constant through a DequantizeLinear read only by that conv."""

    dq: Any  # the weights' DequantizeLinear
    values: np.ndarray  # (Cout, Cin, kh, kw) int8/uint8
    scale: np.ndarray
    zero_point: np.ndarray | None  # as stored (None: no zero-point input)
    per_channel: bool  # a 1-D scale is per axis (axis 0), even of length 1
    zp_per_out: np.ndarray  # (Cout,) zero point of each output channel


def _int_conv_weights(conv: Any, producers: dict[str, Any], readers: dict[str, list[Any]],
                      consts: dict[str, np.ndarray]) -> _IntConvWeights | None:
    """The integer weights of a group-1 2-D ``conv`` (per tensor or per output channel), or ``None``."""
    dq_w = producers.get(conv.input[1])
    if dq_w is None or dq_w.op_type != "DequantizeLinear" or len(readers.get(dq_w.output[0], [])) != 1:
        return None
    w_int, w_scale = consts.get(dq_w.input[0]), consts.get(dq_w.input[1])
    has_zp = len(dq_w.input) > 2 and bool(dq_w.input[2])
    w_zp = consts.get(dq_w.input[2]) if has_zp else None
    if w_int is None or w_scale is None or w_int.ndim != 4 or w_int.dtype not in (np.int8, np.uint8):
        return None
    if (has_zp and w_zp is None) or _attr(conv, "group", 1) != 1:
        return None
    cout = w_int.shape[0]
    per_channel = np.asarray(w_scale).ndim == 1
    if per_channel and (w_scale.size != cout or _attr(dq_w, "axis", 1) != 0):
        return None
    if not per_channel and w_scale.size != 1:
        return None
    zp = np.zeros(cout, w_int.dtype) if w_zp is None else np.broadcast_to(np.asarray(w_zp, w_int.dtype).reshape(-1), (cout,))
    return _IntConvWeights(dq_w, w_int, np.asarray(w_scale), w_zp, per_channel, zp)


def _space_to_depth_conv_pool(proto: Any, max_in_channels: int = 3) -> int:
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
    import onnx
    from onnx import helper, numpy_helper

    graph = proto.graph
    consts = _const_values(graph)
    all_nodes, producers, readers, outputs = _graph_index(graph)

    def only_reader(name: str, op: str) -> Any:
        r = readers.get(name, [])
        return r[0] if len(r) == 1 and r[0].op_type == op and name not in outputs else None

    try:
        shapes = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # pragma: no cover - shape inference is best effort
        return 0
    dims: dict[str, list[int]] = {}
    for vi in list(shapes.graph.value_info) + list(shapes.graph.input):
        d = vi.type.tensor_type.shape.dim
        dims[vi.name] = [x.dim_value if x.HasField("dim_value") else -1 for x in d]
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 17)
    before: dict[int, list[Any]] = {}  # id(conv) -> nodes to put ahead of it
    instead: dict[int, list[Any]] = {}  # id(max-pool) -> the nodes that replace it
    for conv in [n for n in all_nodes if n.op_type == "Conv"]:
        dq_in = producers.get(conv.input[0])
        weights = _int_conv_weights(conv, producers, readers, consts)
        if dq_in is None or dq_in.op_type != "DequantizeLinear" or weights is None:
            continue
        dq_w, w_int, w_scale, w_zp, per_channel = weights.dq, weights.values, weights.scale, weights.zero_point, weights.per_channel
        bias = consts.get(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
        if len(conv.input) > 2 and conv.input[2] and bias is None:
            continue
        if np.asarray(consts.get(dq_in.input[1], np.zeros(2))).size != 1:
            continue
        cout, cin, kh, kw = w_int.shape
        if cin > max_in_channels:
            continue
        if _attr(conv, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        if any(v != 1 for v in _attr(conv, "strides", [1, 1])) or any(v != 1 for v in _attr(conv, "dilations", [1, 1])):
            continue
        if any(v != 0 for v in _attr(conv, "pads", [0, 0, 0, 0])):
            continue
        x_dims = dims.get(conv.input[0], [])
        if len(x_dims) != 4 or x_dims[2] <= 0 or x_dims[3] <= 0 or x_dims[2] % 2 or x_dims[3] % 2:
            continue
        nxt = readers.get(conv.output[0], [])
        relu = nxt[0] if len(nxt) == 1 and nxt[0].op_type == "Relu" else None
        q_name = relu.output[0] if relu is not None else conv.output[0]
        q = only_reader(q_name, "QuantizeLinear")
        if q is None or np.asarray(consts.get(q.input[1], np.zeros(2))).size != 1:
            continue
        dq = only_reader(q.output[0], "DequantizeLinear")
        pool = only_reader(dq.output[0], "MaxPool") if dq is not None else None
        if pool is None or len(pool.output) != 1 or _attr(pool, "ceil_mode", 0) != 0:
            continue
        if list(_attr(pool, "kernel_shape", [])) != [2, 2] or list(_attr(pool, "strides", [1, 1])) != [2, 2]:
            continue
        if any(v != 0 for v in _attr(pool, "pads", [0, 0, 0, 0])):
            continue
        if any(v != 1 for v in _attr(pool, "dilations", [1, 1])):
            continue
        if _attr(pool, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        # weights: W'[s*Cout + o, (bh*2 + bw)*Cin + c, u, v] = W[o, c, 2u + bh - sh, 2v + bw - sw], s = 2*sh + sw
        kh2, kw2 = kh // 2 + 1, kw // 2 + 1
        zp = weights.zp_per_out
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
        tag = f"{conv.output[0]}_s2d"
        new_inits = [numpy_helper.from_array(w2, tag + "_w")]
        dq_w.input[0] = tag + "_w"
        if per_channel:
            new_inits.append(numpy_helper.from_array(np.tile(np.asarray(w_scale).reshape(-1), 4), tag + "_w_scale"))
            dq_w.input[1] = tag + "_w_scale"
            if w_zp is not None and np.asarray(w_zp).ndim == 1:
                new_inits.append(numpy_helper.from_array(np.tile(np.asarray(w_zp).reshape(-1), 4), tag + "_w_zp"))
                dq_w.input[2] = tag + "_w_zp"
        if bias is not None:
            new_inits.append(numpy_helper.from_array(np.tile(np.asarray(bias).reshape(-1), 4), tag + "_b"))
            conv.input[2] = tag + "_b"
        del conv.attribute[:]
        conv.attribute.extend([helper.make_attribute("kernel_shape", [kh2, kw2])])
        # input: dequantized x -> SpaceToDepth -> the same quantizer again (exact: a permutation of grid values);
        # where x is quantized only for this conv, the float x goes through SpaceToDepth and is quantized once
        s2d_in, s2d_out = conv.input[0], tag + "_x"
        q_in = producers.get(dq_in.input[0])
        if (q_in is not None and q_in.op_type == "QuantizeLinear" and len(readers.get(conv.input[0], [])) == 1
                and only_reader(q_in.output[0], "DequantizeLinear") is dq_in and _same_qparams(consts, q_in, dq_in)):
            s2d_in = q_in.input[0]
            instead[id(q_in)] = []
            instead[id(dq_in)] = []
        conv.input[0] = tag + "_xdq"
        q_args = list(dq_in.input[1:])
        added = [
            helper.make_node("SpaceToDepth", [s2d_in], [s2d_out], blocksize=2, name=tag + "/SpaceToDepth"),
            helper.make_node("QuantizeLinear", [s2d_out, *q_args], [tag + "_xq"], name=tag + "/QuantizeLinear"),
            helper.make_node("DequantizeLinear", [tag + "_xq", *q_args], [tag + "_xdq"], name=tag + "/Dequantize"),
        ]
        # pool: the four channel groups are the four positions of each 2x2 window. Where the pooled
        # tensor is quantized again with the conv output's own parameters, split and max run on the
        # integers (max commutes with a monotone quantizer), else on the dequantized values.
        requant = only_reader(pool.output[0], "QuantizeLinear")
        integer = requant is not None and _same_qparams(consts, q, requant)
        parts = [f"{tag}_part{k}" for k in range(4)]
        extra = {"num_outputs": 4} if opset >= 18 else {}  # before opset 18 an equal split needs no attribute
        source, result = (q.output[0], requant.output[0]) if integer else (dq.output[0], pool.output[0])
        split = helper.make_node("Split", [source], parts, axis=1, name=tag + "/Split", **extra)
        pooled = helper.make_node("Max", parts, [result], name=tag + "/Max")
        before[id(conv)] = added
        instead[id(pool)] = [split, pooled]
        if integer:
            instead[id(dq)] = []
            instead[id(requant)] = []
        graph.initializer.extend(new_inits)
    if before:  # one rebuild at the end: a repeated field's messages are copied when it is rebuilt
        nodes = []
        for node in all_nodes:
            nodes.extend(before.get(id(node), []))
            nodes.extend(instead.get(id(node), [node]))
        _set_nodes(graph, nodes)
        _drop_unused_initializers(graph)
    return len(before)


def _pad_conv_input_channels(proto: Any, multiple: int = 4) -> int:
    """Pad the quantized input of a convolution over 1-3 channels to ``multiple`` channels.

    ONNX Runtime's int8 convolution runs a 1-3 channel input far below its rate
    on wider ones (ResNet-20's 1-channel 3×3 stem took 11 % of the network's
    time for 0.4 % of its MACs). The quantized input gets extra channels that
    hold its zero point (``Pad`` on the integers) and the weights get matching
    input channels; a padded channel dequantizes to 0, so every integer sum is
    the one it was and ONNX Runtime's outputs are bit-identical.

    Matched: a 2-D Conv with group 1 and fewer than ``multiple`` input
    channels reading a per-tensor DequantizeLinear with a constant zero point,
    weights an integer constant through a DequantizeLinear read only by this
    conv (per tensor or per output channel on axis 0). A conv that the
    space-to-depth rewrite already widened is not matched. Returns how many
    were padded.
    """
    from onnx import helper, numpy_helper

    graph = proto.graph
    consts = _const_values(graph)
    all_nodes, producers, readers, outputs = _graph_index(graph)
    before: dict[int, list[Any]] = {}
    dropped: set[int] = set()
    for conv in [n for n in all_nodes if n.op_type == "Conv"]:
        dq_in = producers.get(conv.input[0])
        weights = _int_conv_weights(conv, producers, readers, consts)
        if dq_in is None or dq_in.op_type != "DequantizeLinear" or weights is None:
            continue
        if len(dq_in.input) < 3 or not dq_in.input[2]:
            continue
        x_scale, x_zp = consts.get(dq_in.input[1]), consts.get(dq_in.input[2])
        if x_scale is None or x_zp is None or np.asarray(x_scale).size != 1 or np.asarray(x_zp).size != 1:
            continue
        dq_w, w_int, zp = weights.dq, weights.values, weights.zp_per_out
        cout, cin = w_int.shape[:2]
        if cin >= multiple:
            continue
        w_pad = np.empty((cout, multiple, *w_int.shape[2:]), w_int.dtype)
        w_pad[...] = zp[:, None, None, None]
        w_pad[:, :cin] = w_int
        tag = f"{conv.output[0]}_chpad"
        graph.initializer.extend([
            numpy_helper.from_array(w_pad, tag + "_w"),
            numpy_helper.from_array(np.array([0, 0, 0, 0, 0, multiple - cin, 0, 0], np.int64), tag + "_pads"),
        ])
        dq_w.input[0] = tag + "_w"
        before[id(conv)] = [
            helper.make_node("Pad", [dq_in.input[0], tag + "_pads", dq_in.input[2]], [tag + "_xq"], name=tag + "/Pad"),
            helper.make_node("DequantizeLinear", [tag + "_xq", *dq_in.input[1:]], [tag + "_xdq"], name=tag + "/Dequantize"),
        ]
        if len(readers.get(conv.input[0], [])) == 1 and conv.input[0] not in outputs:
            dropped.add(id(dq_in))
        conv.input[0] = tag + "_xdq"
    if before:
        nodes = []
        for node in all_nodes:
            nodes.extend(before.get(id(node), []))
            if id(node) not in dropped:
                nodes.append(node)
        _set_nodes(graph, nodes)
        _drop_unused_initializers(graph)
    return len(before)


def _prune_dead_nodes(graph: Any) -> None:
    """Remove nodes whose outputs nobody uses (repeat until stable)."""
    while True:
        used = {i for n in graph.node for i in _node_reads(n)} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            return
        for n in dead:
            graph.node.remove(n)


def export_qdq(
    model: nn.Module,
    example_input: ExampleInput,
    path: str | os.PathLike[str] | None = None,
    *,
    opset: int = 17,
    space_to_depth: bool = True,
    pad_channels: bool = True,
) -> Any:
    """Export a quantized model (after :func:`~torchslim.quant.ptq.quantize_`) as QDQ ONNX.

    Activation points become QuantizeLinear/DequantizeLinear pairs with their
    calibrated scale and zero point (one QuantizeLinear per tensor where the
    layers reading it share their parameters, as Q, K and V do; placed before
    a Flatten/Reshape so the op ahead of it can run in integers); weights
    become int8 initializers (values on the layer's own grid, 2 to 8 bits)
    followed by DequantizeLinear with the layer's per-tensor or per-channel
    scales. Per-group weights are written as float constants already on their
    grid (ONNX Runtime has no int8 kernel for them). The model is not modified.

    Args:
        model: a quantized model.
        example_input: an example batch.
        path: where to write the ``.onnx`` file (atomically); ``None`` writes nothing.
        opset: ONNX opset (13 or newer).
        space_to_depth: rewrite a convolution over 1-3 channels that feeds a
            2×2 max-pool as SpaceToDepth → conv → channel-group max (exact; ONNX
            Runtime's int8 conv is slow on so few channels). See
            ``_space_to_depth_conv_pool``.
        pad_channels: give any other convolution over 1-3 channels a quantized
            input padded with zero-point channels to 4 (exact; ResNet-20 on
            28×28 images, batch 32, 2 threads: 4.02 → 3.81 ms). See
            ``_pad_conv_input_channels``.

    Returns:
        The ``onnx.ModelProto``.

    Raises:
        TorchslimError: the model is not quantized, has non-8-bit or uncalibrated activations.

    Example:
        >>> import tempfile
        >>> from torchslim.quant import quantize_
        >>> tmp = tempfile.TemporaryDirectory()
        >>> qmodel = ts.create_model("lenet300", in_features=64)
        >>> x = torch.randn(8, 1, 8, 8)
        >>> report = quantize_(qmodel, {"weight": {"bits": 8}}, calibration=[x])
        >>> proto = export_qdq(qmodel, x[:1], f"{tmp.name}/model.int8.onnx")
        >>> qdq_summary(proto)
        {'QuantizeLinear': 3, 'Flatten': 1, 'DequantizeLinear': 6, 'Gemm': 3, 'Relu': 2}
        >>> tmp.cleanup()
    """
    import onnx

    layers = [m for m in model.modules() if isinstance(m, QUANT_LAYERS)]
    if not layers:
        raise TorchslimError("export_qdq needs a quantized model (run quantize_ first); use export_fp32 for float")
    _check_exportable(model)
    for module in model.modules():
        if isinstance(module, FakeQuantize):
            module.freeze_learned_scale()
    try:
        for layer in layers:
            qp = layer.weight_fq.qparams()
            layer._export_weight = fake_quantize(layer.weight.detach(), qp)
        data = onnx_export_bytes(model, example_input, opset=opset, constant_folding=False)
    finally:
        for layer in layers:
            layer._export_weight = None
    proto = onnx.load_from_string(data)
    _fold_weight_quantizers(proto)
    if _dedupe_quantize_linear(proto.graph, "Mul"):  # smoothing scales shared by Q, K and V
        _drop_unused_initializers(proto.graph)
    _dedupe_quantize_linear(proto.graph)
    _hoist_quantize_linear(proto.graph)
    if space_to_depth:
        _space_to_depth_conv_pool(proto)
    if pad_channels:
        _pad_conv_input_channels(proto)
    onnx.checker.check_model(proto)
    if path is not None:
        atomic_write_bytes(Path(path), proto.SerializeToString())
    return proto


def _fuse_matmul_bias(graph: Any) -> int:
    """Move a constant 1-D bias ``Add`` into the ``MatMulIntegerToFloat`` that feeds it (its 7th input)."""
    from onnx import numpy_helper

    inits = {init.name: init for init in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in graph.output}
    fused = 0
    for node in list(graph.node):
        if node.op_type != "MatMulIntegerToFloat" or node.domain != "com.microsoft" or len(node.input) > 6:
            continue
        out = node.output[0]
        users = consumers.get(out, [])
        if out in graph_outputs or len(users) != 1:
            continue
        add = users[0]
        if add.op_type != "Add" or add.domain not in ("", "ai.onnx"):
            continue
        others = [name for name in add.input if name != out]
        if len(add.input) != 2 or len(others) != 1 or others[0] not in inits:
            continue
        bias = numpy_helper.to_array(inits[others[0]])
        if bias.ndim != 1 or bias.dtype != np.float32:
            continue
        while len(node.input) < 6:
            node.input.append("")
        node.input.append(others[0])
        node.output[0] = add.output[0]
        graph.node.remove(add)
        fused += 1
    return fused


_BROADCASTING = ("Add", "Sub", "Mul", "Div", "Where")
_SAME_RANK = (
    "BiasGelu", "Cast", "DequantizeLinear", "Erf", "FastGelu", "Gelu", "LayerNormalization", "QuantizeLinear",
    "Relu", "Sigmoid", "SkipLayerNormalization", "Softmax", "Tanh",
)


def _shape_vector(name: str, consts: dict[str, np.ndarray], producers: dict[str, Any]) -> list[int | None] | None:
    """A 1-D shape vector's entries: a constant's values, or a Concat of constants and unsqueezed scalars
    (``None`` for an entry computed at run time, as ``Unsqueeze(Gather(Shape(x)))`` exports a dynamic dim)."""
    if name in consts:
        return [int(v) for v in np.asarray(consts[name]).reshape(-1)]
    node = producers.get(name)
    if node is None or node.op_type != "Concat":
        return None
    out: list[int | None] = []
    for part in node.input:
        src = producers.get(part)
        if part in consts:
            out.extend(int(v) for v in np.asarray(consts[part]).reshape(-1))
        elif src is not None and src.op_type == "Unsqueeze" and len(src.input) > 1 and np.asarray(consts.get(src.input[1], [0, 0])).size == 1:
            value = consts.get(src.input[0])  # a scalar unsqueezed along one axis
            out.append(None if value is None or np.asarray(value).size != 1 else int(np.asarray(value).reshape(-1)[0]))
        else:
            return None
    return out


def _tensor_ranks(proto: Any, elem_types: dict[str, int] | None = None) -> dict[str, int]:
    """Rank of each tensor ONNX shape inference knows, plus the float outputs of ONNX Runtime's matmuls
    (``elem_types``, when given, receives the element type of each tensor inference typed).

    Shape inference stops at ``com.microsoft`` operators and at anything after
    them; from there on, elementwise operators take their inputs' largest rank,
    LayerNormalization, quantizers, activations and transposes keep their input's,
    a matmul takes the larger, and a Reshape the length of a shape vector built
    from constants and unsqueezed scalars.
    """
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # noqa: BLE001 - inference is a hint: without it no tensor has a known rank
        inferred = proto
    ranks: dict[str, int] = {}
    for info in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if info.type.tensor_type.HasField("shape"):
            ranks[info.name] = len(info.type.tensor_type.shape.dim)
        if elem_types is not None and info.type.tensor_type.elem_type:
            elem_types[info.name] = info.type.tensor_type.elem_type
    for init in proto.graph.initializer:
        ranks[init.name] = len(init.dims)
    consts = _const_values(proto.graph)
    producers = {out: node for node in proto.graph.node for out in node.output}
    for node in proto.graph.node:  # topological order: inputs are ranked first
        out = node.output[0] if node.output else ""
        known = [ranks.get(name) for name in node.input if name]
        if out in ranks or not known or None in known:
            continue
        if node.op_type in _BROADCASTING:
            ranks[out] = max(known)  # type: ignore[type-var]
        elif node.op_type in _SAME_RANK:
            ranks[out] = known[0]  # type: ignore[assignment]
        elif node.op_type in ("MatMul", "FusedMatMul", "MatMulIntegerToFloat", "Transpose"):
            ranks[out] = max(known)  # type: ignore[type-var]
        elif node.op_type == "Reshape":
            entries = _shape_vector(node.input[1], consts, producers)
            if entries is not None:
                ranks[out] = len(entries)
    return ranks


def _fuse_attention(proto: Any) -> int:
    """Replace each multi-head self-attention core by ONNX Runtime's ``MultiHeadAttention`` (CPU).

    The pattern is what ``ORT_ENABLE_EXTENDED`` leaves of a BERT-style layer:
    ``q, k, v`` (``[batch, seq, hidden]``, projections of one tensor) each
    reshaped to ``[batch, seq, heads, head_size]`` and transposed, ``FusedMatMul``
    (scale ``alpha``), an optional additive mask ``[batch, 1|heads, 1|seq, seq]``,
    ``Softmax`` over the last axis, ``MatMul`` with ``v``, transposed back and
    reshaped to ``[batch, seq, hidden]`` (optionally through a per-tensor
    QuantizeLinear, which then quantizes the fused output instead: per tensor,
    the layout does not matter). The fused kernel computes the same sums (the
    mask becomes its ``attention_bias``, broadcast over the query axis once per
    mask); it skips four transposes and a mask ``Add`` over every score. A core
    that differs anywhere is left alone. Returns how many were fused.

    A masked core becomes an ``If`` on "every mask entry is zero" (computed once
    per mask; NaN and -0.0 count as set): then ``MultiHeadAttention`` without the
    mask, else with it. Adding an all-zero mask changes no score, so both branches
    compute the same function; without a mask ONNX Runtime runs a faster kernel
    (its sums in another order, so outputs agree to float rounding rather than
    bit for bit). This is what Hugging Face's SDPA attention does in torch when
    no token is padded. The masked branch gives the unfused graph's outputs bit
    for bit.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    nodes, producers, readers, graph_outputs = _graph_index(graph)
    consts = _const_values(graph)
    elem_types: dict[str, int] = {}
    ranks = _tensor_ranks(proto, elem_types)

    def only(name: str, op: str, domain: tuple[str, ...] = ("", "ai.onnx")) -> Any:
        users = readers.get(name, [])
        if name in graph_outputs or len(users) != 1 or users[0].op_type != op or users[0].domain not in domain:
            return None
        return users[0]

    def made_by(name: str, op: str, domain: tuple[str, ...] = ("", "ai.onnx")) -> Any:
        node = producers.get(name)
        if node is None or node.op_type != op or node.domain not in domain or len(readers.get(name, [])) != 1:
            return None
        return node if name not in graph_outputs else None

    def split_heads(name: str, perm: list[int]) -> tuple[str, int, int] | None:
        """``name`` = Transpose(perm, Reshape(x, [B, S, heads, size])): ``(x, heads, size)``."""
        transpose = made_by(name, "Transpose")
        if transpose is None or list(_attr(transpose, "perm", [])) != perm:
            return None
        reshape = made_by(transpose.input[0], "Reshape")
        if reshape is None or ranks.get(reshape.input[0]) != 3:
            return None
        dims = _shape_vector(reshape.input[1], consts, producers)
        if dims is None or len(dims) != 4 or dims[2] is None or dims[3] is None:
            return None
        heads, size = dims[2], dims[3]
        if -1 in (heads, size):  # one of them inferred from the projection's width
            width = out_features(reshape.input[0])
            known = size if heads == -1 else heads
            if width is None or known <= 0 or width % known:
                return None
            heads, size = (width // size, size) if heads == -1 else (heads, width // heads)
        if min(heads, size) <= 0:
            return None
        return reshape.input[0], heads, size

    def projection(name: str) -> Any:
        """The matmul with a constant 2-D weight that produced ``name`` (through a constant bias ``Add``)."""
        node = producers.get(name)
        if node is not None and node.op_type == "Add":
            rest = [x for x in node.input if x not in consts]
            return projection(rest[0]) if len(rest) == 1 else None
        if node is None or node.op_type not in ("MatMul", "MatMulIntegerToFloat") or len(node.input) < 2:
            return None
        weight = consts.get(node.input[1])
        return node if weight is not None and weight.ndim == 2 else None

    def out_features(name: str) -> int | None:
        node = projection(name)
        return None if node is None else int(consts[node.input[1]].shape[1])

    new_nodes: dict[int, list[Any]] = {}  # id(final node of a core) -> nodes that replace it
    remove: set[int] = set()
    biases: dict[str, tuple[str, str]] = {}  # mask -> (its [B, 1|heads, T, T] bias, "it is all zero")
    fused = 0
    for softmax in nodes:
        if softmax.op_type != "Softmax" or _attr(softmax, "axis", -1) not in (-1, 3):
            continue
        scores, mask = softmax.input[0], None
        add = made_by(scores, "Add")
        if add is not None:
            for i in (0, 1):
                if made_by(add.input[i], "FusedMatMul", ("com.microsoft",)) is not None:
                    scores, mask = add.input[i], add.input[1 - i]
            if mask is None or ranks.get(mask) != 4 or elem_types.get(mask) != TensorProto.FLOAT:
                continue  # (the branches of the mask's If below are typed float)
        qk = made_by(scores, "FusedMatMul", ("com.microsoft",))
        if qk is None or any(_attr(qk, a, 0) for a in ("transA", "transBatchA", "transBatchB")):
            continue
        q = split_heads(qk.input[0], [0, 2, 1, 3])
        k = split_heads(qk.input[1], [0, 2, 1, 3] if _attr(qk, "transB", 0) else [0, 2, 3, 1])
        pv = only(softmax.output[0], "MatMul")
        if q is None or k is None or pv is None or pv.input[0] != softmax.output[0]:
            continue
        v = split_heads(pv.input[1], [0, 2, 1, 3])
        if v is None or not q[1:] == k[1:] == v[1:]:
            continue
        heads = q[1]
        projections = [projection(x) for x in (q[0], k[0], v[0])]
        sources = {None if node is None else node.input[0] for node in projections}
        if len(sources) != 1 or None in sources:  # self-attention: one input projected three times
            continue
        chain = [pv]
        quant = only(pv.output[0], "QuantizeLinear")
        if quant is not None:
            scale = consts.get(quant.input[1])
            if scale is None or np.asarray(scale).size != 1:
                continue
            chain.append(quant)
        merge = only(chain[-1].output[0], "Transpose")
        if merge is None or list(_attr(merge, "perm", [])) != [0, 2, 1, 3]:
            continue
        reshape = only(merge.output[0], "Reshape")
        dims = _shape_vector(reshape.input[1], consts, producers) if reshape is not None else None
        if dims is None or len(dims) != 3 or dims[2] not in (None, -1, heads * q[2]):
            continue
        core = [softmax, qk, pv, merge, reshape] + chain[1:] + ([add] if add is not None else [])
        for name in (qk.input[0], qk.input[1], pv.input[1]):
            transpose = producers[name]
            core += [transpose, producers[transpose.input[0]]]
        if any(id(n) in remove for n in core):
            continue
        prefix = reshape.output[0]
        qkv = [q[0], k[0], v[0]]
        new: list[Any] = []
        attention_out = reshape.output[0] if quant is None else prefix + "_attention"
        attributes = {"num_heads": heads, "scale": float(_attr(qk, "alpha", 1.0))}
        if mask is None:
            new.append(helper.make_node("MultiHeadAttention", qkv, [attention_out], domain="com.microsoft",
                                        name=prefix + "_MultiHeadAttention", **attributes))
        else:
            if mask not in biases:  # [B, 1|heads, 1|T, T] -> [B, 1|heads, T, T]: the kernel wants the query axis
                one = prefix + "_one"
                graph.initializer.append(numpy_helper.from_array(np.ones(1, np.int64), one))
                index = prefix + "_index3"
                graph.initializer.append(numpy_helper.from_array(np.array([3], np.int64), index))
                zero = prefix + "_zero"
                graph.initializer.append(numpy_helper.from_array(np.zeros((), np.int32), zero))
                new += [
                    helper.make_node("Shape", [mask], [prefix + "_mask_shape"]),
                    helper.make_node("Gather", [prefix + "_mask_shape", index], [prefix + "_seq"], axis=0),
                    helper.make_node("Concat", [one, one, prefix + "_seq", one], [prefix + "_bias_shape"], axis=0),
                    helper.make_node("Expand", [mask, prefix + "_bias_shape"], [prefix + "_bias"]),
                    # the mask adds nothing when every entry is zero (no padding): NaN and -0.0 count as set
                    helper.make_node("Cast", [mask], [prefix + "_mask_set"], to=TensorProto.BOOL),
                    helper.make_node("Cast", [prefix + "_mask_set"], [prefix + "_mask_set_int"], to=TensorProto.INT32),
                    helper.make_node("ReduceMax", [prefix + "_mask_set_int"], [prefix + "_mask_any"], keepdims=0),
                    helper.make_node("Equal", [prefix + "_mask_any", zero], [prefix + "_mask_empty"]),
                ]
                biases[mask] = (prefix + "_bias", prefix + "_mask_empty")
            bias, empty = biases[mask]

            def branch(name: str, node_inputs: list[str]) -> Any:
                out = f"{prefix}_{name}"
                node = helper.make_node("MultiHeadAttention", node_inputs, [out], domain="com.microsoft",
                                        name=f"{prefix}_MultiHeadAttention_{name}", **attributes)
                return helper.make_graph([node], f"{prefix}_{name}", [],
                                         [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)])

            new.append(helper.make_node("If", [empty], [attention_out], name=prefix + "_skip_empty_mask",
                                        then_branch=branch("unmasked", qkv),
                                        else_branch=branch("masked", [*qkv, "", "", bias])))
        if quant is not None:
            new.append(helper.make_node("QuantizeLinear", [attention_out, *quant.input[1:]], [reshape.output[0]]))
        remove.update(id(n) for n in core)
        new_nodes[id(reshape)] = new
        fused += 1
    if fused:
        order: list[Any] = []
        for node in nodes:
            if id(node) in new_nodes:
                order.extend(new_nodes[id(node)])
            elif id(node) not in remove:
                order.append(node)
        _set_nodes(graph, order)
        if not any(op.domain == "com.microsoft" for op in proto.opset_import):
            proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        _prune_dead_nodes(graph)
        _drop_unused_initializers(graph)
    return fused


def ort_optimize(source: Any, path: str | os.PathLike[str] | None = None, *, fuse_attention: bool = True) -> Any:
    """ONNX Runtime's own graph optimisation of an exported model, plus the fusions it leaves out.

    ONNX Runtime rewrites a QDQ graph when it loads it (QuantizeLinear →
    integer kernel → float, ``MatMulIntegerToFloat`` for a Linear whose output
    stays float) but leaves each Linear's bias as a separate ``Add`` over the
    whole activation, although ``MatMulIntegerToFloat`` takes a bias input.
    This runs ONNX Runtime's hardware-independent (``ORT_ENABLE_EXTENDED``)
    optimisation offline, then moves every such bias into its matmul and
    (``fuse_attention``) replaces each BERT-style self-attention core
    (reshape/transpose of Q, K and V, scaled scores, additive mask, softmax,
    context) by one ``MultiHeadAttention`` node, run without the mask (through
    an ``If``) when no token is padded. Outputs are unchanged: bit for bit
    (tests check it) except that a batch without padding takes the unmasked
    kernel, equal to float rounding (about 1e-6 relative in fp32; in an int8
    graph such a difference can move a value across a rounding boundary, one
    quantization step). The result uses ``com.microsoft`` operators, so it is
    for ONNX Runtime (CPU) only: keep the :func:`export_qdq` file as the
    portable artefact.

    Args:
        source: an ``onnx.ModelProto``, ONNX bytes or a path.
        path: where to write the optimised model (atomically); ``None`` writes nothing.
        fuse_attention: fuse self-attention cores into ``MultiHeadAttention``
            (``proto.metadata_props`` records how many under ``torchslim.fused_attention``);
            ``False`` keeps every output bit-identical to the unoptimised graph.

    Returns:
        The optimised ``onnx.ModelProto``.

    Example:
        >>> from torchslim.quant import quantize_
        >>> qmodel = ts.create_model("lenet300", in_features=64)
        >>> x = torch.randn(8, 1, 8, 8)
        >>> report = quantize_(qmodel, {"weight": {"bits": 8}}, calibration=[x])
        >>> proto = export_qdq(qmodel, x[:1])
        >>> fast = ort_optimize(proto)
        >>> qdq_summary(fast)["QGemm"]                     # the hidden Linears as integer GEMMs
        2
        >>> torch.equal(OrtModel(fast, threads=2)(x), OrtModel(proto, threads=2)(x))
        True
    """
    import tempfile

    import onnx
    import onnxruntime as ort

    if hasattr(source, "SerializeToString"):
        source = source.SerializeToString()
    elif isinstance(source, (str, os.PathLike)):
        source = Path(source).read_bytes()
    elif not isinstance(source, (bytes, bytearray)):
        raise TorchslimError(f"ort_optimize takes an onnx.ModelProto, bytes or a path, got {type(source).__name__}")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "optimized.onnx")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = out
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        ort.InferenceSession(bytes(source), sess_options=options, providers=["CPUExecutionProvider"])
        proto = onnx.load(out)
    _fuse_matmul_bias(proto.graph)
    if fuse_attention:
        fused = _fuse_attention(proto)
        entry = proto.metadata_props.add()
        entry.key, entry.value = "torchslim.fused_attention", str(fused)
    if path is not None:
        atomic_write_bytes(Path(path), proto.SerializeToString())
    return proto


def qdq_summary(proto: Any) -> dict[str, int]:
    """Count of each operator type in an ONNX model, nodes inside ``If``/``Loop`` branches included
    (an ``If`` whose two branches each hold one node counts that node's type twice).

    Example:
        >>> qdq_summary(export_fp32(nn.Linear(4, 2), torch.randn(1, 4)))
        {'Gemm': 1}
    """
    counts: dict[str, int] = {}

    def visit(graph: Any) -> None:
        for node in graph.node:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
            for attribute in node.attribute:
                for sub in list(attribute.graphs) + ([attribute.g] if attribute.HasField("g") else []):
                    visit(sub)

    visit(proto.graph)
    return counts


class OrtModel:
    """A callable ONNX Runtime session: tensors in, tensors out (like the torch model).

    Args:
        source: an ``onnx.ModelProto``, ONNX bytes or a path.
        threads: intra-op threads (``None``: ``torch.get_num_threads()``).

    Example:
        >>> ort_model = OrtModel(export_fp32(nn.Linear(4, 2), torch.randn(1, 4)), threads=1)
        >>> ort_model(torch.zeros(3, 4)).shape
        torch.Size([3, 2])
    """

    def __init__(self, source: Any, *, threads: int | None = None) -> None:
        if hasattr(source, "SerializeToString"):
            source = source.SerializeToString()
        self.session = ort_session(source, threads=threads)

    def __call__(self, inputs: ExampleInput) -> torch.Tensor | tuple[torch.Tensor, ...]:
        outs = self.session.run(None, ort_feed(self.session, inputs))
        tensors = tuple(torch.from_numpy(np.asarray(o)) for o in outs)
        return tensors[0] if len(tensors) == 1 else tensors

    @torch.no_grad()
    def accuracy(self, loader: Any) -> float:
        """Top-1 accuracy over ``(inputs, labels)`` batches.

        Example:
            >>> ort_model = OrtModel(export_fp32(nn.Linear(4, 2), torch.randn(1, 4)))
            >>> ort_model.accuracy([(torch.zeros(2, 4), torch.tensor([0, 1]))])   # same logits twice: one right
            0.5
        """
        correct = total = 0
        for x, y in loader:
            out = self(x)
            logits = out[0] if isinstance(out, tuple) else out
            correct += int((logits.argmax(-1) == y).sum())
            total += int(y.numel())
        if total == 0:
            raise TorchslimError("the loader is empty")
        return correct / total
