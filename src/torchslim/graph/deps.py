"""Channel dependency groups for structured pruning, found on a torch.fx trace.

Every tensor in the traced graph carries a *layout*: which channel spaces its
channel dimension is made of (one per segment; concatenation makes several) and
how many consecutive features each channel occupies (``inner``: a flatten of a
C×H×W map into a Linear gives ``inner = H*W``). A Conv/Linear output opens a new
space; element-wise ops, BatchNorm, pooling and depthwise convs carry it through;
residual adds *unite* spaces (they must be pruned together); concatenation
stacks them; a Linear or Conv that reads a space is one of its consumers.

``torch.chunk`` along the channel dimension cuts a space where a part's
boundary falls inside it (each member keeps each part at the right offset) and
unites the parts, since the pruned tensor is chunked evenly again: for a gate
``a, b = conv(x).chunk(2, 1); a * sigmoid(b)`` channel ``c`` of the group is
channel ``c`` of each half of ``conv``'s output. ``torch.split`` along the
channel dimension has sizes fixed in the code: its input is frozen.

A space that reaches the model's output, comes from its input, or meets an op
the engine does not understand is *frozen*, with the reason recorded: it is never
pruned, and naming its layer explicitly raises an error that says why. The
model is traced with :func:`torchslim.graph.trace.fx_trace`: a model torch.fx
cannot trace raises its :class:`~torchslim.graph.trace.TraceError`.

Example:
    >>> model = ts.create_model("resnet_cifar", depth=20)
    >>> deps = dependency_groups(model, torch.randn(1, 3, 32, 32))
    >>> g = next(g for g in deps.groups if g.prunable and "layer1.0.conv1" in g.producers)
    >>> g.channels, [m.module for m in g.members]          # inside a residual block
    (16, ['layer1.0.conv1', 'layer1.0.bn1', 'layer1.0.conv2'])
    >>> residual = next(g for g in deps.groups if "conv1" in g.producers)
    >>> sorted(residual.producers)                         # united by the residual adds
    ['conv1', 'layer1.0.conv2', 'layer1.1.conv2', 'layer1.2.conv2']
    >>> [g.frozen for g in deps.groups if not g.prunable]
    ['model input', 'reaches the model output']

    A GLU-style gate: the two halves of ``conv``'s output are one group with ``mix``'s input.

    >>> class Gated(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.conv, self.mix, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(4, 4, 1), nn.Linear(4, 2)
    ...     def forward(self, x):
    ...         a, b = torch.chunk(self.conv(x), 2, dim=1)
    ...         return self.head(self.mix(a * torch.sigmoid(b)).mean((2, 3)))
    >>> deps = dependency_groups(Gated(), torch.randn(1, 3, 4, 4))
    >>> g = next(g for g in deps.groups if "mix" in [m.module for m in g.members if m.role == "in"])
    >>> g.channels, [(m.module, m.role, m.offset) for m in g.members]
    (4, [('conv', 'out', 0), ('conv', 'out', 4), ('mix', 'in', 0)])
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from torchslim.graph.trace import fx_trace

_UNARY_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU,
    nn.Dropout, nn.Dropout2d, nn.Identity, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Softplus, nn.Mish,
)
_UNARY_FUNCTIONS = {
    F.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.sigmoid, F.tanh, F.leaky_relu, F.dropout, F.max_pool2d,
    F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.interpolate, torch.relu, torch.sigmoid,
    torch.tanh, operator.neg, F.elu, F.mish,
}
_UNARY_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "detach", "float", "neg"}
_BINARY = {operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.imul, torch.add, torch.mul, torch.sub}
_BINARY_METHODS = {"add", "add_", "mul", "mul_", "sub", "div"}
_SPLIT_FUNCTIONS = {torch.chunk, torch.split}
_SPLIT_METHODS = {"chunk", "split"}


@dataclass
class Member:
    """One place a channel space is stored: ``role`` of ``module``; channel ``c`` of the group occupies
    features ``offset + c*inner ... offset + (c+1)*inner - 1`` of that module's dimension.

    Roles: ``out`` (Conv/Linear output rows), ``in`` (Conv/Linear input columns),
    ``dw`` (depthwise Conv channels), ``bn`` (BatchNorm), ``ln`` (LayerNorm),
    ``attn_in`` (the q/k/v projections' input columns), ``attn_out`` (the output projection's rows).
    """

    module: str
    role: str
    offset: int = 0
    inner: int = 1


@dataclass
class Group:
    """Channels that must be pruned together."""

    id: int
    channels: int
    members: list[Member] = field(default_factory=list)
    frozen: str | None = None

    @property
    def producers(self) -> list[str]:
        """The layers whose outputs hold the group's channels (each once, in member order)."""
        return list(dict.fromkeys(m.module for m in self.members if m.role in ("out", "attn_out")))

    @property
    def prunable(self) -> bool:
        return self.frozen is None and bool(self.producers)


