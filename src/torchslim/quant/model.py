"""Turning a float model into its quantization simulation (weights and activation points).

Layers are quantized by swapping their class for a quantized subclass
(``Linear`` → :class:`QuantLinear`, ``Conv2d`` → :class:`QuantConv2d`...) that
keeps the parameter names and adds a ``weight_fq`` :class:`FakeQuantize`.

Activation quantization points (static mode) are placed on the ``torch.fx``
graph so that the exported ONNX graph has the QuantizeLinear/DequantizeLinear
pattern ONNX Runtime runs as integer kernels:

* the output of every quantized layer and every residual ``add`` is quantized
  (after the ReLU when a ReLU is its only consumer, so the ReLU folds into the
  quantization's clamp; the same for a clamping activation, ``ReLU6`` or
  ``Hardtanh``: quantized before it, MobileNetV2's depthwise outputs spent the
  8-bit range on pre-activation values up to ±11 that ReLU6 then cut to [0, 6],
  and were quantized twice);
* every quantized layer's input is quantized: through grid-preserving ops
  (max-pool, flatten, reshape, identity, ReLU) it reuses its producer's scale
  (a numerical no-op), otherwise (model input, average pool...) it gets its own;
* the model's final outputs stay float.

A model ``torch.fx`` cannot trace falls back to quantizing each layer's input
only (the layers' own modules carry the points); the placement's ``note`` (in the
report's ``meta["activation_placement"]``) gives the trace error.
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from torchslim.errors import TorchslimError, TransformRefusedError
from torchslim.graph.trace import TraceError, defaults_not_given, fx_trace
from torchslim.measure.macs import batch_inputs, call_model, eval_mode
from torchslim.quant.affine import QParams, dequantize, expand_qparam, quantize
from torchslim.quant.attention import QuantMultiheadAttention, quantize_attention_input
from torchslim.quant.config import ActQuantConfig, WeightQuantConfig  # noqa: F401 - the doctests and old imports
from torchslim.quant.fake import FakeQuantize
from torchslim.quant.layers import (
    QUANT_CLASS,
    QUANT_LAYERS,
    QUANT_MODULES,
    QuantConv1d,
    QuantConv2d,
    QuantConv3d,
    QuantLinear,
    SharedFakeQuantize,
    float_weights,
    is_quantized,
    quantizable_layers,
    quantizable_modules,
    swap_layer,
    swap_module,
    weights_of,
)
from torchslim.quant.tokens import mask_of, token_mask

QUANTIZABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
ACT_DICT = "quant_act"

__all__ = [  # the layer classes and swaps live in torchslim.quant.layers; their names still work from here
    "ACT_DICT", "QUANTIZABLE", "QUANT_CLASS", "QUANT_LAYERS", "QUANT_MODULES", "Placement", "QuantConv1d",
    "QuantConv2d", "QuantConv3d", "QuantLinear", "SharedFakeQuantize", "activation_quantizers", "calibrate",
    "float_weights", "is_quantized", "layer_quantizers", "place_activation_quant", "quantizable_layers",
    "quantizable_modules", "scale_range", "set_enabled", "set_observing", "swap_layer", "swap_module",
    "weight_quantizers", "weights_of", "add_points", "preserve_kernel_sums_",
]


# ----------------------------------------------------------------------------- activation placement

_PASSTHROUGH_MODULES = (nn.Identity, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.Flatten, nn.Dropout, nn.ReLU)
_PASSTHROUGH_FUNCS = {torch.flatten, F.relu, torch.relu, F.max_pool2d, F.dropout}
_PASSTHROUGH_METHODS = {"view", "reshape", "flatten", "contiguous", "relu"}
_ADD_FUNCS = {operator.add, operator.iadd, torch.add}
#: clamping activations: quantized after them (their clamp falls inside the quantizer's), not passed through
_CLAMP_MODULES = (nn.ReLU6, nn.Hardtanh)
_CLAMP_FUNCS = {F.relu6, F.hardtanh}


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (*QUANT_MODULES, FakeQuantize)) or super().is_leaf_module(m, qualname)


def _kind(node: torch.fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        m = modules.get(str(node.target))
        if isinstance(m, QUANT_LAYERS):
            return "layer"
        if isinstance(m, nn.ReLU):
            return "relu"
        if isinstance(m, _CLAMP_MODULES):
            return "clamp"
        if isinstance(m, _PASSTHROUGH_MODULES):
            return "pass"
        return "other"
    if node.op == "call_function":
        if node.target in _ADD_FUNCS:
            return "add"
        if node.target in (F.relu, torch.relu):
            return "relu"
        if node.target in _CLAMP_FUNCS:
            return "clamp"
        if node.target in _PASSTHROUGH_FUNCS:
            return "pass"
        return "other"
    if node.op == "call_method":
        if node.target == "add":
            return "add"
        if node.target == "relu":
            return "relu"
        if node.target in _PASSTHROUGH_METHODS:
            return "pass"
        return "other"
    return node.op


@dataclass
class Placement:
    """Where activation quantization points were put.

    Attributes:
        method: ``graph`` (torch.fx) or ``layer_inputs`` (fallback).
        points: names of the activation quantizers (keys of ``model.quant_act`` or layer names).
        shared: quantized-layer inputs that reuse an upstream quantizer.
        note: why the fallback was used, if it was.
    """

    method: str
    points: list[str] = field(default_factory=list)
    shared: list[str] = field(default_factory=list)
    note: str = ""


def _make_act_fq(act: ActQuantConfig, learn_scale: bool) -> FakeQuantize:
    return FakeQuantize(act.spec(), observer=act.observer, observer_args=act.observer_args(), learn_scale=learn_scale)


def place_activation_quant(model: nn.Module, act: ActQuantConfig, *, learn_scale: bool = False,
                           inputs: list[str] | None = None) -> Placement:
    """Insert activation quantization points into ``model`` (layers must already be swapped).

    On success the model's ``forward`` runs the traced graph with the points in it
    (the graph module shares every submodule with ``model``); the quantizers live
    in ``model.quant_act``. Given ``inputs`` (the arguments the calibration batches
    give), the others are traced at their defaults and the new ``forward`` refuses,
    by name, any of them passed with another value. If the model cannot be traced each quantized layer
    quantizes its own input instead, and the placement's ``note`` says why
    (the :class:`~torchslim.graph.trace.TraceError`).

    Example:
        >>> m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> for _, l in quantizable_layers(m): swap_layer(l, WeightQuantConfig())
        >>> placement = place_activation_quant(m, ActQuantConfig())
        >>> placement.method, placement.points      # the ReLU's output (torch.fx names it _1), the model input
        ('graph', ['_1', 'input_0'])
    """
    try:
        graph = fx_trace(model, tracer=_Tracer(), what="activation placement", inputs=inputs)
    except TraceError as exc:  # a reported fallback: each layer quantizes its own input
        return _layer_input_points(model, act, learn_scale, note=f"{exc}; each quantized layer quantizes its own input")
    modules = dict(model.named_modules())
    _drop_identities(graph, modules)
    placer = _GraphPlacer(graph, modules, act, learn_scale)
    nodes = list(graph.nodes)  # the nodes as traced: points inserted by step 1 are not revisited by step 2
    placer.quantize_outputs(nodes)
    placer.quantize_layer_inputs(nodes)
    model.add_module(ACT_DICT, placer.acts)
    graph.lint()
    gm = torch.fx.GraphModule(model, graph, class_name=type(model).__name__ + "Quantized")
    model.__dict__["_torchslim_quant_graph"] = gm
    model.__dict__["forward"] = gm.forward if inputs is None else _Guarded(gm, inputs, defaults_not_given(model, inputs))
    placer.placement.points += _attention_inputs(model, act, learn_scale)
    return placer.placement


class _Guarded:
    """``gm.forward`` taking the traced ``inputs`` (positionally or by name) and refusing any other argument that is
    not its traced default: the graph was traced without it, and would ignore it silently (a ``**kwargs`` forward).
    An object, not a closure, so that a deep copy of the model calls its own copy of the graph."""

    def __init__(self, gm: torch.fx.GraphModule, inputs: list[str], defaults: dict[str, Any]) -> None:
        self.gm, self.inputs, self.defaults = gm, list(inputs), dict(defaults)

    @property
    def __signature__(self) -> inspect.Signature:  # what callers inspect (how many inputs a batch holds): the graph's
        return inspect.signature(self.gm.forward)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        extra = [k for k, v in kwargs.items() if k not in self.inputs and not (k in self.defaults and _same(v, self.defaults[k]))]
        if len(args) > len(self.inputs) or extra:
            given = extra or [f"positional argument {i}" for i in range(len(self.inputs), len(args))]
            raise TorchslimError(
                f"this quantized model's graph was traced with the inputs its calibration batches gave "
                f"({', '.join(self.inputs)}); {', '.join(map(str, given))} would be ignored: quantize with calibration "
                "batches that give it (positional inputs as ((x, mask),) or ((x, mask), labels); a dict by name)")
        return self.gm.forward(*args, **{k: v for k, v in kwargs.items() if k in self.inputs})


def _same(value: Any, default: Any) -> bool:
    return value is default or (not isinstance(value, torch.Tensor) and not isinstance(default, torch.Tensor) and value == default)


def _attention_inputs(model: nn.Module, act: ActQuantConfig, learn_scale: bool) -> list[str]:
    """Every quantized ``MultiheadAttention`` quantizes its own input (it is a leaf of the graph)."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, QuantMultiheadAttention):
            quantize_attention_input(module, act, learn_scale=learn_scale)
            names.append(name)
    return names


