"""Helpers the ONNX rewrite passes share: constants, readers and producers, attributes, rebuilding a graph.

A pass reads the graph through these (:func:`graph_index`, :func:`const_values`,
:func:`attr`), keys its edits by ``id(node)`` and rebuilds ``graph.node`` once
at the end (:func:`set_nodes`), then drops what no node reads any more
(:func:`prune_dead_nodes`, :func:`drop_unused_initializers`).

Example:
    >>> import onnx
    >>> from onnx import helper
    >>> node = helper.make_node("Relu", ["x"], ["y"])
    >>> graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
    ...                           [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])])
    >>> qdq_summary(helper.make_model(graph))
    {'Relu': 1}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = [
    "BROADCASTING",
    "SAME_RANK",
    "IntConvWeights",
    "attr",
    "const_values",
    "drop_unused_initializers",
    "graph_index",
    "int_conv_weights",
    "node_reads",
    "prune_dead_nodes",
    "qdq_summary",
    "set_nodes",
    "shape_vector",
    "subgraphs",
    "tensor_ranks",
]

GraphIndex = tuple[list[Any], dict[str, Any], dict[str, list[Any]], set[str]]


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs a node holds in its attributes (an ``If``'s branches, a ``Loop``'s body).

    Example:
        >>> subgraphs(onnx.helper.make_node("Relu", ["x"], ["y"]))
        []
    """
    graphs: list[onnx.GraphProto] = []
    for attribute in node.attribute:
        graphs.extend(list(attribute.graphs) + ([attribute.g] if attribute.HasField("g") else []))
    return graphs


def qdq_summary(proto: onnx.ModelProto) -> dict[str, int]:
    """Count of each operator type in an ONNX model, nodes inside ``If``/``Loop`` branches included
    (an ``If`` whose two branches each hold one node counts that node's type twice).

    Example:
        >>> from torchslim.deploy import export_fp32
        >>> qdq_summary(export_fp32(nn.Linear(4, 2), torch.randn(1, 4)))
        {'Gemm': 1}
    """
    counts: dict[str, int] = {}

    def visit(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
            for sub in subgraphs(node):
                visit(sub)

    visit(proto.graph)
    return counts


def const_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """The value of every initializer and of every ``Constant`` node's output, by tensor name.

    Example:
        >>> graph = onnx.helper.make_graph([], "g", [], [], [onnx.numpy_helper.from_array(np.ones(2, np.float32), "w")])
        >>> const_values(graph)["w"]
        array([1., 1.], dtype=float32)
    """
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attribute.t)
    return values


def node_reads(node: onnx.NodeProto) -> list[str]:
    """Every tensor name ``node`` reads: its inputs, and (for ``If``/``Loop``/``Scan``) every name its
    subgraphs' nodes read, which may come from the enclosing graph (a superset is safe: the passes use it to
    keep tensors alive and to count readers).

    Example:
        >>> node_reads(onnx.helper.make_node("Add", ["a", "b"], ["c"]))
        ['a', 'b']
    """
    names = list(node.input)
    for sub in subgraphs(node):
        for inner in sub.node:
            names.extend(node_reads(inner))
        names.extend(o.name for o in sub.output)
    return names


def set_nodes(graph: onnx.GraphProto, nodes: list[Any]) -> None:
    """Replace ``graph.node`` by ``nodes`` (copied first: rebuilding a repeated field would copy them anyway).

    Example:
        >>> graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [], [])
        >>> set_nodes(graph, [onnx.helper.make_node("Neg", ["x"], ["y"])])
        >>> [n.op_type for n in graph.node]
        ['Neg']
    """
    copies = [type(n)() for n in nodes]
    for dst, src in zip(copies, nodes):
        dst.CopyFrom(src)
    del graph.node[:]
    graph.node.extend(copies)


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Remove the initializers no node (nor subgraph) reads and no graph output names.

    Example:
        >>> graph = onnx.helper.make_graph([], "g", [], [], [onnx.numpy_helper.from_array(np.ones(1), "unused")])
        >>> drop_unused_initializers(graph)
        >>> len(graph.initializer)
        0
    """
    used = {i for n in graph.node for i in node_reads(n)} | {o.name for o in graph.output}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def prune_dead_nodes(graph: onnx.GraphProto) -> None:
    """Remove nodes whose outputs nobody uses (repeat until stable).

    Example:
        >>> y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
        >>> graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"]),
        ...                                 onnx.helper.make_node("Neg", ["x"], ["unused"])], "g", [], [y])
        >>> prune_dead_nodes(graph)
        >>> [n.op_type for n in graph.node]
        ['Relu']
    """
    while True:
        used = {i for n in graph.node for i in node_reads(n)} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            return
        for n in dead:
            graph.node.remove(n)


def graph_index(graph: onnx.GraphProto) -> GraphIndex:
    """``(nodes, producer of each tensor, readers of each tensor, graph output names)``.

    The node list is one set of wrappers: passes key their edits by ``id(node)``
    and rebuild the graph once at the end (see :func:`set_nodes`).

    Example:
        >>> graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [], [])
        >>> nodes, producers, readers, outputs = graph_index(graph)
        >>> producers["y"].op_type, [n.op_type for n in readers["x"]], outputs
        ('Relu', ['Relu'], set())
    """
    all_nodes = list(graph.node)
    producers = {out: node for node in all_nodes for out in node.output}
    readers: dict[str, list[Any]] = {}
    for node in all_nodes:
        for name in node_reads(node):
            readers.setdefault(name, []).append(node)
    return all_nodes, producers, readers, {o.name for o in graph.output}


def attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """The value of attribute ``name`` of ``node``, or ``default`` when it is not set.

    Example:
        >>> softmax = onnx.helper.make_node("Softmax", ["x"], ["y"], axis=1)
        >>> attr(softmax, "axis"), attr(softmax, "keepdims", 0)
        (1, 0)
    """
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


@dataclass
class IntConvWeights:
    """A Conv's weights as an integer constant through a DequantizeLinear read only by that conv."""

    dq: Any  # the weights' DequantizeLinear
    values: np.ndarray  # (Cout, Cin, kh, kw) int8/uint8
    scale: np.ndarray
    zero_point: np.ndarray | None  # as stored (None: no zero-point input)
    per_channel: bool  # a 1-D scale is per axis (axis 0), even of length 1
    zp_per_out: np.ndarray  # (Cout,) zero point of each output channel


