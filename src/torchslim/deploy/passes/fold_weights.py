"""Weight quantizers folded into integer initializers computed with torchslim's own affine math.

The exporter writes each weight as a float constant through QuantizeLinear →
DequantizeLinear. Here every QuantizeLinear of a constant becomes an int8/uint8
initializer computed with :func:`torchslim.quant.affine.quantize` (bit-exact with
ONNX's rounding), read directly by the DequantizeLinear: the pattern ONNX
Runtime turns into integer kernels.

Example:
    >>> from onnx import helper, numpy_helper
    >>> w = numpy_helper.from_array(np.array([0.5, -1.0], np.float32), "w")
    >>> scale = numpy_helper.from_array(np.array(0.5, np.float32), "s")
    >>> zp = numpy_helper.from_array(np.array(0, np.int8), "zp")
    >>> y = helper.make_tensor_value_info("y", 1, [2])
    >>> graph = helper.make_graph([helper.make_node("QuantizeLinear", ["w", "s", "zp"], ["q"]),
    ...                            helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"])],
    ...                           "g", [], [y], [w, scale, zp])
    >>> proto = helper.make_model(graph)
    >>> fold_weight_quantizers(proto)
    1
    >>> numpy_helper.to_array(next(i for i in proto.graph.initializer if i.name == "q_int"))
    array([ 1, -2], dtype=int8)
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from torchslim.deploy.onnx_graph import const_values, drop_unused_initializers, prune_dead_nodes
from torchslim.deploy.passes.fold_casts import fold_casts
from torchslim.quant.affine import QParams, quantize

__all__ = ["fold_weight_quantizers"]


def fold_weight_quantizers(proto: onnx.ModelProto) -> int:
    """Replace QuantizeLinear(constant) by an integer initializer computed with our affine math.

    Constants and casts of constants are folded first (:func:`fold_casts`).
    Returns how many quantizers were folded.
    """
    graph = proto.graph
    fold_casts(graph)
    consts = const_values(graph)
    producers = {out: node for node in graph.node for out in node.output}
    new_inits = []
    remove = []
    folded = 0

    def resolve(name: str) -> np.ndarray | None:
        if name in consts:
            return np.array(consts[name])
        src = producers.get(name)
        if src is not None and src.op_type == "Cast":
            inner = resolve(src.input[0])
            if inner is not None:
                to = next(a.i for a in src.attribute if a.name == "to")
                return inner.astype(helper.tensor_dtype_to_np_dtype(to))
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
    prune_dead_nodes(graph)
    graph.initializer.extend(new_inits)
    drop_unused_initializers(graph)
    return folded