def _layer_input_points(model: nn.Module, act: ActQuantConfig, learn_scale: bool, note: str) -> Placement:
    """The fallback placement: every quantized layer quantizes its own input."""
    points = []
    for name, module in model.named_modules():
        if isinstance(module, QUANT_LAYERS):
            module.input_fq = _make_act_fq(act, learn_scale)
            points.append(name)
    return Placement("layer_inputs", points + _attention_inputs(model, act, learn_scale), note=note)


def _drop_identities(graph: torch.fx.Graph, modules: dict[str, nn.Module]) -> None:
    """Remove ``Identity`` calls (folded BatchNorms) from ``graph``."""
    for node in list(graph.nodes):
        if node.op == "call_module" and isinstance(modules.get(str(node.target)), nn.Identity) and node.args:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)


class _GraphPlacer:
    """Puts activation quantizers into a traced graph (the steps of :func:`place_activation_quant`)."""

    def __init__(self, graph: torch.fx.Graph, modules: dict[str, nn.Module], act: ActQuantConfig, learn_scale: bool) -> None:
        self.graph, self.modules, self.act, self.learn_scale = graph, modules, act, learn_scale
        self.acts = nn.ModuleDict()
        self.quantized: dict[torch.fx.Node, str] = {}  # node -> act key whose output is on that grid
        self.own_inputs: dict[torch.fx.Node, torch.fx.Node] = {}  # source -> its own input quantizer node
        self.placement = Placement("graph")

    def kind(self, node: torch.fx.Node) -> str:
        return _kind(node, self.modules)

    def key_of(self, node: torch.fx.Node) -> str:
        key = node.name
        while key in self.acts:
            key += "_"
        return key

    def insert_after(self, node: torch.fx.Node, key: str) -> torch.fx.Node:
        self.acts[key] = _make_act_fq(self.act, self.learn_scale)
        with self.graph.inserting_after(node):
            new = self.graph.call_module(f"{ACT_DICT}.{key}", (node,))
        node.replace_all_uses_with(new, delete_user_cb=lambda u: u is not new)
        self.placement.points.append(key)
        return new

    def insert_before(self, node: torch.fx.Node, src: torch.fx.Node, key: str, fq: nn.Module) -> torch.fx.Node:
        self.acts[key] = fq
        with self.graph.inserting_before(node):
            new = self.graph.call_module(f"{ACT_DICT}.{key}", (src,))
        node.replace_input_with(src, new)
        return new

    def quantize_outputs(self, nodes: list[torch.fx.Node]) -> None:
        """Step 1: outputs of layers and adds (or of their sole ReLU consumers), except the model's outputs."""
        output_node = next(n for n in nodes if n.op == "output")
        for node in nodes:
            if self.kind(node) not in ("layer", "add"):
                continue
            users = list(node.users)
            targets = users if users and all(self.kind(u) in ("relu", "clamp") for u in users) else [node]
            for t in targets:
                if t in self.quantized or output_node in t.users:
                    continue
                key = self.key_of(t)
                if self.kind(node) == "add" and key in self.act.float_points:  # left in float (the guard's fallback)
                    continue
                self.quantized[self.insert_after(t, key)] = key

    def quantize_layer_inputs(self, nodes: list[torch.fx.Node]) -> None:
        """Step 2: the input of every quantized layer (shared through grid-preserving ops, else its own)."""
        for node in nodes:
            if self.kind(node) != "layer" or not node.args:
                continue
            layer = self.modules[str(node.target)]
            if getattr(layer, "input_smooth", None) is not None:  # its input is rescaled inside it: own quantizer after
                layer.input_fq = _make_act_fq(self.act, self.learn_scale)
                self.placement.points.append(str(node.target))
                continue
            src = node.args[0]
            if isinstance(src, torch.fx.Node):
                self._quantize_input(node, src)

    def _quantize_input(self, node: torch.fx.Node, src: torch.fx.Node) -> None:
        cur, hops = src, 0
        while cur not in self.quantized and self.kind(cur) in ("pass", "relu"):
            if not cur.args or not isinstance(cur.args[0], torch.fx.Node):
                break
            cur, hops = cur.args[0], hops + 1
        if cur in self.quantized:  # on a quantized grid already (hops 0) or through grid-preserving ops
            if hops > 0:
                shared_key = self.key_of(src) + "_shared"
                self.insert_before(node, src, shared_key, SharedFakeQuantize(self.acts[self.quantized[cur]]))
                self.placement.shared.append(str(node.target))
            return
        if src in self.own_inputs:
            node.replace_input_with(src, self.own_inputs[src])
            return
        key = "input_0" if src.op == "placeholder" and "input_0" not in self.acts else self.key_of(src)
        self.own_inputs[src] = self.insert_before(node, src, key, _make_act_fq(self.act, self.learn_scale))
        self.placement.points.append(key)


