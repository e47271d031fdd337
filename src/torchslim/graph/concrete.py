"""Concrete tracing: torch.fx with the example input's values at hand, for the models plain torch.fx cannot trace.

torch.fx stops at Python that asks a question of a traced value (``if x.shape[1] != self.num_channels``,
``len(x)``, ``for part in x``) and at a root ``forward`` wrapped by a decorator that takes ``*args,
**kwargs`` (Hugging Face's ``can_return_tuple``). The tracer here runs each operation on the example
input as it records it, so a question on shapes gets the answer the example gives, and it traces the
undecorated ``forward``. A question on the data (``if h.sum() > 0``, anything after ``.item()``) is
still refused: its answer could differ for the next input, and the graph would then be wrong. The graph is right for the example's shapes and branches: it serves to find
which channels depend on which (:class:`torchslim.graph.fxwalk.FxWalk`), never to run the model. The
example runs in eval mode without gradients (no BatchNorm statistic moves).

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

from torchslim.graph.attention import attention_specs
from torchslim.graph.trace import TraceError, defaults_not_given, fx_trace, input_names
from torchslim.measure.macs import eval_mode

__all__ = ["analysis_trace", "concrete_trace"]


#: methods that read a tensor's numbers into Python: what follows from them depends on the data
_DATA_METHODS = {"item", "tolist", "numpy", "__bool__", "__int__", "__float__"}


class _ValueProxy(fx.Proxy):
    """A proxy whose length and integer value are those its node takes on the example."""

    def __len__(self) -> int:
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
            if kind == "placeholder":
                t = str(target)
                self.values[node] = {} if t.startswith("**") else () if t.startswith("*") else self.inputs.get(t)
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
            if (kind == "call_method" and target in _DATA_METHODS) or any(n in self.tainted for n in node.all_input_nodes):
                self.tainted.add(node)
            return proxy

        def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
            return attr_val if self.running else super().getattr(attr, attr_val, parameter_proxy_cache)

        def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
            return forward(*args, **kwargs) if self.running else super().call_module(m, forward, args, kwargs)

        def shape_value(self, obj: fx.Proxy) -> Any:
            """The example's answer to a question on ``obj``, refused when it depends on the data (a tensor's
            numbers): one example's branch would then be taken for every input."""
            v = self.value(obj.node)
            if isinstance(v, torch.Tensor) or obj.node in self.tainted:
                raise fx.proxy.TraceError(f"control flow on the data of {obj.node.name} (not only on shapes)")
            return v

        def to_bool(self, obj: fx.Proxy) -> bool:
            return bool(self.shape_value(obj))

        def iter(self, obj: fx.Proxy) -> Any:
            return iter([obj[i] for i in range(len(self.value(obj.node)))])  # type: ignore[index]

        def keys(self, obj: fx.Proxy) -> Any:
            return self.value(obj.node).keys()

    return Concrete


def concrete_trace(model: nn.Module, tracer_cls: type[fx.Tracer], example: Any, *, what: str = "") -> fx.Graph:
    """The graph of ``model``'s undecorated ``forward`` on ``example``, each question on a traced value answered
    by the example (see the module docstring), or :class:`~torchslim.graph.trace.TraceError`."""
    cls = type(model)
    forward = inspect.unwrap(cls.forward)
    names = input_names(model, example)
    values = dict(example) if isinstance(example, dict) else \
        dict(zip(names, example if isinstance(example, (tuple, list)) else (example,)))
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