@dataclass
class HeadGroup:
    """The heads of one attention module (pruned by slicing its q/k/v/out projections)."""

    module: str
    heads: int
    head_dim: int


@dataclass
class _Seg:
    space: int
    channels: int
    inner: int = 1


@dataclass
class _Layout:
    cdim: int  # channel dimension (normalised, non-negative)
    segs: list[_Seg]

    @property
    def channels(self) -> int:
        return sum(s.channels for s in self.segs)


def is_attention(module: nn.Module) -> bool:
    """An attention block torchslim can prune heads of: q/k/v/out Linear projections and ``head_dim``."""
    return all(isinstance(getattr(module, n, None), nn.Linear) for n in ("q_proj", "k_proj", "v_proj", "out_proj")) and isinstance(
        getattr(module, "head_dim", None), int
    )


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return is_attention(m) or super().is_leaf_module(m, qualname)


class _Spaces:
    def __init__(self) -> None:
        self.parent: list[int] = []
        self.channels: list[int] = []
        self.members: list[list[Member]] = []
        self.frozen: list[str | None] = []

    def new(self, channels: int, frozen: str | None = None) -> int:
        i = len(self.parent)
        self.parent.append(i)
        self.channels.append(channels)
        self.members.append([])
        self.frozen.append(frozen)
        return i

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.channels[ra] != self.channels[rb]:
            self.freeze(ra, "coupled tensors have different channel counts")
            self.freeze(rb, "coupled tensors have different channel counts")
        self.parent[rb] = ra
        self.members[ra] += self.members[rb]
        self.frozen[ra] = self.frozen[ra] or self.frozen[rb]

    def freeze(self, i: int, reason: str) -> None:
        r = self.find(i)
        if self.frozen[r] is None:
            self.frozen[r] = reason

    def split(self, i: int, k: int) -> int:
        """Cut the space of ``i`` after its first ``k`` channels; returns the new space of the rest.

        Every member keeps its first ``k`` channels where they were and gives the
        rest, shifted by ``k`` channels, to the new space.
        """
        r = self.find(i)
        rest = self.new(self.channels[r] - k, self.frozen[r])
        self.channels[r] = k
        self.members[rest] = [Member(m.module, m.role, m.offset + k * m.inner, m.inner) for m in self.members[r]]
        return rest