def activation_quantizers(model: nn.Module) -> list[tuple[str, FakeQuantize]]:
    """Every activation :class:`FakeQuantize` in ``model`` (graph points and layer inputs).

    Example:
        >>> activation_quantizers(nn.Linear(2, 2))
        []
    """
    weights = {id(fq) for _, fq in weight_quantizers(model)}
    return [(n, m) for n, m in model.named_modules() if isinstance(m, FakeQuantize) and id(m) not in weights]


def add_points(model: nn.Module) -> list[str]:
    """The activation points (keys of ``model.quant_act``) of residual ``add`` outputs (or of their sole ReLU).

    Example:
        >>> class Res(nn.Module):
        ...     def __init__(self):
        ...         super().__init__(); self.fc = nn.Linear(4, 4); self.out = nn.Linear(4, 2)
        ...     def forward(self, x):
        ...         return self.out(torch.relu(x + self.fc(x)))
        >>> m = Res(); swap_module(m.fc, WeightQuantConfig()); swap_module(m.out, WeightQuantConfig())
        >>> _ = place_activation_quant(m, ActQuantConfig())
        >>> add_points(m)
        ['relu']
    """
    gm = model.__dict__.get("_torchslim_quant_graph")
    if gm is None:
        return []
    modules = dict(model.named_modules())
    found = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not str(node.target).startswith(ACT_DICT + ".") or not node.args:
            continue
        src = node.args[0]
        if isinstance(src, torch.fx.Node) and _kind(src, modules) in ("relu", "clamp") and src.args:
            src = src.args[0]
        if isinstance(src, torch.fx.Node) and _kind(src, modules) == "add":
            found.append(str(node.target).removeprefix(ACT_DICT + "."))
    return found


