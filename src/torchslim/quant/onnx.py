"""ONNX export (fp32 and QDQ int8 with torchslim's own scales) and an ONNX Runtime session wrapper.

The QDQ export runs the quantized simulation through torch's ONNX exporter,
where every :class:`~torchslim.quant.fake.FakeQuantize` emits a
QuantizeLinear/DequantizeLinear pair carrying its own scale and zero point.
Weights are then rewritten as integer initializers computed with
:func:`torchslim.quant.affine.quantize` (bit-exact with ONNX), feeding a
DequantizeLinear, which is the pattern ONNX Runtime turns into integer kernels
(QLinearConv, QLinearMatMul, QLinearAdd...). Bias stays float.

Example:
    >>> proto = export_qdq(model, example_input)  # doctest: +SKIP
    >>> OrtModel(proto, threads=2)(x)  # doctest: +SKIP
"""

from __future__ import annotations

import os
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
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return folded


def _dedupe_quantize_linear(graph: Any) -> int:
    """Merge QuantizeLinear nodes that read the same tensor with equal scale and zero point.

    Each quantized layer carries its own input quantizer, so layers reading one
    tensor (a transformer's Q, K and V projections) export one QuantizeLinear
    each; where their calibrated parameters are equal the integers are identical,
    and one node serves every consumer. Returns how many nodes were removed.
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
        if node.op_type != "QuantizeLinear" or node.input[0] in consts:
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
        nodes = [graph.node[i] for i in order]
        copies = [type(n)() for n in nodes]
        for dst, src in zip(copies, nodes):
            dst.CopyFrom(src)
        del graph.node[:]
        graph.node.extend(copies)
    return len(before)


def _prune_dead_nodes(graph: Any) -> None:
    """Remove nodes whose outputs nobody uses (repeat until stable)."""
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
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

    Returns:
        The ``onnx.ModelProto``.

    Raises:
        TorchslimError: the model is not quantized, has non-8-bit or uncalibrated activations.

    Example:
        >>> proto = export_qdq(qmodel, x[:1], "model.int8.onnx")  # doctest: +SKIP
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
    _dedupe_quantize_linear(proto.graph)
    _hoist_quantize_linear(proto.graph)
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


def ort_optimize(source: Any, path: str | os.PathLike[str] | None = None) -> Any:
    """ONNX Runtime's own graph optimisation of an exported model, plus the fusion it leaves out.

    ONNX Runtime rewrites a QDQ graph when it loads it (QuantizeLinear →
    integer kernel → float, ``MatMulIntegerToFloat`` for a Linear whose output
    stays float) but leaves each Linear's bias as a separate ``Add`` over the
    whole activation, although ``MatMulIntegerToFloat`` takes a bias input.
    This runs ONNX Runtime's hardware-independent (``ORT_ENABLE_EXTENDED``)
    optimisation offline, then moves every such bias into its matmul. Outputs
    are unchanged (tests check them bit for bit); the result uses
    ``com.microsoft`` operators, so it is for ONNX Runtime (CPU) only: keep the
    :func:`export_qdq` file as the portable artefact.

    Args:
        source: an ``onnx.ModelProto``, ONNX bytes or a path.
        path: where to write the optimised model (atomically); ``None`` writes nothing.

    Returns:
        The optimised ``onnx.ModelProto``.

    Example:
        >>> fast = ort_optimize(export_qdq(qmodel, x[:1]))  # doctest: +SKIP
        >>> OrtModel(fast, threads=2)(x)  # doctest: +SKIP
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
    if path is not None:
        atomic_write_bytes(Path(path), proto.SerializeToString())
    return proto


def qdq_summary(proto: Any) -> dict[str, int]:
    """Count of each operator type in an ONNX model.

    Example:
        >>> qdq_summary(export_fp32(nn.Linear(4, 2), torch.randn(1, 4)))
        {'Gemm': 1}
    """
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
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
            >>> ort_model.accuracy([(torch.zeros(2, 4), torch.tensor([0, 1]))])  # doctest: +SKIP
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
