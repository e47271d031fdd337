"""A Linear's bias ``Add`` moved into the ``MatMulIntegerToFloat`` that feeds it (its 7th input).

ONNX Runtime's offline optimisation turns a QDQ Linear whose output stays float
into ``MatMulIntegerToFloat`` but leaves the bias as a separate ``Add`` over the
whole activation, although the kernel takes a bias input.

Example:
    >>> from onnx import helper, numpy_helper
    >>> b = numpy_helper.from_array(np.zeros(2, np.float32), "b")
    >>> y = helper.make_tensor_value_info("y", 1, None)
    >>> mm = helper.make_node("MatMulIntegerToFloat", ["a", "w", "sa", "sw"], ["m"], domain="com.microsoft")
    >>> graph = helper.make_graph([mm, helper.make_node("Add", ["m", "b"], ["y"])], "g", [], [y], [b])
    >>> fuse_matmul_bias(graph)
    1
    >>> list(graph.node[0].input), list(graph.node[0].output)
    (['a', 'w', 'sa', 'sw', '', '', 'b'], ['y'])
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["fuse_matmul_bias"]


def fuse_matmul_bias(graph: onnx.GraphProto) -> int:
    """Move a constant 1-D bias ``Add`` into the ``MatMulIntegerToFloat`` that feeds it (its 7th input).

    Returns how many were fused.
    """
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