def layer_quantizers(model: nn.Module, name: str) -> list[FakeQuantize]:
    """The quantizers that exist for layer ``name`` alone: its weight's, its own input's, its output's.

    Its output's: the activation points that read the layer's output (or the output
    of its sole ReLU/ReLU6 consumer); its own input's: a point read by this layer
    only (the layer's ``input_fq``, or a graph point). Turning them all off runs the
    layer in float, as if it had not been quantized (the accuracy guard's probe).

    Example:
        >>> m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> for _, l in quantizable_layers(m): swap_layer(l, WeightQuantConfig())
        >>> _ = place_activation_quant(m, ActQuantConfig())
        >>> len(layer_quantizers(m, "0")), len(layer_quantizers(m, "2"))     # weight, input, output; weight
        (3, 1)
    """
    modules = dict(model.named_modules())
    layer = modules.get(name)
    if layer is None or not is_quantized(layer):
        return []
    found = [m for m in layer.modules() if isinstance(m, FakeQuantize)]  # weights', its own input's
    gm = model.__dict__.get("_torchslim_quant_graph")
    if gm is None:
        return found
    for node in gm.graph.nodes:
        if node.op != "call_module" or not str(node.target).startswith(ACT_DICT + "."):
            continue
        fq = modules.get(str(node.target))
        src = node.args[0] if node.args else None
        if not isinstance(fq, FakeQuantize) or not isinstance(src, torch.fx.Node):
            continue
        if _kind(src, modules) in ("relu", "clamp") and src.args and isinstance(src.args[0], torch.fx.Node):
            src = src.args[0]
        producer = str(src.target) if src.op == "call_module" and isinstance(modules.get(str(src.target)), QUANT_LAYERS) else None
        own_input = producer is None and [(u.op, u.target) for u in node.users] == [("call_module", name)]
        if producer == name or own_input:
            found.append(fq)
    return found


