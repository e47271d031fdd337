"""One QuantizeLinear (or smoothing ``Mul``) per tensor where several read it with equal constant operands.

Example:
    >>> from onnx import helper, numpy_helper
    >>> s = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    >>> graph = helper.make_graph([helper.make_node("QuantizeLinear", ["x", "s"], ["q1"]),
    ...                            helper.make_node("QuantizeLinear", ["x", "s"], ["q2"]),
    ...                            helper.make_node("Add", ["q1", "q2"], ["y"])], "g", [], [], [s])
    >>> dedupe_quantize_linear(graph)
    1
    >>> list(graph.node[-1].input)
    ['q1', 'q1']
"""

from __future__ import annotations

from typing import Any

import onnx

from torchslim.deploy.onnx_graph import const_values

__all__ = ["dedupe_quantize_linear"]


def dedupe_quantize_linear(graph: onnx.GraphProto, op_type: str = "QuantizeLinear") -> int:
    """Merge QuantizeLinear (or ``op_type``) nodes that read the same tensor with equal constant operands.

    Each quantized layer carries its own input quantizer, so layers reading one
    tensor (a transformer's Q, K and V projections) export one QuantizeLinear
    each; where their calibrated parameters are equal the integers are identical,
    and one node serves every consumer. The same holds for the smoothing ``Mul``
    of layers that share one LayerNorm (``op_type="Mul"``, run first). Returns
    how many nodes were removed.
    """
    consts = const_values(graph)

    def key(node: Any) -> tuple[Any, ...]:
        parts: list[Any] = [node.input[0]]
        for name in node.input[1:]:
            value = consts.get(name)
            parts.append(name if value is None else (value.dtype.str, value.shape, value.tobytes()))
        parts.extend(attribute.SerializeToString() for attribute in node.attribute)
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
