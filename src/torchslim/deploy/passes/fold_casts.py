"""Constant folding the exporter leaves undone: ``Constant`` nodes, and ``Cast``/``Identity`` of constants.

Example:
    >>> import onnx
    >>> from onnx import helper
    >>> constant = helper.make_node("Constant", [], ["c"], value=helper.make_tensor("v", 1, [1], [2.0]))
    >>> cast = helper.make_node("Cast", ["c"], ["i"], to=onnx.TensorProto.INT64)
    >>> graph = helper.make_graph([constant, cast], "g", [], [])
    >>> fold_casts(graph)
    >>> len(graph.node), sorted(init.name for init in graph.initializer)
    (0, ['c', 'i'])
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from torchslim.deploy.onnx_graph import const_values

__all__ = ["fold_casts"]


def fold_casts(graph: onnx.GraphProto) -> None:
    """Turn Constant nodes, and Cast/Identity nodes of constants, into initializers."""
    consts = const_values(graph)
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
