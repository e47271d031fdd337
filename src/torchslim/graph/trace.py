"""The one way torchslim traces a model with ``torch.fx``, and its one failure policy.

A trace that fails raises :class:`TraceError` naming the model (or sub-module),
the exception type and torch.fx's message. Callers turn it into a refusal
(:class:`~torchslim.errors.TransformRefusedError`) or into a reported skip or
fallback that says what was not traced and why; it is never swallowed.

:func:`trace_parts` traces the whole model or, when that fails, the largest
sub-modules that trace, and reports every part that did not.

Given the names of the arguments a model is called with (:func:`input_names` of an
example input), every other argument of its ``forward`` that has a default is traced
at that default (``concrete_args``): ``forward(x, mask=None)`` called with ``x`` alone
is traced without the mask branch (torch.fx would otherwise trace ``mask is None`` as
false and the graph would read a mask that is never given).

Example:
    >>> graph = fx_trace(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    >>> [n.op for n in graph.nodes]
    ['placeholder', 'call_module', 'call_module', 'output']
    >>> class Branchy(nn.Module):
    ...     def forward(self, x):
    ...         return x if x.sum() > 0 else -x      # data-dependent control flow
    >>> fx_trace(Branchy(), what="folding")
    Traceback (most recent call last):
        ...
    torchslim.graph.trace.TraceError: folding: torch.fx cannot trace Branchy (TraceError: symbolically traced variables cannot be used as inputs to control flow)
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch.fx as fx
from torch import nn

from torchslim.errors import TorchslimError


class TraceError(TorchslimError):
    """torch.fx could not trace a model; the message names the module and the cause."""

    def __init__(self, message: str, *, module: str = "") -> None:
        self.module = module
        super().__init__(message)


def input_names(model: nn.Module, example: Any) -> list[str]:
    """The names of ``model``'s forward arguments ``example`` gives: a dict's keys, the first positional
    arguments of a tuple, the first one of a tensor.

    Example:
        >>> class M(nn.Module):
        ...     def forward(self, x, mask=None, scale=1.0):
        ...         return x
        >>> input_names(M(), torch.zeros(1)), input_names(M(), (torch.zeros(1), torch.zeros(1))), input_names(M(), {"x": 0})
        (['x'], ['x', 'mask'], ['x'])
    """
    if isinstance(example, Mapping):
        return [str(k) for k in example]
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    try:
        names = [n for n, p in inspect.signature(model.forward).parameters.items() if p.kind in kinds]
    except (TypeError, ValueError):
        return []
    return names[: len(example) if isinstance(example, (tuple, list)) else 1]


def defaults_not_given(model: nn.Module, inputs: Sequence[str]) -> dict[str, Any]:
    """``{name: default}`` of ``model``'s forward arguments with a default that ``inputs`` does not name.

    Example:
        >>> class M(nn.Module):
        ...     def forward(self, x, mask=None, *rest, scale=1.0, **kw):
        ...         return x
        >>> defaults_not_given(M(), ["x"])
        {'mask': None, 'scale': 1.0}
    """
    try:
        params = inspect.signature(model.forward).parameters.items()
    except (TypeError, ValueError):
        return {}
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return {n: p.default for n, p in params
            if n not in inputs and p.kind not in variadic and p.default is not inspect.Parameter.empty}


def fx_trace(model: nn.Module, *, tracer: fx.Tracer | None = None, what: str = "", name: str = "",
             inputs: Sequence[str] | None = None) -> fx.Graph:
    """The ``torch.fx`` graph of ``model`` (``tracer`` decides leaf modules), or :class:`TraceError`.

    Args:
        model: the module to trace.
        tracer: a ``torch.fx.Tracer`` (subclass) instance; the default traces every
            standard module as a leaf.
        what: the operation that needs the trace, named in the error.
        name: the qualified name of ``model`` inside a larger model, named in the error.
        inputs: the arguments the model is called with (:func:`input_names`); the others
            are traced at their defaults. ``None``: every argument is traced as an input.
    """
    concrete = defaults_not_given(model, inputs) if inputs is not None else None
    try:
        return (tracer or fx.Tracer()).trace(model, concrete_args=concrete or None)
    except Exception as exc:  # noqa: BLE001 - torch.fx raises many types on untraceable code
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        label = f"{name} ({type(model).__name__})" if name else type(model).__name__
        prefix = f"{what}: " if what else ""
        cause = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        raise TraceError(f"{prefix}torch.fx cannot trace {label} ({cause})", module=name) from None


@dataclass
class TracedPart:
    """A sub-module that traced: its qualified name (``""`` = the whole model) and its graph module."""

    prefix: str
    gm: fx.GraphModule


def _qual(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def trace_parts(
    model: nn.Module, *, what: str = "", prefix: str = ""
) -> tuple[list[TracedPart], list[TraceError]]:
    """Trace ``model``, or else the largest sub-modules of it that trace.

    Returns ``(parts, failures)``: the traced parts, and the :class:`TraceError`
    of every module that did not trace and had no child to descend into (leaf
    modules are not traced on their own: a model whose root fails and has only
    leaves yields no part and one failure).

    Example:
        >>> class Branchy(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.body = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
        ...     def forward(self, x):
        ...         return self.body(x) if x.sum() > 0 else x
        >>> parts, failures = trace_parts(Branchy())
        >>> [p.prefix for p in parts], [f.module for f in failures]
        (['body'], [''])
    """
    try:
        graph = fx_trace(model, what=what, name=prefix)
    except TraceError as exc:
        parts: list[TracedPart] = []
        failures = [exc]
        for child_name, child in model.named_children():
            if any(True for _ in child.children()):
                p, f = trace_parts(child, what=what, prefix=_qual(prefix, child_name))
                parts += p
                failures += f
        return parts, failures
    return [TracedPart(prefix, fx.GraphModule(model, graph))], []
