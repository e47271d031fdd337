"""No silent skip: every parameter tensor of a model is quantized or listed as skipped with the reason.

:func:`float_modules` gives the modules that hold parameters but were not
quantized (normalisation layers, layers without a quantized version, parameters
held by a model directly) as :class:`~torchslim.report.SkippedLayer` entries
with the reason; :func:`~torchslim.quant.quantize_` appends them to its report.
:func:`unaccounted_parameters` checks a report against a model: a parameter is
accounted for when the module holding it, or a module above it, is a layer of
the report or one of its skipped entries (a quantized layer's bias and a
quantizer's learned step size belong to their layer).

Example:
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    >>> report = ts.quantize_(model, {"mode": "weight_only"})
    >>> [(s.name, s.reason.split(":")[0]) for s in report.skipped]
    [('1', 'LayerNorm')]
    >>> unaccounted_parameters(model, report)
    []
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from torchslim.quant.fake import FakeQuantize
from torchslim.quant.layers import OTHER_QUANTIZABLE, QUANT_CLASS, is_quantized, unquantizable_reason
from torchslim.report import Report, SkippedLayer
from torchslim.report import coverage as generic
from torchslim.report.coverage import covers as _covered

__all__ = ["float_modules", "unaccounted_parameters"]

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.modules.batchnorm._NormBase)


def _reason(module: nn.Module, params: list[str]) -> str:
    kind = type(module).__name__
    held = ", ".join(params)
    if isinstance(module, _NORMS):
        return f"{kind}: normalisation parameters ({held}) kept in float (ONNX Runtime runs it in float)"
    special = unquantizable_reason(module)
    if special is not None:
        return special
    if type(module) in QUANT_CLASS or type(module) in OTHER_QUANTIZABLE:
        return f"{kind}: not quantized (not chosen)"
    return f"{kind}: no quantized version of this layer; parameters ({held}) kept in float"


def float_modules(model: nn.Module, accounted: Iterable[str]) -> list[SkippedLayer]:
    """A skipped entry, with the reason, for every module of ``model`` that holds parameters itself and is
    neither quantized nor inside a quantized module nor covered by ``accounted`` (names already reported).

    Example:
        >>> [(s.name, s.reason) for s in float_modules(nn.Sequential(nn.Linear(2, 2), nn.PReLU()), ["0"])]
        [('1', 'PReLU: no quantized version of this layer; parameters (weight) kept in float')]
    """
    done = set(accounted)
    quantized = [n for n, m in model.named_modules() if is_quantized(m) or isinstance(m, FakeQuantize)]
    out = []
    for name, module in model.named_modules():
        params = [p for p, v in module.named_parameters(recurse=False) if v is not None]
        if not params or _covered(name, done) or _covered(name, quantized):
            continue
        out.append(SkippedLayer(name, _reason(module, params)))
    return out


def unaccounted_parameters(model: nn.Module, report: Report) -> list[str]:
    """The parameters of ``model`` that ``report`` neither transformed nor lists as skipped (``[]``: none).

    A parameter is accounted for when the module holding it, or a module above it, is
    one of the report's layers or skipped entries; a quantizer's own parameters (learned step
    sizes) are accounted for by the quantization they belong to
    (:func:`torchslim.report.coverage.unaccounted_parameters` with quantizers exempt).

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.PReLU())
        >>> unaccounted_parameters(model, Report(title="t", technique="t", layers=[], skipped=[SkippedLayer("0", "x")]))
        ['1.weight']
    """
    return generic.unaccounted_parameters(model, report, exempt=lambda module: isinstance(module, FakeQuantize))
