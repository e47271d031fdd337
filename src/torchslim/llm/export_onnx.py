"""Int4 weight-only ONNX for ONNX Runtime: each quantized linear layer becomes a ``com.microsoft.MatMulNBits``.

The model is exported once in float32 with every quantized layer standing in as an
``nn.Linear`` holding its dequantized weight (the torch simulation); that graph is the
fp32 baseline. Then each ``MatMul`` whose weight initializer is exactly a quantized layer's
dequantized weight (transposed) is replaced by a ``MatMulNBits`` node fed from the layer's
:class:`~torchslim.llm.qweight.QuantizedWeight` codes: the same graph, int4 weights.

``MatMulNBits`` layout (ONNX Runtime 1.32, attributes ``K``, ``N``, ``bits``, ``block_size``):

* ``B``: uint8 ``[N, n_blocks, block_size * bits / 8]``, ``n_blocks = ceil(K / block_size)``;
  the codes of a block packed along ``K``, low bits first (4 bits: column ``2j`` in the low
  nibble of byte ``j``, column ``2j + 1`` in the high nibble). When ``block_size`` does not
  divide ``K`` the last block is padded with its zero point (the padding dequantizes to 0
  and ``A`` has no columns there);
* ``scales``: float32 ``[N, n_blocks]``;
* ``zero_points``: uint8 ``[N, ceil(n_blocks * bits / 8)]`` packed the same way; left out
  for symmetric grids (the operator's default is ``2**(bits - 1)``, what :class:`Grid` uses).

``block_size`` is the grid's ``group_size`` (a whole row, ``-1``, is ``K``): a power of two,
at least 16; ``bits`` 2, 4 or 8.

Projections that read the same input (a decoder's query, key and value; its gate and up)
are fused into one ``MatMulNBits`` followed by a ``Split`` (:func:`fuse_parallel_matmuls`),
and the float32 twin's ``MatMul`` nodes the same way, so the two graphs stay alike: ONNX
Runtime's int8-compute kernels gain most on wide outputs (a screening run on 2 cores shared with
other jobs, 128 rows, 576 inputs, block 128: about 1.0x float32 at 192 outputs, 1.7x at 960, 1.9x at 3,072).

Example:
    >>> from torchslim.llm.qweight import Grid, QuantizedWeight
    >>> qw = QuantizedWeight.from_float(torch.randn(3, 40), Grid(bits=4, group_size=16))
    >>> b, scales, zeros = pack_matmulnbits(qw)
    >>> b.shape, scales.shape, zeros.shape            # 40 columns: blocks of 16, 16 and 8 (+8 padding)
    ((3, 3, 8), (3, 3), (3, 2))
    >>> int(b[0, 0, 0]) == int(qw.codes[0, 0]) | int(qw.codes[0, 1]) << 4
    True
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from torchslim.deploy.export import eager_attention, onnx_export_bytes
from torchslim.deploy.hf import rename_outputs
from torchslim.errors import TorchslimError
from torchslim.io.atomic import atomic_write_bytes
from torchslim.llm.ort_causal import DecodeResult, OrtCausalLM, time_decode, time_prefill
from torchslim.llm.qweight import QuantizedWeight
from torchslim.measure.macs import eval_mode

__all__ = [
    "MS_DOMAIN",
    "DecodeResult",
    "Int4Onnx",
    "OrtCausalLM",
    "block_size_of",
    "dequantized_linears",
    "export_int4_onnx",
    "export_kv_bytes",
    "fuse_parallel_matmuls",
    "pack_matmulnbits",
    "quantized_layers",
    "quantized_weight_of",
    "replace_with_matmulnbits",
    "time_decode",
    "time_prefill",
]

MS_DOMAIN = "com.microsoft"
#: the bit widths ``MatMulNBits`` takes
NBITS = (2, 4, 8)


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The model's quantized linear layers by name: every module with a ``quantized_weight``.

    Example:
        >>> quantized_layers(nn.Sequential(nn.Linear(2, 2)))
        {}
    """
    return {name: m for name, m in model.named_modules() if hasattr(m, "quantized_weight")}


