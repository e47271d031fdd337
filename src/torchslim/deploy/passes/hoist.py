"""A per-tensor QuantizeLinear moved above the shape-only node (Flatten, Reshape...) that feeds it.

Example:
    >>> from onnx import helper, numpy_helper
    >>> s = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    >>> y = helper.make_tensor_value_info("y", 1, None)
    >>> graph = helper.make_graph([helper.make_node("GlobalAveragePool", ["x"], ["p"]),
    ...                            helper.make_node("Flatten", ["p"], ["f"]),
    ...                            helper.make_node("QuantizeLinear", ["f", "s"], ["y"])], "g", [], [y], [s])
    >>> hoist_quantize_linear(graph)
    1
    >>> [n.op_type for n in graph.node]
    ['GlobalAveragePool', 'QuantizeLinear', 'Flatten']
"""

from __future__ import annotations

import numpy as np
import onnx

from torchslim.deploy.onnx_graph import const_values, set_nodes

__all__ = ["SHAPE_ONLY", "hoist_quantize_linear"]

SHAPE_ONLY = ("Flatten", "Reshape", "Squeeze", "Unsqueeze")


def hoist_quantize_linear(graph: onnx.GraphProto) -> int:
    """Move a per-tensor QuantizeLinear above the shape-only node (Flatten, Reshape...) that feeds it.

    Quantizing per tensor is elementwise, so ``Q(flatten(x)) == flatten(Q(x))``
    bit for bit; with Q right after the op that produced ``x`` (a global
    average pool before a classifier) ONNX Runtime can run that op in integers
    (``QLinearGlobalAveragePool``) instead of dequantize → float op → quantize.
    Returns how many were moved.
    """
    consts = const_values(graph)
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
        if shape_op is None or shape_op.op_type not in SHAPE_ONLY or shape_op.domain not in ("", "ai.onnx"):
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
        set_nodes(graph, [graph.node[i] for i in order])
    return len(before)