def int_conv_weights(conv: onnx.NodeProto, producers: dict[str, Any], readers: dict[str, list[Any]],
                     consts: dict[str, np.ndarray]) -> IntConvWeights | None:
    """The integer weights of a group-1 2-D ``conv`` (per tensor or per output channel), or ``None``."""
    dq_w = producers.get(conv.input[1])
    if dq_w is None or dq_w.op_type != "DequantizeLinear" or len(readers.get(dq_w.output[0], [])) != 1:
        return None
    w_int, w_scale = consts.get(dq_w.input[0]), consts.get(dq_w.input[1])
    has_zp = len(dq_w.input) > 2 and bool(dq_w.input[2])
    w_zp = consts.get(dq_w.input[2]) if has_zp else None
    if w_int is None or w_scale is None or w_int.ndim != 4 or w_int.dtype not in (np.int8, np.uint8):
        return None
    if (has_zp and w_zp is None) or attr(conv, "group", 1) != 1:
        return None
    cout = w_int.shape[0]
    per_channel = np.asarray(w_scale).ndim == 1
    if per_channel and (w_scale.size != cout or attr(dq_w, "axis", 1) != 0):
        return None
    if not per_channel and w_scale.size != 1:
        return None
    if w_zp is None:
        zp = np.zeros(cout, w_int.dtype)
    else:
        zp = np.broadcast_to(np.asarray(w_zp, w_int.dtype).reshape(-1), (cout,))
    return IntConvWeights(dq_w, w_int, np.asarray(w_scale), w_zp, per_channel, zp)


BROADCASTING = ("Add", "Sub", "Mul", "Div", "Where")
SAME_RANK = (
    "BiasGelu", "Cast", "DequantizeLinear", "Erf", "FastGelu", "Gelu", "LayerNormalization", "QuantizeLinear",
    "Relu", "Sigmoid", "SkipLayerNormalization", "Softmax", "Tanh",
)


def shape_vector(name: str, consts: dict[str, np.ndarray], producers: dict[str, Any]) -> list[int | None] | None:
    """A 1-D shape vector's entries: a constant's values, or a Concat of constants and unsqueezed scalars
    (``None`` for an entry computed at run time, as ``Unsqueeze(Gather(Shape(x)))`` exports a dynamic dim).

    Example:
        >>> shape_vector("s", {"s": np.array([2, -1, 4])}, {})
        [2, -1, 4]
    """
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
        elif (src is not None and src.op_type == "Unsqueeze" and len(src.input) > 1
              and np.asarray(consts.get(src.input[1], [0, 0])).size == 1):
            value = consts.get(src.input[0])  # a scalar unsqueezed along one axis
            out.append(None if value is None or np.asarray(value).size != 1 else int(np.asarray(value).reshape(-1)[0]))
        else:
            return None
    return out


def tensor_ranks(proto: onnx.ModelProto, elem_types: dict[str, int] | None = None) -> dict[str, int]:
    """Rank of each tensor ONNX shape inference knows, plus the float outputs of ONNX Runtime's matmuls
    (``elem_types``, when given, receives the element type of each tensor inference typed).

    Shape inference stops at ``com.microsoft`` operators and at anything after
    them; from there on, elementwise operators take their inputs' largest rank,
    LayerNormalization, quantizers, activations and transposes keep their input's,
    a matmul takes the larger, and a Reshape the length of a shape vector built
    from constants and unsqueezed scalars.

    Example:
        >>> from torchslim.deploy import export_fp32
        >>> tensor_ranks(export_fp32(nn.Linear(4, 2), torch.randn(1, 4)))["output"]
        2
    """
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
    consts = const_values(proto.graph)
    producers = {out: node for node in proto.graph.node for out in node.output}
    for node in proto.graph.node:  # topological order: inputs are ranked first
        out = node.output[0] if node.output else ""
        known = [ranks.get(name) for name in node.input if name]
        if out in ranks or not known or None in known:
            continue
        input_ranks = [rank for rank in known if rank is not None]
        if node.op_type in BROADCASTING:
            ranks[out] = max(input_ranks)
        elif node.op_type in SAME_RANK:
            ranks[out] = input_ranks[0]
        elif node.op_type in ("MatMul", "FusedMatMul", "MatMulIntegerToFloat", "Transpose"):
            ranks[out] = max(input_ranks)
        elif node.op_type == "Reshape":
            entries = shape_vector(node.input[1], consts, producers)
            if entries is not None:
                ranks[out] = len(entries)
    return ranks