def quantized_weight_of(name: str, module: nn.Module) -> QuantizedWeight:
    """The :class:`QuantizedWeight` of the quantized layer ``name``; refused when it is something else."""
    qw: Any = module.quantized_weight
    if not isinstance(qw, QuantizedWeight):
        raise TorchslimError(f"layer {name}: quantized_weight is a {type(qw).__name__}, not a QuantizedWeight")
    return qw


def block_size_of(qw: QuantizedWeight) -> int:
    """The ``MatMulNBits`` block size of ``qw``: its group size (``-1``: the row's length); refused when not allowed.

    Example:
        >>> from torchslim.llm.qweight import Grid, QuantizedWeight
        >>> block_size_of(QuantizedWeight.from_float(torch.randn(2, 96), Grid(group_size=64)))
        64
        >>> block_size_of(QuantizedWeight.from_float(torch.randn(2, 96), Grid(group_size=48)))
        Traceback (most recent call last):
            ...
        torchslim.errors.TorchslimError: MatMulNBits needs a block size that is a power of two >= 16; the grid's group_size is 48 (96 columns)
    """
    k = qw.shape[1]
    block = k if qw.grid.group_size == -1 else qw.grid.group_size
    if block < 16 or block & (block - 1):
        raise TorchslimError(
            f"MatMulNBits needs a block size that is a power of two >= 16; the grid's group_size is {qw.grid.group_size} ({k} columns)"
        )
    if qw.grid.bits not in NBITS:
        raise TorchslimError(f"MatMulNBits takes {', '.join(map(str, NBITS))} bits; the grid has {qw.grid.bits}")
    return block