def weight_quantizers(model: nn.Module) -> list[tuple[str, FakeQuantize]]:
    """``(layer_name, weight_fq)`` of every quantized Linear/Conv, ``(layer_name.parameter, quantizer)`` of the
    weights of the other quantized modules (attention, embedding, recurrent).

    Example:
        >>> weight_quantizers(nn.Linear(2, 2))
        []
    """
    out: list[tuple[str, FakeQuantize]] = []
    for n, m in model.named_modules():
        if isinstance(m, QUANT_LAYERS):
            out.append((n, m.get_submodule("weight_fq")))  # type: ignore[arg-type]  # a FakeQuantize by construction
        elif isinstance(m, QUANT_MODULES):
            out += [(f"{n}.{p}", fq) for p, _, fq in weights_of(m)]
    return out


def set_observing(model: nn.Module, *, weights: bool | None = None, activations: bool | None = None) -> None:
    """Switch observers of weight and/or activation quantizers on or off.

    Example:
        >>> set_observing(nn.Linear(2, 2), activations=False)
    """
    if weights is not None:
        for _, fq in weight_quantizers(model):
            fq.observing = weights
    if activations is not None:
        for _, fq in activation_quantizers(model):
            fq.observing = activations


def set_enabled(model: nn.Module, *, weights: bool | None = None, activations: bool | None = None) -> None:
    """Switch weight and/or activation fake quantization on or off (off = float).

    Example:
        >>> set_enabled(nn.Linear(2, 2), weights=False)
    """
    if weights is not None:
        for _, fq in weight_quantizers(model):
            fq.enabled = weights
    if activations is not None:
        for _, fq in activation_quantizers(model):
            fq.enabled = activations


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Any], mask_key: str | None = None,
              tokens: dict[str, int] | None = None) -> int:
    """Run calibration batches (``(x, y)`` pairs, tensors or dicts) through ``model`` observing activations.

    Activation fake quantization is off while observing (statistics of the float
    network with quantized weights); afterwards observers are frozen and
    quantization is on. Returns the number of batches used. With ``mask_key``,
    a dict batch's ``[batch, tokens]`` mask under that key limits the
    statistics to real tokens (:mod:`torchslim.quant.tokens`); ``tokens``, when
    given, receives the count of ``real`` and ``total`` positions of the masked batches.

    Raises:
        TransformRefusedError: ``batches`` is empty.

    Example:
        >>> calibrate(nn.Linear(2, 2), [torch.randn(4, 2)])
        1
    """
    set_enabled(model, activations=False)
    set_observing(model, activations=True)
    n = 0
    with eval_mode(model):
        for batch in batches:
            inputs = batch_inputs(batch, model)
            mask = mask_of(inputs, mask_key)
            if mask is not None and tokens is not None:
                tokens["real"] = tokens.get("real", 0) + int((mask != 0).sum())
                tokens["total"] = tokens.get("total", 0) + mask.numel()
            with token_mask(mask):
                call_model(model, inputs)
            n += 1
    set_observing(model, activations=False)
    set_enabled(model, activations=True)
    if n == 0:
        raise TransformRefusedError("the calibration loader is empty: static quantization needs at least one batch")
    return n


