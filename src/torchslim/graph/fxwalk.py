"""The torch.fx engine of :mod:`torchslim.graph.deps`: a walk over the traced graph that gives every tensor a layout.

Every tensor in the traced graph carries a *layout* (:class:`~torchslim.graph.spaces.Layout`):
which channel spaces its channel dimension is made of and how many consecutive
features each channel occupies. The rules of the walk are in the docstring of
:mod:`torchslim.graph.deps`; this module is its implementation.

Example:
    >>> walk = FxWalk(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), torch.randn(1, 4))
    >>> walk.run()
    >>> [(g.channels, [(m.module, m.role) for m in g.members]) for g in walk.s.groups() if g.frozen is None]
    [(8, [('0', 'out'), ('2', 'in')])]
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from torchslim.graph.attention import attention_spec, is_attention
from torchslim.graph.concrete import analysis_trace
from torchslim.graph.spaces import HeadGroup, Layout, Member, Seg, Spaces, is_gate
from torchslim.graph.surgery import is_conv1d

_UNARY_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU,
    nn.Dropout, nn.Dropout2d, nn.Identity, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Softplus, nn.Mish,
)
_UNARY_FUNCTIONS = {
    F.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.sigmoid, F.tanh, F.leaky_relu, F.dropout, F.max_pool2d,
    F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.interpolate, torch.relu, torch.sigmoid,
    torch.tanh, operator.neg, F.elu, F.mish, F.hardsigmoid,
}
_UNARY_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "detach", "float", "neg"}
_BINARY = {operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.imul, torch.add, torch.mul, torch.sub}
_BINARY_METHODS = {"add", "add_", "mul", "mul_", "sub", "div"}
_SPLIT_FUNCTIONS = {torch.chunk, torch.split}
_SPLIT_METHODS = {"chunk", "split"}
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
#: layers whose own parameters the engine slices by their module's rule (never as parameters used directly)
_SLICED = (nn.Linear, *_CONVS, *_BATCHNORMS, nn.GroupNorm, nn.LayerNorm, nn.Embedding, nn.MultiheadAttention, nn.RNNBase)
_EXPAND = {"expand", "expand_as", "broadcast_to", torch.broadcast_to}


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return is_attention(m) or is_conv1d(m) or super().is_leaf_module(m, qualname)


def _int(value: Any, default: int) -> int:
    """An integer argument of a node (``default`` when it is not a plain int)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _positional(gm: fx.GraphModule, example_input: Any) -> tuple[Any, ...]:
    """The example input as the traced graph's positional arguments (a dict goes by placeholder name)."""
    if isinstance(example_input, Mapping):
        return tuple(example_input.get(str(n.target), n.args[0] if n.args else None) for n in gm.graph.nodes if n.op == "placeholder")
    return example_input if isinstance(example_input, tuple) else (example_input,)


