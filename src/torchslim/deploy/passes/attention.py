"""BERT-style self-attention cores fused into ONNX Runtime's ``MultiHeadAttention`` (CPU).

Run by :func:`~torchslim.deploy.ort_optimize` on what ONNX Runtime's offline
optimisation leaves of a transformer layer.

Example:
    >>> import transformers
    >>> from torchslim.deploy import export_fp32, ort_optimize, qdq_summary
    >>> bert = transformers.BertModel(transformers.BertConfig(
    ...     vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64))
    >>> ids = torch.ones(1, 8, dtype=torch.long)
    >>> fused = ort_optimize(export_fp32(bert, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}))
    >>> qdq_summary(fused)["MultiHeadAttention"]      # one If: with and without the mask
    2
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from torchslim.deploy.onnx_graph import (
    attr,
    const_values,
    drop_unused_initializers,
    graph_index,
    prune_dead_nodes,
    set_nodes,
    shape_vector,
    tensor_ranks,
)

__all__ = ["fuse_attention"]

_ONNX = ("", "ai.onnx")
_MICROSOFT = ("com.microsoft",)
_HEADS_FIRST = [0, 2, 1, 3]  # [B, S, heads, size] <-> [B, heads, S, size]


class _Patterns:
    """The graph as the matcher reads it (index, constants, ranks) and the small patterns it looks for."""

    def __init__(self, proto: onnx.ModelProto) -> None:
        self.nodes, self.producers, self.readers, self.graph_outputs = graph_index(proto.graph)
        self.consts = const_values(proto.graph)
        self.elem_types: dict[str, int] = {}
        self.ranks = tensor_ranks(proto, self.elem_types)

    def only(self, name: str, op: str, domain: tuple[str, ...] = _ONNX) -> Any:
        """The one reader of ``name`` when it is an ``op`` (and ``name`` no graph output)."""
        users = self.readers.get(name, [])
        if name in self.graph_outputs or len(users) != 1 or users[0].op_type != op or users[0].domain not in domain:
            return None
        return users[0]

    def made_by(self, name: str, op: str, domain: tuple[str, ...] = _ONNX) -> Any:
        """The ``op`` that produced ``name`` when ``name`` has one reader and is no graph output."""
        node = self.producers.get(name)
        if node is None or node.op_type != op or node.domain not in domain or len(self.readers.get(name, [])) != 1:
            return None
        return node if name not in self.graph_outputs else None

    def split_heads(self, name: str, perm: list[int]) -> tuple[str, int, int] | None:
        """``name`` = Transpose(perm, Reshape(x, [B, S, heads, size])): ``(x, heads, size)``."""
        transpose = self.made_by(name, "Transpose")
        if transpose is None or list(attr(transpose, "perm", [])) != perm:
            return None
        reshape = self.made_by(transpose.input[0], "Reshape")
        if reshape is None or self.ranks.get(reshape.input[0]) != 3:
            return None
        dims = shape_vector(reshape.input[1], self.consts, self.producers)
        if dims is None or len(dims) != 4 or dims[2] is None or dims[3] is None:
            return None
        heads, size = dims[2], dims[3]
        if -1 in (heads, size):  # one of them inferred from the projection's width
            width = self.out_features(reshape.input[0])
            known = size if heads == -1 else heads
            if width is None or known <= 0 or width % known:
                return None
            heads, size = (width // size, size) if heads == -1 else (heads, width // heads)
        if min(heads, size) <= 0:
            return None
        return reshape.input[0], heads, size

    def projection(self, name: str) -> Any:
        """The matmul with a constant 2-D weight that produced ``name`` (through a constant bias ``Add``)."""
        node = self.producers.get(name)
        if node is not None and node.op_type == "Add":
            rest = [x for x in node.input if x not in self.consts]
            return self.projection(rest[0]) if len(rest) == 1 else None
        if node is None or node.op_type not in ("MatMul", "MatMulIntegerToFloat") or len(node.input) < 2:
            return None
        weight = self.consts.get(node.input[1])
        return node if weight is not None and weight.ndim == 2 else None

    def out_features(self, name: str) -> int | None:
        node = self.projection(name)
        return None if node is None else int(self.consts[node.input[1]].shape[1])


@dataclass
class _Core:
    """One matched attention core."""

    qkv: list[str]  # the [B, S, hidden] projections of Q, K and V
    heads: int
    qk: Any  # the scores' FusedMatMul (its alpha is the scale)
    mask: str | None  # the additive mask, [B, 1|heads, 1|S, S]
    quant: Any  # the per-tensor QuantizeLinear of the context, or None
    reshape: Any  # the final Reshape to [B, S, hidden]
    nodes: list[Any]  # every node the fused graph replaces


def _match_scores(p: _Patterns, softmax: Any) -> tuple[Any, Any, str | None] | None:
    """``(FusedMatMul of Q and K, the mask Add or None, the mask or None)`` under a last-axis Softmax."""
    if softmax.op_type != "Softmax" or attr(softmax, "axis", -1) not in (-1, 3):
        return None
    scores, mask = softmax.input[0], None
    add = p.made_by(scores, "Add")
    if add is not None:
        for i in (0, 1):
            if p.made_by(add.input[i], "FusedMatMul", _MICROSOFT) is not None:
                scores, mask = add.input[i], add.input[1 - i]
        if mask is None or p.ranks.get(mask) != 4 or p.elem_types.get(mask) != TensorProto.FLOAT:
            return None  # (the branches of the mask's If are typed float)
    qk = p.made_by(scores, "FusedMatMul", _MICROSOFT)
    if qk is None or any(attr(qk, a, 0) for a in ("transA", "transBatchA", "transBatchB")):
        return None
    return qk, add, mask


def _match_context(p: _Patterns, pv: Any, hidden: int) -> tuple[Any, Any, Any] | None:
    """``(QuantizeLinear or None, Transpose, Reshape)``: the context ``pv`` merged back to ``[B, S, hidden]``."""
    end = pv
    quant = p.only(pv.output[0], "QuantizeLinear")
    if quant is not None:
        scale = p.consts.get(quant.input[1])
        if scale is None or np.asarray(scale).size != 1:
            return None
        end = quant
    merge = p.only(end.output[0], "Transpose")
    if merge is None or list(attr(merge, "perm", [])) != _HEADS_FIRST:
        return None
    reshape = p.only(merge.output[0], "Reshape")
    dims = shape_vector(reshape.input[1], p.consts, p.producers) if reshape is not None else None
    if dims is None or len(dims) != 3 or dims[2] not in (None, -1, hidden):
        return None
    return quant, merge, reshape


def _match(p: _Patterns, softmax: Any) -> _Core | None:
    """The self-attention core around ``softmax``, or ``None`` where anything differs from the pattern."""
    scores = _match_scores(p, softmax)
    if scores is None:
        return None
    qk, add, mask = scores
    q = p.split_heads(qk.input[0], _HEADS_FIRST)
    k = p.split_heads(qk.input[1], _HEADS_FIRST if attr(qk, "transB", 0) else [0, 2, 3, 1])
    pv = p.only(softmax.output[0], "MatMul")
    if q is None or k is None or pv is None or pv.input[0] != softmax.output[0]:
        return None
    v = p.split_heads(pv.input[1], _HEADS_FIRST)
    if v is None or not q[1:] == k[1:] == v[1:]:
        return None
    sources = {None if node is None else node.input[0] for node in (p.projection(x) for x in (q[0], k[0], v[0]))}
    if len(sources) != 1 or None in sources:  # self-attention: one input projected three times
        return None
    context = _match_context(p, pv, q[1] * q[2])
    if context is None:
        return None
    quant, merge, reshape = context
    nodes = [softmax, qk, pv, merge, reshape] + [n for n in (quant, add) if n is not None]
    for name in (qk.input[0], qk.input[1], pv.input[1]):
        transpose = p.producers[name]
        nodes += [transpose, p.producers[transpose.input[0]]]
    return _Core([q[0], k[0], v[0]], q[1], qk, mask, quant, reshape, nodes)


def _mask_bias(graph: onnx.GraphProto, prefix: str, mask: str) -> tuple[list[Any], tuple[str, str]]:
    """Nodes that turn ``mask`` into the kernel's ``attention_bias`` and test whether it is all zero:
    ``(nodes, (bias, "every entry is zero"))``; their constants are added to ``graph``."""
    one = prefix + "_one"
    graph.initializer.append(numpy_helper.from_array(np.ones(1, np.int64), one))
    index = prefix + "_index3"
    graph.initializer.append(numpy_helper.from_array(np.array([3], np.int64), index))
    zero = prefix + "_zero"
    graph.initializer.append(numpy_helper.from_array(np.zeros((), np.int32), zero))
    nodes = [  # [B, 1|heads, 1|T, T] -> [B, 1|heads, T, T]: the kernel wants the query axis
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
    return nodes, (prefix + "_bias", prefix + "_mask_empty")


def _branch(prefix: str, name: str, inputs: list[str], attributes: dict[str, Any]) -> onnx.GraphProto:
    """An ``If`` branch holding one ``MultiHeadAttention``."""
    out = f"{prefix}_{name}"
    node = helper.make_node("MultiHeadAttention", inputs, [out], domain="com.microsoft",
                            name=f"{prefix}_MultiHeadAttention_{name}", **attributes)
    outputs = [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)]
    return helper.make_graph([node], f"{prefix}_{name}", [], outputs)


def _fused_nodes(graph: onnx.GraphProto, core: _Core, biases: dict[str, tuple[str, str]]) -> list[Any]:
    """The nodes that replace ``core``; ``biases`` (mask -> its bias and all-zero flag) is filled once per mask."""
    prefix = core.reshape.output[0]
    new: list[Any] = []
    attention_out = core.reshape.output[0] if core.quant is None else prefix + "_attention"
    attributes: dict[str, Any] = {"num_heads": core.heads, "scale": float(attr(core.qk, "alpha", 1.0))}
    if core.mask is None:
        new.append(helper.make_node("MultiHeadAttention", core.qkv, [attention_out], domain="com.microsoft",
                                    name=prefix + "_MultiHeadAttention", **attributes))
    else:
        if core.mask not in biases:
            nodes, biases[core.mask] = _mask_bias(graph, prefix, core.mask)
            new += nodes
        bias, empty = biases[core.mask]
        new.append(helper.make_node("If", [empty], [attention_out], name=prefix + "_skip_empty_mask",
                                    then_branch=_branch(prefix, "unmasked", core.qkv, attributes),
                                    else_branch=_branch(prefix, "masked", [*core.qkv, "", "", bias], attributes)))
    if core.quant is not None:
        new.append(helper.make_node("QuantizeLinear", [attention_out, *core.quant.input[1:]], [core.reshape.output[0]]))
    return new


def fuse_attention(proto: onnx.ModelProto) -> int:
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
    graph = proto.graph
    patterns = _Patterns(proto)
    new_nodes: dict[int, list[Any]] = {}  # id(final node of a core) -> nodes that replace it
    remove: set[int] = set()
    biases: dict[str, tuple[str, str]] = {}  # mask -> (its [B, 1|heads, T, T] bias, "it is all zero")
    fused = 0
    for softmax in patterns.nodes:
        core = _match(patterns, softmax)
        if core is None or any(id(n) in remove for n in core.nodes):
            continue
        new_nodes[id(core.reshape)] = _fused_nodes(graph, core, biases)
        remove.update(id(n) for n in core.nodes)
        fused += 1
    if fused:
        order: list[Any] = []
        for node in patterns.nodes:
            if id(node) in new_nodes:
                order.extend(new_nodes[id(node)])
            elif id(node) not in remove:
                order.append(node)
        set_nodes(graph, order)
        if not any(op.domain == "com.microsoft" for op in proto.opset_import):
            proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        prune_dead_nodes(graph)
        drop_unused_initializers(graph)
    return fused