def _pack(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack the last axis of uint8 ``values`` (length a multiple of ``8 // bits``), low bits first."""
    per = 8 // bits
    v = values.astype(np.uint8).reshape(*values.shape[:-1], values.shape[-1] // per, per)
    out = np.zeros(v.shape[:-1], dtype=np.uint8)
    for j in range(per):
        out |= (v[..., j] << (bits * j)).astype(np.uint8)
    return out


def pack_matmulnbits(qw: QuantizedWeight) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(B, scales, zero_points)`` of ``qw`` in ``MatMulNBits``' layout (``zero_points`` ``None``: symmetric).

    See the module docstring for the layout.
    """
    block = block_size_of(qw)
    bits = qw.grid.bits
    n, k = qw.shape
    n_blocks = -(-k // block)
    if n_blocks != qw.n_groups:
        raise TorchslimError(f"the grid's {qw.n_groups} groups are not the {n_blocks} blocks of {block} in {k} columns")
    zeros = qw.zeros.round().to(torch.uint8).numpy()
    codes = np.empty((n, n_blocks * block), dtype=np.uint8)
    codes[:, :k] = qw.codes.numpy()
    codes[:, k:] = zeros[:, -1:]  # padding of the last block: its zero point (dequantizes to 0)
    b = _pack(codes.reshape(n, n_blocks, block), bits)
    scales = qw.scales.float().numpy().astype(np.float32).reshape(n, n_blocks)
    if qw.grid.symmetric and bool((zeros == 2 ** (bits - 1)).all()):
        return b, scales, None
    per = 8 // bits
    padded = np.zeros((n, -(-n_blocks // per) * per), dtype=np.uint8)
    padded[:, :n_blocks] = zeros
    return b, scales, _pack(padded, bits)


@contextmanager
def dequantized_linears(model: nn.Module) -> Iterator[dict[str, QuantizedWeight]]:
    """Swap every quantized layer for an ``nn.Linear`` holding its dequantized weight; put them back afterwards.

    Yields the layers' :class:`QuantizedWeight` by name.
    """
    layers = quantized_layers(model)
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    weights: dict[str, QuantizedWeight] = {}
    try:
        for name, module in layers.items():
            qw = quantized_weight_of(name, module)
            weights[name] = qw
            bias = getattr(module, "bias", None)
            linear = nn.Linear(qw.shape[1], qw.shape[0], bias=bias is not None)
            with torch.no_grad():
                linear.weight.copy_(qw.dequantize())
                if bias is not None:
                    linear.bias.copy_(bias.detach().float())
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, linear)
            swapped.append((parent, attr, module))
        yield weights
    finally:
        for parent, attr, module in reversed(swapped):
            setattr(parent, attr, module)


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()


def replace_with_matmulnbits(
    proto: onnx.ModelProto, weights: dict[str, QuantizedWeight], *, accuracy_level: int = 0
) -> list[str]:
    """Replace, in place, each ``MatMul`` whose weight initializer is a layer's dequantized weight by ``MatMulNBits``.

    A ``MatMul`` matches a layer when its second input is an initializer equal, bit for bit,
    to the layer's dequantized weight transposed (``[K, N]``). Initializers no node reads any
    more are removed. Returns the names of the layers replaced, in ``weights``' order.

    Raises:
        TorchslimError: a layer has no such ``MatMul`` in the graph, or two layers with
            different codes dequantize to the same weight.
    """
    by_digest: dict[str, tuple[str, QuantizedWeight]] = {}
    canonical: dict[str, str] = {}  # a layer -> the first layer with the same dequantized weight
    for name, qw in weights.items():
        key = _digest(qw.dequantize().numpy().T)
        first = by_digest.setdefault(key, (name, qw))
        if not torch.equal(first[1].codes, qw.codes) or not torch.equal(first[1].scales, qw.scales):
            raise TorchslimError(f"layers {first[0]} and {name} dequantize to the same weight with different codes")
        canonical[name] = first[0]
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    found: set[str] = set()
    new_nodes, packed = [], {}
    for node in graph.node:
        init = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        match = by_digest.get(_digest(numpy_helper.to_array(init))) if init is not None and len(init.dims) == 2 else None
        if match is None:
            new_nodes.append(node)
            continue
        name, qw = match
        found.add(name)
        if name not in packed:
            packed[name] = _initializers(graph, name, qw)
        new_nodes.append(_nbits_node(node, name, qw, packed[name], accuracy_level))
    missing = [n for n in weights if canonical[n] not in found]
    if missing:
        raise TorchslimError(f"no MatMul in the exported graph carries the weight of quantized layer(s) {', '.join(missing)}")
    del graph.node[:]
    graph.node.extend(new_nodes)
    _drop_unused_initializers(graph)
    if not any(op.domain == MS_DOMAIN for op in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return list(weights)


def _fusion_key(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto], reads: dict[str, int]) -> tuple[Any, ...] | None:
    """What nodes must share to be fused with ``node`` (``None``: not fusable): their input and, for
    ``MatMulNBits``, every attribute and the type of each other input. Each weight must be an initializer that
    no other node (nor a subgraph) reads and that is not a graph input."""
    weights = list(node.input[1:])
    if not weights or any(w not in inits or reads.get(w, 0) != 1 for w in weights):
        return None
    if node.op_type == "MatMul" and node.domain in ("", "ai.onnx") and len(node.input) == 2:
        w = inits[node.input[1]]
        if len(w.dims) == 2 and w.data_type == onnx.TensorProto.FLOAT:
            return ("MatMul", node.input[0], int(w.dims[0]))
        return None
    if node.op_type == "MatMulNBits" and node.domain == MS_DOMAIN and len(node.input) in (3, 4):
        attrs = tuple(sorted((a.name, a.i) for a in node.attribute if a.name != "N"))
        types = tuple(inits[w].data_type for w in weights)
        return ("MatMulNBits", node.input[0], types, attrs)
    return None


def _reads(graph: onnx.GraphProto) -> dict[str, int]:
    """How often each name is read: node inputs (subgraphs' included) and graph outputs; graph inputs count twice
    (a value fed at run time is not a constant to fold)."""
    counts: dict[str, int] = {}

    def walk(g: onnx.GraphProto) -> None:
        for node in g.node:
            for name in node.input:
                counts[name] = counts.get(name, 0) + 1
            for attr in node.attribute:
                for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                    walk(sub)

    walk(graph)
    for name in [o.name for o in graph.output] + [i.name for i in graph.input] * 2:
        counts[name] = counts.get(name, 0) + 1
    return counts


#: the names a fused group adds: its node (and ``/split``), its output, its initializers
_FUSED_NAMES = ("", "/split", ".out", ".weight", ".B", ".scales", ".zero_points", ".split")


def fuse_parallel_matmuls(proto: onnx.ModelProto) -> int:
    """Fuse, in place, the ``MatMul`` (constant float weight) or ``MatMulNBits`` nodes that read the same input
    into one node with the weights stacked along ``N``, followed by a ``Split`` giving each its output.

    The fused node computes every output column as before (the rows of ``B``, ``scales`` and
    ``zero_points`` are independent). Returns the number of nodes fused away.

    Example:
        >>> from onnx import TensorProto as T
        >>> ws = [numpy_helper.from_array(np.ones((4, n), np.float32), f"w{n}") for n in (2, 3)]
        >>> nodes = [helper.make_node("MatMul", ["x", f"w{n}"], [f"y{n}"]) for n in (2, 3)]
        >>> g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT, [1, 4])],
        ...                       [helper.make_tensor_value_info(f"y{n}", T.FLOAT, [1, n]) for n in (2, 3)], ws)
        >>> m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        >>> fuse_parallel_matmuls(m), [n.op_type for n in m.graph.node]
        (1, ['MatMul', 'Split'])
    """
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    reads = _reads(graph)
    members: dict[tuple[Any, ...], list[int]] = {}
    for index, node in enumerate(graph.node):
        key = _fusion_key(node, inits, reads)
        if key is not None:
            members.setdefault(key, []).append(index)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
    taken = {n.name for n in graph.node} | set(inits) | {o for n in graph.node for o in n.output}
    replaced: dict[int, list[onnx.NodeProto]] = {}
    fused_away, dropped = 0, set()
    for key, indices in members.items():
        if len(indices) < 2:
            continue
        nodes = [graph.node[i] for i in indices]
        stem, count = f"{nodes[0].name or nodes[0].output[0]}/fused", 0
        base = stem
        while any(base + suffix in taken for suffix in _FUSED_NAMES):
            count += 1
            base = f"{stem}{count}"
        taken |= {base + suffix for suffix in _FUSED_NAMES}
        dropped |= {w for n in nodes for w in n.input[1:]}
        if key[0] == "MatMul":
            weights = [numpy_helper.to_array(inits[n.input[1]]) for n in nodes]
            widths = [int(w.shape[1]) for w in weights]
            graph.initializer.append(numpy_helper.from_array(np.concatenate(weights, axis=1), f"{base}.weight"))
            fused = helper.make_node("MatMul", [nodes[0].input[0], f"{base}.weight"], [f"{base}.out"], name=base)
        else:
            stacked = []
            for slot, suffix in enumerate(("B", "scales", "zero_points")[: len(nodes[0].input) - 1], start=1):
                arrays = [numpy_helper.to_array(inits[n.input[slot]]) for n in nodes]
                graph.initializer.append(numpy_helper.from_array(np.concatenate(arrays, axis=0), f"{base}.{suffix}"))
                stacked.append(f"{base}.{suffix}")
            widths = [next(a.i for a in n.attribute if a.name == "N") for n in nodes]
            attrs = {a.name: a.i for a in nodes[0].attribute}
            attrs["N"] = sum(widths)
            fused = helper.make_node("MatMulNBits", [nodes[0].input[0], *stacked], [f"{base}.out"], name=base,
                                     domain=MS_DOMAIN, **attrs)
        if opset >= 13:  # the sizes are an input from opset 13, an attribute before
            graph.initializer.append(numpy_helper.from_array(np.array(widths, dtype=np.int64), f"{base}.split"))
            split = helper.make_node("Split", [f"{base}.out", f"{base}.split"], [n.output[0] for n in nodes], name=f"{base}/split", axis=-1)
        else:
            split = helper.make_node("Split", [f"{base}.out"], [n.output[0] for n in nodes], name=f"{base}/split", axis=-1, split=widths)
        replaced[indices[0]] = [fused, split]
        for i in indices[1:]:
            replaced[i] = []
        fused_away += len(indices) - 1
    if not replaced:
        return 0
    kept = [new for i, node in enumerate(graph.node) for new in replaced.get(i, [node])]
    del graph.node[:]
    graph.node.extend(kept)
    left = [i for i in graph.initializer if i.name not in dropped]  # the fused weights: read by their node alone
    del graph.initializer[:]
    graph.initializer.extend(left)
    return fused_away


def _initializers(graph: onnx.GraphProto, name: str, qw: QuantizedWeight) -> list[str]:
    b, scales, zeros = pack_matmulnbits(qw)
    base = f"{name}.qweight"
    tensors = [(f"{base}.B", b), (f"{base}.scales", scales)]
    if zeros is not None:
        tensors.append((f"{base}.zero_points", zeros))
    for tname, array in tensors:
        graph.initializer.append(numpy_helper.from_array(array, tname))
    return [t for t, _ in tensors]


def _nbits_node(node: onnx.NodeProto, name: str, qw: QuantizedWeight, inputs: list[str], accuracy_level: int) -> onnx.NodeProto:
    n, k = qw.shape
    return helper.make_node(
        "MatMulNBits", [node.input[0], *inputs], list(node.output), name=f"{name}/MatMulNBits", domain=MS_DOMAIN,
        K=k, N=n, bits=qw.grid.bits, block_size=block_size_of(qw), accuracy_level=accuracy_level,
    )


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {i for node in graph.node for i in node.input} | {o.name for o in graph.output}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


class _Logits(nn.Module):
    """``input_ids -> logits`` of a Hugging Face causal LM: no cache, an all-ones attention mask."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False).logits


@dataclass
class Int4Onnx:
    """An int4 weight-only ONNX model and the float32 graph it came from.

    Attributes:
        proto: the graph with ``MatMulNBits`` nodes.
        fp32: the same graph before the replacement (the dequantized weights in float32).
        layers: the quantized layers replaced.
        kv_cache: whether the graph takes and returns the attention cache (see :func:`export_kv_bytes`).
        path: where ``proto`` was written, if it was.
    """

    proto: onnx.ModelProto
    fp32: onnx.ModelProto
    layers: list[str]
    kv_cache: bool = False
    path: Path | None = None

    def bytes(self) -> int:
        """Size of the serialized int4 model."""
        return self.proto.ByteSize()


def export_int4_onnx(
    model: nn.Module,
    path: str | os.PathLike[str] | None = None,
    *,
    kv_cache: bool = False,
    opset: int = 17,
    accuracy_level: int = 0,
    example_length: int = 8,
    fuse: bool = True,
) -> Int4Onnx:
    """Export a causal LM with quantized layers to ONNX with ``MatMulNBits`` (and its float32 twin).

    Args:
        model: a Hugging Face causal LM (float32, on the CPU) whose quantized layers have a ``quantized_weight``.
        path: where to write the int4 model (atomically); ``None``: not written.
        kv_cache: export the graph with the attention cache in and out (prefill and decode);
            else ``input_ids -> logits`` (prefill, perplexity).
        opset: ONNX opset of the float graph.
        accuracy_level: ``MatMulNBits``' ``accuracy_level`` (0: ``A`` stays float32; 4: ``A``
            is quantized to int8 per block inside the kernel, faster, not the torch simulation).
        example_length: tokens of the example input the exporter traces with.
        fuse: fuse the projections that read one input (:func:`fuse_parallel_matmuls`), in the
            int4 graph and in its float32 twin alike.

    Raises:
        TorchslimError: the model has no quantized layer, a layer's grid does not fit
            ``MatMulNBits``, or the export fails.
    """
    if not quantized_layers(model):
        raise TorchslimError(f"{type(model).__name__} has no quantized layer (no module with a quantized_weight)")
    bad = sorted({str(p.dtype) for p in model.parameters() if p.is_floating_point() and p.dtype != torch.float32})
    if bad:
        raise TorchslimError(f"export_int4_onnx needs a float32 model; it has {', '.join(bad)} parameters: model.float()")
    if accuracy_level not in (0, 1, 2, 3, 4):
        raise TorchslimError(f"accuracy_level must be 0..4, got {accuracy_level}")
    for name, module in quantized_layers(model).items():
        try:
            block_size_of(quantized_weight_of(name, module))
        except TorchslimError as exc:
            raise TorchslimError(f"layer {name}: {exc}") from None
    devices = sorted({str(t.device) for t in [*model.parameters(), *model.buffers()] if t.device.type != "cpu"})
    if devices:
        raise TorchslimError(f"export_int4_onnx exports from the CPU; the model has tensors on {', '.join(devices)}: model.cpu()")
    ids = torch.randint(0, _vocab(model), (1, example_length), generator=torch.Generator().manual_seed(0))
    with dequantized_linears(model) as weights:
        if kv_cache:
            data = export_kv_bytes(model, ids, opset=opset)
        else:
            data = onnx_export_bytes(_Logits(model), {"input_ids": ids}, opset=opset)
    fp32 = onnx.load_from_string(data)
    if not kv_cache:
        rename_outputs(fp32, ["logits"])
    proto = onnx.ModelProto()
    proto.CopyFrom(fp32)
    layers = replace_with_matmulnbits(proto, weights, accuracy_level=accuracy_level)
    if fuse:
        fuse_parallel_matmuls(proto)
        fuse_parallel_matmuls(fp32)
    out = Int4Onnx(proto, fp32, layers, kv_cache)
    if path is not None:
        out.path = atomic_write_bytes(Path(path), proto.SerializeToString())
    return out


def _vocab(model: nn.Module) -> int:
    config: Any = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None)
    if not isinstance(vocab, int):
        raise TorchslimError(f"{type(model).__name__} is not a Hugging Face causal LM (no config.vocab_size)")
    return vocab