class FxWalk:
    """Layouts of every node of ``model``'s torch.fx graph; the spaces, heads and blocked layers they give."""

    def __init__(self, model: nn.Module, example_input: Any) -> None:
        self.model = model
        self.modules = dict(model.named_modules())
        graph = analysis_trace(model, _Tracer, example_input, what="structured pruning")  # fx, else concrete
        self.gm = fx.GraphModule(model, graph)
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                ShapeProp(self.gm).propagate(*_positional(self.gm, example_input))
        finally:
            model.train(was)
        self.s = Spaces()
        self.layout: dict[fx.Node, Layout | None] = {}
        self.pieces: dict[fx.Node, list[Layout | None]] = {}  # the parts of a chunk/split, by index
        self.blocked: dict[str, str] = {}
        self.heads: list[HeadGroup] = []
        self.read_directly = {str(n.target).rpartition(".")[0]: n.name for n in self.gm.graph.nodes
                              if n.op == "get_attr" and n.users}  # module -> a node reading its tensor, not its forward

    # -- helpers -------------------------------------------------------------
    def shape(self, node: Any) -> tuple[int, ...] | None:
        meta = getattr(node, "meta", {}).get("tensor_meta") if isinstance(node, fx.Node) else None
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def rank(self, node: Any) -> int:
        return len(self.shape(node) or ())

    def fresh(self, node: fx.Node, cdim: int, frozen: str | None = None) -> Layout | None:
        return self.fresh_shape(self.shape(node), cdim, frozen)

    def fresh_shape(self, shape: tuple[int, ...] | None, cdim: int, frozen: str | None = None) -> Layout | None:
        if shape is None or len(shape) < 2:
            return None
        cdim = cdim % len(shape)
        return Layout(cdim, [Seg(self.s.new(shape[cdim], frozen), shape[cdim])])

    def freeze(self, lay: Layout | None, reason: str) -> None:
        if lay is not None:
            for seg in lay.segs:
                self.s.freeze(seg.space, reason)

    def add_members(self, lay: Layout, module: str, role: str) -> None:
        offset = 0  # in features of the module's dimension
        for seg in lay.segs:
            self.s.members[self.s.find(seg.space)].append(Member(module, role, offset, seg.inner))
            offset += seg.channels * seg.inner

    def unite(self, a: Layout, b: Layout, where: str) -> Layout:
        """Couple ``a`` and ``b`` position by position; runs of different spaces are first cut to line up."""
        if a.runs() != b.runs() and a.width == b.width:
            for cut in b.bounds() - a.bounds():
                self.cut_at(a, cut, extra=(a, b))
            for cut in a.bounds() - b.bounds():
                self.cut_at(b, cut, extra=(a, b))
        if a.runs() == b.runs():
            for sa, sb in zip(a.segs, b.segs):
                self.s.union(sa.space, sb.space)
        else:
            self.freeze(a, f"misaligned channels combined at {where}")
            self.freeze(b, f"misaligned channels combined at {where}")
        return a

    def opaque(self, node: fx.Node, reason: str) -> Layout | None:
        for arg in node.all_input_nodes:
            self.freeze(self.layout.get(arg), reason)
        return self.fresh(node, 1 if self.rank(node) == 4 else -1, frozen=reason)

    # -- the walk ------------------------------------------------------------
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            self.release_pieces(node)
            if node.op == "placeholder":
                self.layout[node] = self.fresh(node, 1 if self.rank(node) == 4 else -1, "model input")
            elif node.op == "get_attr":
                self.layout[node] = self.attr_node(node)
            elif node.op == "call_module":
                self.layout[node] = self.module_node(node)
            elif node.op in ("call_function", "call_method"):
                self.layout[node] = self.function_node(node)
            elif node.op == "output":
                for arg in node.all_input_nodes:
                    self.freeze(self.layout.get(arg), "reaches the model output")

    def attr_node(self, node: fx.Node) -> Layout | None:
        """A tensor the model uses directly: a parameter of a module whose rule does not slice it (a class token,
        positions, a layer scale) joins the group it meets, cut along its last dimension; anything else is frozen."""
        owner, _, attr = str(node.target).rpartition(".")
        mod = self.modules.get(owner)
        param = mod._parameters.get(attr) if mod is not None else None
        if mod is None or param is None or param.dim() < 1 or isinstance(mod, _SLICED) or is_attention(mod) or is_conv1d(mod):
            return self.fresh(node, -1, f"tensor attribute {node.target} used directly")
        lay = self.fresh(node, -1) if param.dim() > 1 else Layout(0, [Seg(self.s.new(param.shape[0]), param.shape[0])])
        if lay is not None:
            self.s.members[lay.segs[0].space].append(Member(owner, "param", 0, 1, attr))
        return lay

    def release_pieces(self, node: fx.Node) -> None:
        """Freeze the parts of a chunk/split that ``node`` uses other than one at a time (``parts[i]``)."""
        for arg in node.all_input_nodes:
            if arg in self.pieces and not (node.target is operator.getitem and node.args[0] is arg and isinstance(node.args[1], int)):
                for part in self.pieces[arg]:
                    self.freeze(part, f"the parts of {arg.name} are used together at {node.name}")

    def split(self, node: fx.Node, lay: Layout | None) -> list[Layout | None]:
        """The layouts of the parts of a ``chunk``/``split``.

        Along the channel dimension, ``chunk`` cuts the channel spaces at the parts' boundaries and unites the
        parts (the pruned tensor is chunked evenly again, so every part must keep as many channels, the same
        ones). A ``split`` by one size into equal parts covering the whole dimension (``split(n // 2)``) is taken
        as ``chunk``: every part is cut alike, and the post-surgery forward check refuses a size that was in
        fact hard-coded. A ``split`` by a list of sizes has them fixed in the code, so its input is frozen."""
        meta = node.meta.get("tensor_meta")
        shapes = [tuple(m.shape) for m in meta] if isinstance(meta, (tuple, list)) and all(hasattr(m, "shape") for m in meta) else None
        in_shape = self.shape(node.args[0])
        dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
        if lay is None or shapes is None or in_shape is None or not isinstance(dim, int):
            reason = f"split {node.name} of an unknown tensor"
            self.freeze(lay, reason)
            return [self.fresh_shape(shape, -1, reason) for shape in shapes or []]
        if dim % len(in_shape) != lay.cdim:
            return [lay] * len(shapes)  # every part keeps every channel
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("split_size", node.kwargs.get("split_size_or_sections"))
        equal = isinstance(size, int) and len({shape[lay.cdim] for shape in shapes}) == 1  # split(n // k): as chunk(k)
        if node.target not in (torch.chunk, "chunk") and not equal:
            reason = f"torch.split at {node.name} has sizes fixed in the code along the channel dimension"
            self.freeze(lay, reason)
            return [self.fresh_shape(shape, lay.cdim, reason) for shape in shapes]
        cuts = [sum(shape[lay.cdim] for shape in shapes[: i + 1]) for i in range(len(shapes) - 1)]
        for cut in cuts:
            if not self.cut_at(lay, cut):
                reason = f"split {node.name} cuts through the features of one channel"
                self.freeze(lay, reason)
                return [self.fresh_shape(shape, lay.cdim, reason) for shape in shapes]
        taken = lay.take([shape[lay.cdim] for shape in shapes])
        for part in taken[1:]:
            self.unite(taken[0], part, node.name)
        parts: list[Layout | None] = [*taken]
        return parts

    def fold(self, lay: Layout, n: int, where: str) -> bool:
        """Cut ``lay`` into ``n`` equal parts and unite them (channel ``c`` of every part is one channel).

        ``False`` (nothing united) when a part's boundary falls inside a channel or a frozen space."""
        if n == 1:
            return True
        if lay.width % n:
            return False
        step = lay.width // n
        if not all(self.cut_at(lay, k * step, extra=(lay,)) for k in range(1, n)):
            return False
        parts = lay.take([step] * n)
        for part in parts[1:]:
            self.unite(parts[0], part, where)
        return all(self.s.frozen[self.s.find(seg.space)] is None for seg in lay.segs)

    def cut_at(self, lay: Layout, cut: int, extra: tuple[Layout, ...] = ()) -> bool:
        """Make a segment boundary of ``lay`` at feature ``cut``; ``False`` when it falls inside a channel.

        A cut inside a segment splits its (unfrozen) space; every layout holding that space is rewritten
        (the walk's and ``extra``), so the halves stay one space everywhere."""
        start = 0
        for seg in lay.segs:
            width = seg.channels * seg.inner
            if start < cut < start + width:
                root = self.s.find(seg.space)
                if (cut - start) % seg.inner or self.s.frozen[root] is not None:
                    return False
                k = (cut - start) // seg.inner
                rest = self.s.split(root, k)
                self.rewrite(root, k, rest, extra)
                return True
            start += width
        return True

    def rewrite(self, root: int, k: int, rest: int, extra: tuple[Layout, ...] = ()) -> None:
        """Replace every segment of the space ``root`` by its first ``k`` channels and the space ``rest``."""
        seen: set[int] = set()
        for lay in [*self.layout.values(), *(p for parts in self.pieces.values() for p in parts), *extra]:
            if lay is None or id(lay) in seen:
                continue
            seen.add(id(lay))
            segs: list[Seg] = []
            for seg in lay.segs:
                if self.s.find(seg.space) == root:
                    segs += [Seg(seg.space, k, seg.inner), Seg(rest, seg.channels - k, seg.inner)]
                else:
                    segs.append(seg)
            lay.segs = segs

    def in_layout(self, node: fx.Node) -> Layout | None:
        args = [a for a in node.args if isinstance(a, fx.Node)]
        return self.layout.get(args[0]) if args else None

    def module_node(self, node: fx.Node) -> Layout | None:
        name = str(node.target)
        mod = self.modules[name]
        lay = self.in_layout(node)
        if isinstance(mod, _CONVS):
            return self.conv_node(node, name, mod, lay)
        if isinstance(mod, nn.Linear) or is_conv1d(mod):
            shape = self.shape(node.args[0])
            if lay is None or shape is None or lay.cdim != len(shape) - 1:
                self.freeze(lay, f"unsupported input layout at {name}")
            else:
                self.add_members(lay, name, "in")
            out = self.fresh(node, -1)
            if out is not None:
                self.add_members(out, name, "out")
            return out
        if isinstance(mod, (*_BATCHNORMS, nn.GroupNorm)):  # GroupNorm: position c of every group together (groups kept equal)
            if lay is None or lay.cdim != 1 or any(s.inner != 1 for s in lay.segs) or (
                    isinstance(mod, nn.GroupNorm) and not self.fold(lay, mod.num_groups, name)):
                return self.opaque(node, f"unsupported input layout at {name}")
            self.add_members(lay, name, "bn")
            return lay
        if isinstance(mod, nn.LayerNorm):
            shape = self.shape(node.args[0])
            if lay is None or shape is None or len(mod.normalized_shape) != 1 or lay.cdim != len(shape) - 1:
                return self.opaque(node, f"LayerNorm {name} does not normalise the channel dimension alone")
            self.add_members(lay, name, "ln")
            return lay
        if is_attention(mod):
            return self.attention_node(node, name, mod, lay)
        if isinstance(mod, nn.Flatten):
            return self.flatten(node, lay, mod.start_dim, mod.end_dim)
        if isinstance(mod, _UNARY_MODULES):
            return lay
        if isinstance(mod, nn.MultiheadAttention):
            return self.mha_node(node, name, mod)
        if isinstance(mod, (nn.TransformerEncoderLayer, nn.TransformerEncoder)):
            return self.encoder_node(node, name, mod, lay)
        if isinstance(mod, nn.Embedding):
            return self.embedding_node(node, name)
        reason = f"module {name} ({type(mod).__name__}) is not understood by the pruning engine"
        self.blocked[name] = reason
        return self.opaque(node, reason)

    def embedding_node(self, node: fx.Node, name: str) -> Layout | None:
        """A lookup table produces its columns (frozen when its table is also read directly, e.g. tied weights)."""
        reader = self.read_directly.get(name)
        out = self.fresh(node, -1, None if reader is None else f"the table of {name} is also read directly (at {reader})")
        if out is not None:
            self.add_members(out, name, "emb")
        return out

    def mha_node(self, node: fx.Node, name: str, mod: nn.MultiheadAttention) -> Layout | None:
        """Self-attention (query, key and value one tensor): its input columns and output rows follow the stream."""
        qkv = [*node.args[:3], *(node.kwargs.get(k) for k in ("query", "key", "value")[len(node.args[:3]) :])]
        meta = node.meta.get("tensor_meta")
        out_shape = tuple(meta[0].shape) if isinstance(meta, (tuple, list)) and meta and hasattr(meta[0], "shape") else None
        lay = self.layout.get(qkv[0]) if isinstance(qkv[0], fx.Node) else None
        spec = attention_spec(mod, name)
        blocked = spec.blocked if spec is not None else "an unknown nn.MultiheadAttention"
        if blocked is None and not (qkv[0] is qkv[1] is qkv[2]):
            blocked = f"nn.MultiheadAttention {name} is not self-attention (query, key and value differ): its widths stay"
        if blocked is None and (lay is None or out_shape is None or lay.cdim != self.rank(qkv[0]) - 1):
            blocked = f"unsupported input layout at {name}"
        if blocked is not None:
            self.blocked[name] = blocked
            for arg in node.all_input_nodes:
                self.freeze(self.layout.get(arg), blocked)
            self.pieces[node] = [self.fresh_shape(out_shape, -1, blocked), None]
            return None
        self.add_members(lay, name, "attn_in")  # type: ignore[arg-type]  # checked above
        self.head_features(name, mod)
        out = self.fresh_shape(out_shape, -1)
        if out is not None:
            self.add_members(out, name, "attn_out")
        self.pieces[node] = [out, None]
        return None

    def head_features(self, name: str, mod: Any) -> None:
        """The features inside the heads of an ``nn.MultiheadAttention`` (q/k/v rows, out_proj columns): feature ``i``
        of every head is one channel, so every head keeps as many (no rotary embedding to respect)."""
        d = int(mod.head_dim)
        space = self.s.new(d)
        self.s.members[space] += [Member(name, "mha_inner", h * d, 1) for h in range(int(mod.num_heads))]

    def encoder_node(self, node: fx.Node, name: str, mod: nn.Module, lay: Layout | None) -> Layout | None:
        """``nn.TransformerEncoderLayer`` (or a stack of them): one residual stream through attention, norms and
        feed-forward, whose hidden channels are a group of their own."""
        stack: Any = mod
        layers = [(name, mod)] if isinstance(mod, nn.TransformerEncoderLayer) else [(f"{name}.layers.{i}", m) for i, m in enumerate(stack.layers)]
        shape = self.shape(node.args[0])
        bad = next((f"{n}: {why}" for n, m in layers if (why := _encoder_layer_problem(m, n))), None)
        if bad is None and (lay is None or shape is None or self.shape(node) != shape or lay.cdim != len(shape) - 1):
            bad = f"unsupported input layout at {name}"
        if bad is not None or lay is None:
            self.blocked[name] = f"{type(mod).__name__} {name}: {bad}"
            return self.opaque(node, self.blocked[name])
        for prefix, layer in layers:
            for member, role in (("self_attn", "attn_in"), ("self_attn", "attn_out"), ("norm1", "ln"), ("norm2", "ln"), ("linear1", "in"), ("linear2", "out")):
                self.add_members(lay, f"{prefix}.{member}", role)
            self.head_features(f"{prefix}.self_attn", layer.self_attn)
            hidden = self.fresh_shape((1, layer.linear1.out_features), -1)
            if hidden is not None:
                self.add_members(hidden, f"{prefix}.linear1", "out")
                self.add_members(hidden, f"{prefix}.linear2", "in")
        if isinstance(getattr(mod, "norm", None), nn.LayerNorm):
            self.add_members(lay, f"{name}.norm", "ln")
        return lay

    def conv_node(self, node: fx.Node, name: str, mod: nn.Conv1d | nn.Conv2d | nn.Conv3d, lay: Layout | None) -> Layout | None:
        """A convolution: dense ones consume and produce; depthwise ones carry; grouped ones prune inside their groups."""
        if lay is None or lay.cdim != 1 or any(s.inner != 1 for s in lay.segs):
            self.freeze(lay, f"unsupported input layout at {name}")
            return self.fresh(node, 1, f"unsupported input layout at {name}")
        groups, cin, cout = int(mod.groups), int(mod.in_channels), int(mod.out_channels)
        if groups == 1:
            self.add_members(lay, name, "in")
            out = self.fresh(node, 1)
            if out is not None:
                self.add_members(out, name, "out")
            return out
        if groups == cin == cout:
            self.add_members(lay, name, "dw")
            return Layout(1, [Seg(s.space, s.channels, 1) for s in lay.segs])
        # a grouped convolution keeps its groups: input position c of every group goes (or stays) together,
        # and so does output position c of every group
        if cin // groups > 1 and self.fold(lay, groups, name):
            self.add_members(lay, name, "in")
        else:
            reason = f"grouped convolution {name} (groups={groups}) reads {cin // groups} channel(s) per group"
            self.freeze(lay, reason + " that cannot be pruned alike in every group")
        out = self.fresh(node, 1)
        if out is None:
            return None
        self.layout[node] = out
        if not self.fold(out, groups, name):
            self.freeze(out, f"grouped convolution {name} (groups={groups}): its output groups cannot be pruned alike")
        self.add_members(out, name, "out")
        return out

    def attention_node(self, node: fx.Node, name: str, mod: Any, lay: Layout | None) -> Layout | None:
        shape = self.shape(node.args[0])
        if lay is None or shape is None or lay.cdim != len(shape) - 1:
            self.freeze(lay, f"unsupported input layout at {name}")
        else:
            self.add_members(lay, name, "attn_in")
        heads = mod.q_proj.out_features // mod.head_dim
        if mod.k_proj.out_features == mod.v_proj.out_features == mod.q_proj.out_features == mod.out_proj.in_features:
            self.heads.append(HeadGroup(name, heads, mod.head_dim))
        else:
            self.blocked[name] = f"attention {name} has unequal q/k/v/out widths"
        out = self.fresh(node, -1)
        if out is not None:
            self.add_members(out, name, "attn_out")
        return out

    def flatten(self, node: fx.Node, lay: Layout | None, start: int, end: int) -> Layout | None:
        shape = self.shape(node.args[0])
        if lay is None or shape is None:
            return self.opaque(node, "flatten of an unknown tensor")
        start, end = start % len(shape), end % len(shape)
        if start == lay.cdim and end == len(shape) - 1:
            factor = math.prod(shape[start + 1 :])
            return Layout(start, [Seg(s.space, s.channels, s.inner * factor) for s in lay.segs])
        if lay.cdim < start:
            return lay
        return self.opaque(node, "flatten across the channel dimension")

    def function_node(self, node: fx.Node) -> Layout | None:
        target = node.target
        lay = self.in_layout(node)
        out_shape = self.shape(node)
        method = node.op == "call_method"
        if method and target in ("size", "dim") or target in (getattr, len):
            return None
        if target in _SPLIT_FUNCTIONS or (method and target in _SPLIT_METHODS):
            self.pieces[node] = self.split(node, lay)
            return None
        source, index = (node.args[0], node.args[1]) if target is operator.getitem else (None, None)
        if isinstance(source, fx.Node) and source in self.pieces and isinstance(index, int):
            pieces = self.pieces[source]
            if -len(pieces) <= index < len(pieces):
                return pieces[index]
        if out_shape is None:  # not one tensor: a tuple of them (torch.max with dim, topk, ...) or a scalar
            return self.opaque(node, f"operation {node.name} ({getattr(target, '__name__', target)}) does not return one tensor")
        if target in _BINARY or (method and target in _BINARY_METHODS):
            return self.binary(node, out_shape)
        if target in _UNARY_FUNCTIONS or (method and target in _UNARY_METHODS):
            if lay is not None and self.shape(node.args[0]) is not None and self.rank(node.args[0]) == len(out_shape):
                return lay
            return self.opaque(node, f"unsupported use of {node.name}")
        if target in (torch.cat, torch.concat) or (method and target == "cat"):
            return self.cat(node, out_shape)
        if target in (torch.flatten,) or (method and target == "flatten"):
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            return self.flatten(node, lay, _int(start, 0), _int(end, -1))
        if method and target in ("view", "reshape", "unsqueeze", "squeeze") or target in (torch.reshape, torch.unsqueeze, torch.squeeze):
            return self.reshape(node, lay, out_shape)
        if target in (torch.mean, torch.sum, torch.amax) or (method and target in ("mean", "sum", "amax")):
            return self.reduce(node, lay)
        if target in (torch.transpose, torch.permute) or (method and target in ("transpose", "permute")):
            return self.permute(node, lay)
        if target in _EXPAND:
            return self.expand(node, lay, out_shape)
        if target is operator.getitem and isinstance(source, fx.Node):
            return self.index(node, lay, out_shape)
        owner = str(getattr(node.args[2] if len(node.args) > 2 else node.kwargs.get("weight"), "target", "")).rpartition(".")[0]
        if target is F.layer_norm and isinstance(self.modules.get(owner), nn.LayerNorm) and lay is not None \
                and len(self.modules[owner].normalized_shape) == 1 and lay.cdim == len(out_shape) - 1:
            self.add_members(lay, owner, "ln")  # a LayerNorm subclass whose forward calls F.layer_norm (ConvNeXt's)
            return lay
        return self.opaque(node, f"operation {node.name} ({getattr(target, '__name__', target)}) is not understood by the pruning engine")

    def binary(self, node: fx.Node, out_shape: tuple[int, ...]) -> Layout | None:
        """An element-wise op: a scalar operand carries the layout, equal shapes unite, a lower-rank operand (a layer
        scale) or a broadcast one with every channel (a squeeze-excite gate) follows the tensor it scales, one with a
        single channel (a spatial map) leaves it alone."""
        tensors = [a for a in node.args if isinstance(a, fx.Node) and self.shape(a) is not None]
        lays = [self.layout.get(a) for a in tensors]
        if len(tensors) == 1 and lays[0] is not None and self.shape(tensors[0]) == out_shape:
            return lays[0]
        (p0, p1), shapes = (lays + [None, None])[:2], [self.shape(t) or () for t in tensors]
        for (big, b), (low, w) in (((0, p0), (1, p1)), ((1, p1), (0, p0))):  # a lower-rank operand
            if b is not None and w is not None and shapes[big] == out_shape and len(shapes[low]) < len(out_shape) \
                    and tuple(shapes[low]) == out_shape[len(out_shape) - len(shapes[low]):] \
                    and b.cdim - len(out_shape) == w.cdim - len(shapes[low]):  # (a layer scale) right-aligned: same channels
                return self.unite(b, w, node.name)
        if len(tensors) == 2 and p0 is not None and p1 is not None and p0.cdim == p1.cdim:
            pair = (p0, p1)
            if shapes[0] == shapes[1] == out_shape:
                return self.unite(pair[0], pair[1], node.name)
            for big, gate in ((0, 1), (1, 0)):
                cdim = pair[gate].cdim
                if shapes[big] == out_shape and is_gate(shapes[gate], out_shape, cdim):
                    if shapes[gate][cdim] == 1:  # one value for every channel: nothing to couple
                        return pair[big]
                    return self.unite(pair[big], pair[gate], node.name)
        return self.opaque(node, f"broadcasting or unknown operand at {node.name}")

    def cat(self, node: fx.Node, out_shape: tuple[int, ...]) -> Layout | None:
        parts = node.args[0]
        dim = _int(node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0), 0)
        if not isinstance(parts, (list, tuple)):  # e.g. torch.cat(x.chunk(2)): the parts were frozen above
            return self.opaque(node, f"concatenation {node.name} of unknown tensors")
        lays = [self.layout.get(p) if isinstance(p, fx.Node) else None for p in parts]
        known = [lay_ for lay_ in lays if lay_ is not None]
        if len(known) != len(lays) or any(lay_.cdim != known[0].cdim for lay_ in known):
            return self.opaque(node, f"concatenation {node.name} of unknown tensors")
        if dim % len(out_shape) == known[0].cdim:
            return Layout(known[0].cdim, [seg for lay_ in known for seg in lay_.segs])
        first = known[0]
        for other in known[1:]:
            self.unite(first, other, node.name)
        return first

    def reshape(self, node: fx.Node, lay: Layout | None, out_shape: tuple[int, ...]) -> Layout | None:
        """``view``/``reshape`` to ``(N, -1)`` flattens; adding or removing dimensions of size 1 moves the channel dimension."""
        in_shape = self.shape(node.args[0])
        if node.target in ("view", "reshape", torch.reshape):
            if lay is not None and in_shape and len(out_shape) == 2 and lay.cdim == 1 and out_shape[0] == in_shape[0]:
                return self.flatten(node, lay, 1, -1)
        if lay is not None and in_shape and lay.cdim > 0 and in_shape[lay.cdim] > 1 and in_shape[0] == out_shape[0]:
            src = [i for i in range(1, len(in_shape)) if in_shape[i] != 1]
            dst = [i for i in range(1, len(out_shape)) if out_shape[i] != 1]
            if [in_shape[i] for i in src] == [out_shape[i] for i in dst]:
                return Layout(dst[src.index(lay.cdim)], lay.segs)
        return self.opaque(node, f"reshape {node.name} mixes the channel dimension")

    def permute(self, node: fx.Node, lay: Layout | None) -> Layout | None:
        """``transpose``/``permute``: the channel dimension moves, the channels do not."""
        rank = self.rank(node.args[0])
        raw = node.args[1] if len(node.args) == 2 and isinstance(node.args[1], (list, tuple)) else node.args[1:]
        dims = [d for d in raw if isinstance(d, int)]
        if lay is None or not rank or not dims or len(dims) != len(raw):
            return self.opaque(node, f"permutation {node.name} of an unknown tensor")
        order = list(range(rank))
        if node.target in (torch.transpose, "transpose") and len(dims) == 2:
            a, b = dims[0] % rank, dims[1] % rank
            order[a], order[b] = order[b], order[a]
        elif len(dims) == rank:
            order = [d % rank for d in dims]
        else:
            return self.opaque(node, f"permutation {node.name} of an unknown tensor")
        return Layout(order.index(lay.cdim), lay.segs)

    def expand(self, node: fx.Node, lay: Layout | None, out_shape: tuple[int, ...]) -> Layout | None:
        """``expand``/``expand_as``/``broadcast_to`` keeping the channel dimension's size (``-1``): the layout goes through."""
        in_shape = self.shape(node.args[0])
        if lay is not None and in_shape is not None and len(out_shape) >= len(in_shape):
            cdim = lay.cdim + len(out_shape) - len(in_shape)
            if out_shape[cdim] == in_shape[lay.cdim]:
                return Layout(cdim, lay.segs)
        return self.opaque(node, f"{node.name} broadcasts the channel dimension")

    def index(self, node: fx.Node, lay: Layout | None, out_shape: tuple[int, ...]) -> Layout | None:
        """``x[:, 0]`` and the like (ints and slices): the layout goes through when the channel dimension is taken whole."""
        raw = node.args[1]
        idx = raw if isinstance(raw, tuple) else (raw,)
        in_shape = self.shape(node.args[0])
        if lay is not None and in_shape is not None and len(idx) <= len(in_shape) and all(isinstance(i, (int, slice)) for i in idx):
            whole = lay.cdim >= len(idx) or idx[lay.cdim] == slice(None)
            cdim = lay.cdim - sum(1 for i in idx[: lay.cdim] if isinstance(i, int))
            if whole and 0 <= cdim < len(out_shape) and out_shape[cdim] == in_shape[lay.cdim]:
                return Layout(cdim, lay.segs)
        return self.opaque(node, f"indexing {node.name} across the channel dimension")

    def reduce(self, node: fx.Node, lay: Layout | None) -> Layout | None:
        in_shape = self.shape(node.args[0])
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
        if lay is not None and in_shape is not None and dims is not None:
            norm = [_int(d, 0) % len(in_shape) for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
            if lay.cdim not in norm:
                shift = 0 if keep else sum(1 for d in norm if d < lay.cdim)
                return Layout(lay.cdim - shift, lay.segs)
        return self.opaque(node, f"reduction {node.name} over the channel dimension")


def _encoder_layer_problem(layer: nn.Module, name: str) -> str | None:
    """Why ``layer`` is not an ``nn.TransformerEncoderLayer`` the engine can follow (``None``: it is)."""
    if not isinstance(layer, nn.TransformerEncoderLayer):
        return f"{type(layer).__name__} is not an nn.TransformerEncoderLayer"
    spec = attention_spec(layer.self_attn, f"{name}.self_attn")
    if spec is None or spec.blocked:
        return spec.blocked if spec is not None else "unknown self-attention"
    if not all(isinstance(getattr(layer, n), nn.LayerNorm) and len(getattr(layer, n).normalized_shape) == 1 for n in ("norm1", "norm2")):
        return "its norms are not LayerNorms over the channels"
    act = layer.activation
    if not (act in (F.relu, F.gelu) or isinstance(act, _UNARY_MODULES)):
        return f"activation {getattr(act, '__name__', type(act).__name__)} is not known to be element-wise"
    return None