def scale_range(qp: QParams) -> tuple[float, float]:
    """Smallest and largest scale of a quantizer.

    Example:
        >>> from torchslim.quant.affine import QuantSpec, qparams_from_tensor
        >>> scale_range(qparams_from_tensor(torch.tensor([1.0, -2.0]), QuantSpec()))[0] > 0
        True
    """
    s = qp.scale.detach().float()
    return float(s.min()), float(s.max())


# ----------------------------------------------------------------------------- weight rounding


@torch.no_grad()
def preserve_kernel_sums_(layer: nn.Module) -> bool:
    """Round a quantized convolution's weight so every spatial kernel keeps its sum; the float weight is
    set to the result (on the grid, so the layer's quantizer and ONNX ``QuantizeLinear`` give it back).

    Per output/input channel pair the integer taps' sum is made the nearest integer to the
    float taps' sum (in steps): after rounding to nearest, the taps nearest to rounding the
    other way move by one step (never past the integer range). A kernel whose taps cancel
    (an edge filter) then keeps its near-zero response to flat regions; rounded to nearest,
    nine taps leave an error of about one step in the sum, which flat inputs turn into a
    spurious output (on MobileNetV2's first depthwise convolution with up-scaled
    Fashion-MNIST images: output SQNR 19.6 dB from that layer's 8-bit weights alone).
    Only layers with a spatial kernel of more than one tap and per-tensor or per-channel
    scales are changed (the weight's scale is unchanged).

    Returns:
        Whether the weight was changed.

    Example:
        >>> conv = nn.Conv2d(1, 1, 3, bias=False)
        >>> steps = torch.tensor([127.5, 10.4, 20.4, 5.4, -3.6, -40.6, 7.4, 2.4, -100.6])   # each 0.4 off the grid
        >>> conv.weight.data = (steps / 127.5).view(1, 1, 3, 3); swap_layer(conv, WeightQuantConfig())
        >>> nearest = torch.round(steps).clamp(-128, 127)
        >>> round(float(nearest.sum() - steps.sum()), 2)         # rounded to nearest: the sum is 3.7 steps off
        -3.7
        >>> preserve_kernel_sums_(conv)
        True
        >>> q = quantize(conv.weight, conv.weight_fq.qparams()).float()
        >>> round(float(q.sum() - steps.sum()), 2), int((q.flatten() - nearest).sum())
        (0.3, 4)
    """
    fq = getattr(layer, "weight_fq", None)
    weight = getattr(layer, "weight", None)
    if not isinstance(fq, FakeQuantize) or not isinstance(weight, torch.Tensor) or weight.dim() < 3:
        return False
    taps = weight[0, 0].numel()
    qp = fq.qparams()
    if taps < 2 or qp.group_size is not None or (qp.axis is not None and qp.axis != 0):
        return False
    w = weight.float()
    scale = expand_qparam(qp.scale, w, qp.axis, None)
    zp = expand_qparam(qp.zero_point, w, qp.axis, None).float()
    exact = (w / scale + zp).flatten(2)  # (out, in, taps), in steps
    q = quantize(w, qp).float().flatten(2)
    need = torch.round(exact.sum(-1) - q.sum(-1))  # steps the kernel's sum is off by
    direction = torch.sign(need).unsqueeze(-1)
    movable = (q + direction >= qp.qmin) & (q + direction <= qp.qmax)
    eagerness = torch.where(movable, (exact - q) * direction, torch.full_like(q, -float("inf")))
    rank = eagerness.argsort(-1, descending=True).argsort(-1)
    move = (rank < need.abs().unsqueeze(-1)) & movable & (direction != 0)
    q = q + direction * move
    if not bool(move.any()):
        return False
    snapped = dequantize(q.reshape(weight.shape).to(torch.int32), qp)
    weight.copy_(snapped.to(weight.dtype))
    return True
