"""The one way torchslim traces a model with ``torch.fx``, and its one failure policy.

A trace that fails raises :class:`TraceError` naming the model (or sub-module),
the exception type and torch.fx's message. Callers turn it into a refusal
(:class:`~torchslim.errors.TransformRefusedError`) or into a reported skip or
fallback that says what was not traced and why; it is never swallowed.

:func:`trace_parts` traces the whole model or, when that fails, the largest
sub-modules that trace, and reports every part that did not.

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

from dataclasses import dataclass

import torch.fx as fx
from torch import nn

from torchslim.errors import TorchslimError


class TraceError(TorchslimError):
    """torch.fx could not trace a model; the message names the module and the cause."""

    def __init__(self, message: str, *, module: str = "") -> None:
        self.module = module
        super().__init__(message)


def fx_trace(model: nn.Module, *, tracer: fx.Tracer | None = None, what: str = "", name: str = "") -> fx.Graph:
    """The ``torch.fx`` graph of ``model`` (``tracer`` decides leaf modules), or :class:`TraceError`.

    Args:
        model: the module to trace.
        tracer: a ``torch.fx.Tracer`` (subclass) instance; the default traces every
            standard module as a leaf.
        what: the operation that needs the trace, named in the error.
        name: the qualified name of ``model`` inside a larger model, named in the error.
    """
    try:
        return (tracer or fx.Tracer()).trace(model)
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
