"""Concrete tracing: torch.fx with the example input's values at hand, for the models plain torch.fx cannot trace.

torch.fx stops at Python that asks a question of a traced value (``if x.shape[1] != self.num_channels``,
``len(x)``, ``for part in x``) and at a root ``forward`` wrapped by a decorator that takes ``*args,
**kwargs`` (Hugging Face's ``can_return_tuple``). The tracer here runs each operation on the example
input as it records it, so a question on shapes gets the answer the example gives, and it traces the
undecorated ``forward``. A question on the data (``if h.sum() > 0``, anything after ``.item()``,
``torch.equal``, the length of ``x.nonzero()`` or of a boolean-masked tensor) is still refused: its answer
could differ for the next input, and the graph would then be wrong. The graph is right for the example's shapes and branches: it serves to find
which channels depend on which (:class:`torchslim.graph.fxwalk.FxWalk`), never to run the model. The
example runs in eval mode without gradients on a copy of the example, and the model's buffers are put back
after (no BatchNorm statistic, counter or cache moves).

:func:`analysis_trace` is the structural analysis's one entry: plain torch.fx first; concrete tracing
when that fails and the model has no attention block that the module-level rules of
:mod:`torchslim.graph.blocks` know (those models keep the rules, which prune their heads and hidden
width).

Example:
    >>> class Checked(nn.Module):                      # a shape check torch.fx cannot trace
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.conv = nn.Conv2d(3, 4, 1)
    ...     def forward(self, x):
    ...         if x.shape[1] != 3:
    ...             raise ValueError("three channels")
    ...         return self.conv(x)
    >>> graph = analysis_trace(Checked(), fx.Tracer, torch.randn(1, 3, 2, 2))
    >>> [n.op for n in graph.nodes if n.op != "placeholder"]
    ['call_function', 'call_function', 'call_function', 'call_module', 'output']
"""

from __future__ import annotations

import inspect
import operator
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.fx.node import map_arg

from torchslim.data.batches import map_tensors
from torchslim.graph.attention import attention_specs
from torchslim.graph.trace import TraceError, defaults_not_given, fx_trace, input_names
from torchslim.measure.macs import eval_mode

__all__ = ["analysis_trace", "concrete_trace"]


#: operations whose output's shape depends on the data (which entries are non-zero, which values occur)
_DATA_SHAPED = {torch.nonzero, torch.argwhere, torch.masked_select, torch.unique, torch.unique_consecutive,
                torch.bincount, torch.repeat_interleave, "nonzero", "argwhere", "masked_select", "unique",
                "unique_consecutive", "bincount", "repeat_interleave"}
#: what a tensor says about itself without its numbers (a Python value read from these is a shape, not data)
_SHAPE_ATTRIBUTES = {"shape", "ndim", "dtype", "device", "is_cuda", "layout", "requires_grad"}
_SHAPE_METHODS = {"size", "dim", "ndimension", "numel", "nelement", "is_floating_point", "is_complex", "is_contiguous",
                  "element_size", "get_device"}


def _reads_data(kind: str, target: Any, args: tuple[Any, ...], inputs: tuple[Any, ...], value: Any) -> bool:
    """Does a node's value depend on its tensor inputs' numbers beyond what a tensor holds (a data-dependent shape,
    or a Python value computed from tensors other than their shape)?"""
    if target in _DATA_SHAPED or (target is torch.where and len(args) == 1):
        return True
    if target is operator.getitem and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in inputs[1:]):
        return True  # a boolean mask picks as many entries as are true
    if isinstance(value, torch.Tensor) or not any(isinstance(i, torch.Tensor) for i in inputs):
        return False
    if target is getattr and len(args) > 1 and args[1] in _SHAPE_ATTRIBUTES:
        return False
    if kind == "call_method" and target in _SHAPE_METHODS:
        return False
    return target is not len  # a tensor's length is its first dimension; any other Python value: its numbers


class _ValueProxy(fx.Proxy):
    """A proxy whose length and integer value are those its node takes on the example."""

    def __len__(self) -> int:
        self.tracer.shape_value(self, tensors=True)  # type: ignore[attr-defined]  # refused when data-dependent
        return len(self.tracer.value(self.node))  # type: ignore[attr-defined]

    def __index__(self) -> int:
        return operator.index(self.tracer.shape_value(self))  # type: ignore[attr-defined]