class _Analyzer:
    def __init__(self, model: nn.Module, example_input: Any) -> None:
        self.model = model
        self.modules = dict(model.named_modules())
        self.gm = fx.GraphModule(model, fx_trace(model, tracer=_Tracer(), what="structured pruning"))
        inputs = example_input if isinstance(example_input, tuple) else (example_input,)
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                ShapeProp(self.gm).propagate(*inputs)
        finally:
            model.train(was)
        self.s = _Spaces()
        self.layout: dict[fx.Node, _Layout | None] = {}
        self.pieces: dict[fx.Node, list[_Layout | None]] = {}  # the parts of a chunk/split, by index
        self.blocked: dict[str, str] = {}
        self.heads: list[HeadGroup] = []

    # -- helpers -------------------------------------------------------------
    def shape(self, node: Any) -> tuple[int, ...] | None:
        meta = getattr(node, "meta", {}).get("tensor_meta") if isinstance(node, fx.Node) else None
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def fresh(self, node: fx.Node, cdim: int, frozen: str | None = None) -> _Layout | None:
        return self.fresh_shape(self.shape(node), cdim, frozen)

    def fresh_shape(self, shape: tuple[int, ...] | None, cdim: int, frozen: str | None = None) -> _Layout | None:
        if shape is None or len(shape) < 2:
            return None
        cdim = cdim % len(shape)
        return _Layout(cdim, [_Seg(self.s.new(shape[cdim], frozen), shape[cdim])])

    def freeze(self, lay: _Layout | None, reason: str) -> None:
        if lay is not None:
            for seg in lay.segs:
                self.s.freeze(seg.space, reason)

    def add_members(self, lay: _Layout, module: str, role: str) -> None:
        offset = 0  # in features of the module's dimension
        for seg in lay.segs:
            self.s.members[self.s.find(seg.space)].append(Member(module, role, offset, seg.inner))
            offset += seg.channels * seg.inner

    def unite(self, a: _Layout, b: _Layout, where: str) -> _Layout:
        if [(s.channels, s.inner) for s in a.segs] == [(s.channels, s.inner) for s in b.segs]:
            for sa, sb in zip(a.segs, b.segs):
                self.s.union(sa.space, sb.space)
        else:
            self.freeze(a, f"misaligned channels combined at {where}")
            self.freeze(b, f"misaligned channels combined at {where}")
        return a

    def opaque(self, node: fx.Node, reason: str) -> _Layout | None:
        for arg in node.all_input_nodes:
            self.freeze(self.layout.get(arg), reason)
        out = self.fresh(node, 1 if len(self.shape(node) or ()) == 4 else -1, frozen=reason)
        return out

    # -- the walk ------------------------------------------------------------
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            self.release_pieces(node)
            if node.op == "placeholder":
                self.layout[node] = self.fresh(node, 1 if len(self.shape(node) or ()) == 4 else -1, "model input")
            elif node.op == "get_attr":
                self.layout[node] = self.fresh(node, -1, f"tensor attribute {node.target} used directly")
            elif node.op == "call_module":
                self.layout[node] = self.module_node(node)
            elif node.op in ("call_function", "call_method"):
                self.layout[node] = self.function_node(node)
            elif node.op == "output":
                for arg in node.all_input_nodes:
                    self.freeze(self.layout.get(arg), "reaches the model output")

    def release_pieces(self, node: fx.Node) -> None:
        """Freeze the parts of a chunk/split that ``node`` uses other than one at a time (``parts[i]``)."""
        for arg in node.all_input_nodes:
            if arg in self.pieces and not (node.target is operator.getitem and node.args[0] is arg and isinstance(node.args[1], int)):
                for part in self.pieces[arg]:
                    self.freeze(part, f"the parts of {arg.name} are used together at {node.name}")

    def split(self, node: fx.Node, lay: _Layout | None) -> list[_Layout | None]:
        """The layouts of the parts of a ``chunk``/``split``.

        Along the channel dimension, ``chunk`` cuts the channel spaces at the parts'
        boundaries and unites the parts (the pruned tensor is chunked evenly again,
        so every part must keep as many channels, the same ones); ``split`` has
        sizes fixed in the code, so its input is frozen.
        """
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
        if node.target not in (torch.chunk, "chunk"):
            reason = f"torch.split at {node.name} has sizes fixed in the code along the channel dimension"
            self.freeze(lay, reason)
            return [self.fresh_shape(shape, lay.cdim, reason) for shape in shapes]
        cuts = [sum(shape[lay.cdim] for shape in shapes[: i + 1]) for i in range(len(shapes) - 1)]
        for cut in cuts:
            if not self.cut_at(lay, cut):
                reason = f"split {node.name} cuts through the features of one channel"
                self.freeze(lay, reason)
                return [self.fresh_shape(shape, lay.cdim, reason) for shape in shapes]
        parts: list[_Layout | None] = []
        segs = list(lay.segs)
        for shape in shapes:
            taken: list[_Seg] = []
            while segs and sum(s.channels * s.inner for s in taken) < shape[lay.cdim]:
                taken.append(segs.pop(0))
            parts.append(_Layout(lay.cdim, taken))
        for part in parts[1:]:
            self.unite(parts[0], part, node.name)  # type: ignore[arg-type]  # parts are layouts here
        return parts

    def cut_at(self, lay: _Layout, cut: int) -> bool:
        """Make a segment boundary of ``lay`` at feature ``cut``; ``False`` when it falls inside a channel.

        A cut inside a segment splits its (unfrozen) space; every layout holding
        that space is rewritten, so the halves stay one space everywhere.
        """
        start = 0
        for seg in lay.segs:
            width = seg.channels * seg.inner
            if start < cut < start + width:
                root = self.s.find(seg.space)
                if (cut - start) % seg.inner or self.s.frozen[root] is not None:
                    return False
                k = (cut - start) // seg.inner
                rest = self.s.split(root, k)
                self.rewrite(root, k, rest)
                return True
            start += width
        return True

    def rewrite(self, root: int, k: int, rest: int) -> None:
        """Replace every segment of the space ``root`` by its first ``k`` channels and the space ``rest``."""
        seen: set[int] = set()
        for lay in [*self.layout.values(), *(p for parts in self.pieces.values() for p in parts)]:
            if lay is None or id(lay) in seen:
                continue
            seen.add(id(lay))
            segs: list[_Seg] = []
            for seg in lay.segs:
                if self.s.find(seg.space) == root:
                    segs += [_Seg(seg.space, k, seg.inner), _Seg(rest, seg.channels - k, seg.inner)]
                else:
                    segs.append(seg)
            lay.segs = segs

    def in_layout(self, node: fx.Node) -> _Layout | None:
        args = [a for a in node.args if isinstance(a, fx.Node)]
        return self.layout.get(args[0]) if args else None

    def module_node(self, node: fx.Node) -> _Layout | None:
        name = str(node.target)
        mod = self.modules[name]
        lay = self.in_layout(node)
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            if lay is None or lay.cdim != 1 or any(s.inner != 1 for s in lay.segs):
                self.freeze(lay, f"unsupported input layout at {name}")
                return self.fresh(node, 1, f"unsupported input layout at {name}")
            if mod.groups == 1:
                self.add_members(lay, name, "in")
                out = self.fresh(node, 1)
                if out is not None:
                    self.add_members(out, name, "out")
                return out
            if mod.groups == mod.in_channels == mod.out_channels:
                self.add_members(lay, name, "dw")
                return _Layout(1, [_Seg(s.space, s.channels, 1) for s in lay.segs])
            reason = f"grouped convolution {name} (groups={mod.groups}) couples channels across groups"
            self.blocked[name] = reason
            self.freeze(lay, reason)
            return self.fresh(node, 1, reason)
        if isinstance(mod, nn.Linear):
            shape = self.shape(node.args[0])
            if lay is None or shape is None or lay.cdim != len(shape) - 1:
                self.freeze(lay, f"unsupported input layout at {name}")
            else:
                self.add_members(lay, name, "in")
            out = self.fresh(node, -1)
            if out is not None:
                self.add_members(out, name, "out")
            return out
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            if lay is None or lay.cdim != 1 or any(s.inner != 1 for s in lay.segs):
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
        if isinstance(mod, nn.Flatten):
            return self.flatten(node, lay, mod.start_dim, mod.end_dim)
        if isinstance(mod, _UNARY_MODULES):
            return lay
        reason = f"module {name} ({type(mod).__name__}) is not understood by the pruning engine"
        self.blocked[name] = reason
        return self.opaque(node, reason)

    def flatten(self, node: fx.Node, lay: _Layout | None, start: int, end: int) -> _Layout | None:
        shape = self.shape(node.args[0])
        if lay is None or shape is None:
            return self.opaque(node, "flatten of an unknown tensor")
        start, end = start % len(shape), end % len(shape)
        if start == lay.cdim and end == len(shape) - 1:
            factor = math.prod(shape[start + 1 :])
            return _Layout(start, [_Seg(s.space, s.channels, s.inner * factor) for s in lay.segs])
        if lay.cdim < start:
            return lay
        return self.opaque(node, "flatten across the channel dimension")

    def function_node(self, node: fx.Node) -> _Layout | None:
        target = node.target
        lay = self.in_layout(node)
        out_shape = self.shape(node)
        if node.op == "call_method" and target in ("size", "dim") or target in (getattr, len):
            return None
        if target in _SPLIT_FUNCTIONS or (node.op == "call_method" and target in _SPLIT_METHODS):
            self.pieces[node] = self.split(node, lay)
            return None
        source, index = (node.args[0], node.args[1]) if target is operator.getitem else (None, None)
        if isinstance(source, fx.Node) and source in self.pieces and isinstance(index, int):
            pieces = self.pieces[source]
            if -len(pieces) <= index < len(pieces):
                return pieces[index]
        if out_shape is None:  # not one tensor: a tuple of them (torch.max with dim, topk, ...) or a scalar
            return self.opaque(node, f"operation {node.name} ({getattr(target, '__name__', target)}) does not return one tensor")
        if target in _BINARY or (node.op == "call_method" and target in _BINARY_METHODS):
            tensors = [a for a in node.args if isinstance(a, fx.Node) and self.shape(a) is not None]
            lays = [self.layout.get(a) for a in tensors]
            if len(tensors) == 1 and lays[0] is not None and self.shape(tensors[0]) == out_shape:
                return lays[0]
            if len(tensors) == 2 and all(lays) and self.shape(tensors[0]) == self.shape(tensors[1]) == out_shape:
                if lays[0].cdim == lays[1].cdim:
                    return self.unite(lays[0], lays[1], node.name)
            return self.opaque(node, f"broadcasting or unknown operand at {node.name}")
        if target in _UNARY_FUNCTIONS or (node.op == "call_method" and target in _UNARY_METHODS):
            if lay is not None and self.shape(node.args[0]) is not None and len(self.shape(node.args[0])) == len(out_shape):
                return lay
            return self.opaque(node, f"unsupported use of {node.name}")
        if target in (torch.cat, torch.concat) or (node.op == "call_method" and target == "cat"):
            parts = node.args[0]
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            if not isinstance(parts, (list, tuple)):  # e.g. torch.cat(x.chunk(2)): the parts were frozen above
                return self.opaque(node, f"concatenation {node.name} of unknown tensors")
            lays = [self.layout.get(p) for p in parts]
            if not all(lays) or any(lay_.cdim != lays[0].cdim for lay_ in lays):
                return self.opaque(node, f"concatenation {node.name} of unknown tensors")
            if dim % len(out_shape) == lays[0].cdim:
                return _Layout(lays[0].cdim, [seg for lay_ in lays for seg in lay_.segs])
            first = lays[0]
            for other in lays[1:]:
                self.unite(first, other, node.name)
            return first
        if target in (torch.flatten,) or (node.op == "call_method" and target == "flatten"):
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            return self.flatten(node, lay, start, end)
        if node.op == "call_method" and target in ("view", "reshape") or target is torch.reshape:
            in_shape = self.shape(node.args[0])
            if lay is not None and in_shape and len(out_shape) == 2 and lay.cdim == 1 and out_shape[0] == in_shape[0]:
                return self.flatten(node, lay, 1, -1)
            return self.opaque(node, f"reshape {node.name} mixes the channel dimension")
        if target in (torch.mean, torch.sum, torch.amax) or (node.op == "call_method" and target in ("mean", "sum", "amax")):
            in_shape = self.shape(node.args[0])
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
            if lay is not None and in_shape is not None and dims is not None:
                dims = [d % len(in_shape) for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
                if lay.cdim not in dims:
                    shift = 0 if keep else sum(1 for d in dims if d < lay.cdim)
                    return _Layout(lay.cdim - shift, lay.segs)
            return self.opaque(node, f"reduction {node.name} over the channel dimension")
        return self.opaque(node, f"operation {node.name} ({getattr(target, '__name__', target)}) is not understood by the pruning engine")


@dataclass
class Dependencies:
    """The result of :func:`dependency_groups`."""

    groups: list[Group]
    heads: list[HeadGroup]
    blocked: dict[str, str]

    def groups_of(self, module: str) -> list[Group]:
        return [g for g in self.groups if any(m.module == module for m in g.members)]


def dependency_groups(model: nn.Module, example_input: Any) -> Dependencies:
    """Trace ``model`` and return its channel groups, attention head groups and blocked layers."""
    a = _Analyzer(model, example_input)
    a.run()
    roots: dict[int, Group] = {}
    for i in range(len(a.s.parent)):
        r = a.s.find(i)
        if r not in roots:
            roots[r] = Group(len(roots), a.s.channels[r], a.s.members[r], a.s.frozen[r])
    groups = [g for g in roots.values() if g.members]
    for g in groups:
        seen, uniq = set(), []
        for m in g.members:
            key = (m.module, m.role, m.offset)
            if key not in seen:
                seen.add(key)
                uniq.append(m)
        g.members = uniq
    return Dependencies(groups, a.heads, a.blocked)