def cache_shape(model: nn.Module) -> tuple[int, int, int]:
    """``(layers, kv_heads, head_dim)`` of a Hugging Face decoder's attention cache."""
    config: Any = getattr(model, "config", None)
    layers = getattr(config, "num_hidden_layers", None)
    heads = getattr(config, "num_attention_heads", None)
    if not isinstance(layers, int) or not isinstance(heads, int):
        raise TorchslimError(f"{type(model).__name__} has no decoder config (num_hidden_layers, num_attention_heads)")
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return layers, int(kv_heads), int(head_dim)


def kv_names(layers: int) -> tuple[list[str], list[str]]:
    """The cache's input names (``past_key_values.<i>.key``/``.value``) and output names (``present.<i>.key``...).

    Example:
        >>> kv_names(1)
        (['past_key_values.0.key', 'past_key_values.0.value'], ['present.0.key', 'present.0.value'])
    """
    past = [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    return past, [p.replace("past_key_values", "present") for p in past]


class _WithCache(nn.Module):
    """``(input_ids, attention_mask, *past) -> (logits, *present)``: the cache as plain tensors."""

    def __init__(self, model: nn.Module, layers: int) -> None:
        super().__init__()
        self.model, self.layers = model, layers

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        config: Any = self.model.config
        cache = DynamicCache(config=config)
        for i in range(self.layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True)
        present = []
        for layer in out.past_key_values.layers[: self.layers]:
            present += [layer.keys, layer.values]
        return (out.logits, *present)


def export_kv_bytes(model: nn.Module, example_ids: torch.Tensor, *, opset: int = 17, past: int = 4) -> bytes:
    """Export a Hugging Face decoder with its attention cache as ONNX bytes (legacy exporter, eager attention).

    Inputs ``input_ids`` ``[batch, sequence]``, ``attention_mask`` ``[batch, past + sequence]``
    and, per layer, ``past_key_values.<i>.key``/``.value`` ``[batch, kv_heads, past, head_dim]``
    (``past`` may be 0: a prefill); outputs ``logits`` and ``present.<i>.key``/``.value``.
    """
    layers, kv_heads, head_dim = cache_shape(model)
    batch, length = example_ids.shape
    cache = [torch.zeros(batch, kv_heads, past, head_dim) for _ in range(2 * layers)]
    mask = torch.ones(batch, past + length, dtype=torch.int64)
    past_names, present_names = kv_names(layers)
    names, outputs = ["input_ids", "attention_mask", *past_names], ["logits", *present_names]
    axes: dict[str, dict[int, str]] = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total"}}
    axes["logits"] = {0: "batch", 1: "sequence"}
    axes.update({n: {0: "batch", 2: "past"} for n in past_names})
    axes.update({n: {0: "batch", 2: "total"} for n in present_names})
    buffer = io.BytesIO()
    wrapper = _WithCache(model, layers)
    with eval_mode(model), torch.no_grad(), eager_attention(model), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notices
        try:
            torch.onnx.export(
                wrapper, (example_ids, mask, *cache), buffer,  # type: ignore[arg-type]  # a file-like object is accepted
                dynamo=False, opset_version=opset, input_names=names, output_names=outputs, dynamic_axes=axes,
            )
        except Exception as exc:  # the exporter raises many unrelated types
            raise TorchslimError(f"ONNX export of {type(model).__name__} with its cache failed: {exc}") from exc
    return buffer.getvalue()