def _concrete(base: type[fx.Tracer]) -> type[fx.Tracer]:
    """``base`` (its leaf rules kept) recording each node's value on the example as it traces."""

    class Concrete(base):  # type: ignore[valid-type, misc]
        def __init__(self, inputs: dict[str, Any]) -> None:
            super().__init__()
            self.inputs = inputs
            self.values: dict[fx.Node, Any] = {}
            self.running = False  # inside a leaf module's real forward: calls are not recorded
            self.tainted: set[fx.Node] = set()  # nodes whose value came from a tensor's numbers

        def value(self, node: fx.Node) -> Any:
            return self.values[node] if node in self.values else self.fetch(str(node.target))

        def fetch(self, target: str) -> Any:
            """A module's attribute without torch.fx's patched ``__getattr__`` (which would record it)."""
            obj: Any = self.root
            for atom in target.split("."):
                d = obj.__dict__
                obj = next((d[k][atom] for k in ("_modules", "_parameters", "_buffers") if atom in d.get(k, {})), None) \
                    if atom not in d else d[atom]
            return obj

        def proxy(self, node: fx.Node) -> fx.Proxy:
            return _ValueProxy(node, self)

        def create_proxy(self, kind: str, target: Any, args: Any, kwargs: Any, *rest: Any, **kw: Any) -> fx.Proxy:
            proxy = super().create_proxy(kind, target, args, kwargs, *rest, **kw)
            node = proxy.node
            a, k = map_arg(node.args, self.value), map_arg(node.kwargs, self.value)
            if kind == "placeholder":  # an argument traced at its default: the default (its name may have a suffix)
                t = str(target)
                default = node.args[0] if node.args else None
                self.values[node] = {} if t.startswith("**") else () if t.startswith("*") else self.inputs.get(t, default)
            elif kind == "get_attr":
                self.values[node] = self.fetch(str(target))
            elif kind == "call_function":
                self.values[node] = target(*a, **k)
            elif kind == "call_method":
                self.values[node] = getattr(a[0], target)(*a[1:], **k)
            elif kind == "call_module":
                self.running = True
                try:
                    self.values[node] = fx._symbolic_trace._orig_module_call(self.fetch(target), *a, **k)  # type: ignore[attr-defined]
                finally:
                    self.running = False
            inputs = tuple(map_arg(tuple(node.all_input_nodes), self.value))
            if kind in ("call_function", "call_method") and _reads_data(kind, target, a, inputs, self.values.get(node)) \
                    or any(n in self.tainted for n in node.all_input_nodes):
                self.tainted.add(node)
            return proxy

        def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
            return attr_val if self.running else super().getattr(attr, attr_val, parameter_proxy_cache)

        def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
            return forward(*args, **kwargs) if self.running else super().call_module(m, forward, args, kwargs)

        def shape_value(self, obj: fx.Proxy, tensors: bool = False) -> Any:
            """The example's answer to a question on ``obj``, refused when it depends on the data (a tensor's
            numbers, a shape that depends on them): one example's branch would then be taken for every input.
            ``tensors``: a tensor is a fair question (its length)."""
            v = self.value(obj.node)
            if (isinstance(v, torch.Tensor) and not tensors) or obj.node in self.tainted:
                raise fx.proxy.TraceError(f"control flow on the data of {obj.node.name} (not only on shapes)")
            return v

        def to_bool(self, obj: fx.Proxy) -> bool:
            return bool(self.shape_value(obj))

        def iter(self, obj: fx.Proxy) -> Any:
            return iter([obj[i] for i in range(len(self.shape_value(obj, tensors=True)))])  # type: ignore[index]

        def keys(self, obj: fx.Proxy) -> Any:
            return self.value(obj.node).keys()

    return Concrete


def concrete_trace(model: nn.Module, tracer_cls: type[fx.Tracer], example: Any, *, what: str = "") -> fx.Graph:
    """The graph of ``model``'s undecorated ``forward`` on ``example``, each question on a traced value answered
    by the example (see the module docstring), or :class:`~torchslim.graph.trace.TraceError`."""
    cls = type(model)
    forward = inspect.unwrap(cls.forward)
    names = input_names(model, example)
    example = map_tensors(example, torch.Tensor.clone)  # an in-place op of the forward runs on the copy, not on the caller's tensors
    values = dict(example) if isinstance(example, dict) else \
        dict(zip(names, example if isinstance(example, (tuple, list)) else (example,)))
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    concrete = defaults_not_given(model, names)
    tracer: Any = _concrete(tracer_cls)({**concrete, **values})  # type: ignore[arg-type]
    tracer.traced_func_name = "_torchslim_traced_forward"
    model.__class__ = type(cls.__name__, (cls,), {"_torchslim_traced_forward": forward})  # the class, for this trace
    try:
        with torch.no_grad(), eval_mode(model):  # the example's run must not move BatchNorm statistics
            return tracer.trace(model, concrete_args=concrete or None)
    except Exception as exc:  # noqa: BLE001 - any failure of the model's code under tracing
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise TraceError(f"{what + ': ' if what else ''}concrete tracing of {cls.__name__} failed "
                         f"({type(exc).__name__}: {first})") from None
    finally:
        model.__class__ = cls
        with torch.no_grad():  # a buffer the forward wrote (a counter, a cache) as it was
            for name, b in model.named_buffers():
                if name in buffers and b.shape == buffers[name].shape:
                    b.copy_(buffers[name])


def analysis_trace(model: nn.Module, tracer_cls: type[fx.Tracer], example: Any, *, what: str = "") -> fx.Graph:
    """The graph the structural analysis walks: plain torch.fx (the arguments ``example`` does not give at their
    defaults), else, for a model with no attention block the module-level rules know, :func:`concrete_trace`.

    Raises:
        TraceError: plain torch.fx's error, when neither traces (the concrete attempt's error appended).
    """
    try:
        return fx_trace(model, tracer=tracer_cls(), what=what, inputs=input_names(model, example))
    except TraceError as plain:
        if attention_specs(model):
            raise
        try:
            return concrete_trace(model, tracer_cls, example, what=what)
        except TraceError as again:
            raise TraceError(f"{plain}; {again}") from None
