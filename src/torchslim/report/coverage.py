"""No silent skip: every parameter tensor of a model is transformed by a verb or listed as skipped with the reason.

A parameter is *accounted for* by a report when the report names it, the module
holding it, or a module above it, as one of its layers or skipped entries (a
pruned Linear's bias belongs to its layer; a name ``"gru.weight_ih_l0"`` accounts
for that one parameter; ``""``, the model itself, accounts only for the
parameters the model holds directly). Parameters a transform removed (a folded
BatchNorm, a dropped block, a factorised layer's old weight) are no longer in the
model: they belong to the layer that absorbed them or to the removal itself.

:func:`unaccounted_parameters` lists what a report leaves out (``[]``: nothing);
:func:`unlisted_layers` gives a :class:`~torchslim.report.SkippedLayer`, with the
reason, for every module holding such parameters, and :func:`skip_reason` is the
generic reason (:func:`torchslim.technique.run` appends these to every verb's report).

Example:
    >>> from torchslim.report import LayerReport
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    >>> report = Report("demo", layers=[LayerReport.of("0", model[0], "pruned")])
    >>> unaccounted_parameters(model, report)
    ['1.weight', '1.bias', '2.weight', '2.bias']
    >>> reason = lambda name, module, params: skip_reason(name, module, params, "prune_", "pruned", (nn.Linear,))
    >>> [(s.name, s.reason) for s in unlisted_layers(model, report, reason)]   # doctest: +NORMALIZE_WHITESPACE
    [('1', 'LayerNorm: normalisation parameters (weight, bias) are not pruned'),
     ('2', 'Linear: not pruned by prune_ (not chosen); weight, bias left as they were')]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from torch import nn

from torchslim.report.model import Report, SkippedLayer

__all__ = ["NORMALIZATIONS", "covers", "left_as_was", "skip_reason", "unaccounted_parameters", "unlisted_layers"]

#: normalisation layers: their scales and shifts are not weights any verb compresses
NORMALIZATIONS: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.batchnorm._NormBase,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)

#: ``(name, module, parameter names held by it) -> reason``, or ``None`` when they belong to the transform itself
ReasonFn = Callable[[str, nn.Module, list[str]], str | None]
#: modules whose parameters are accounted for by construction (a quantizer's learned step size)
ExemptFn = Callable[[nn.Module], bool]


def covers(name: str, names: Iterable[str]) -> bool:
    """Whether the module or parameter ``name`` is one of ``names`` or inside one of them.

    ``""`` (the model itself) covers only itself, not every module below it.

    Example:
        >>> covers("fc.bias", ["fc"]), covers("fc2.weight", ["fc"]), covers("fc.weight", [""]), covers("", [""])
        (True, False, False, True)
    """
    return any(name == n or (n != "" and name.startswith(n + ".")) for n in names)


def _accounted_names(report: Report) -> list[str]:
    return [layer.name for layer in report.layers] + [s.name for s in report.skipped]


def _unaccounted(model: nn.Module, report: Report, exempt: ExemptFn | None) -> dict[str, list[str]]:
    """``{owner module name: [its own parameter names]}`` of every parameter ``report`` leaves out, in model order."""
    names = _accounted_names(report)
    modules = dict(model.named_modules())
    out: dict[str, list[str]] = {}
    for pname, _ in model.named_parameters():
        owner, _, own = pname.rpartition(".")
        if covers(pname, names) or covers(owner, names):
            continue
        if exempt is not None and exempt(modules[owner]):
            continue
        out.setdefault(owner, []).append(own)
    return out


def unaccounted_parameters(model: nn.Module, report: Report, *, exempt: ExemptFn | None = None) -> list[str]:
    """The parameters of ``model`` that ``report`` neither transformed nor lists as skipped (``[]``: none).

    Args:
        model: the model after the verb.
        report: the verb's report.
        exempt: modules whose parameters need no entry (``quant``: a quantizer's learned step size).

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.PReLU())
        >>> unaccounted_parameters(model, Report("t", skipped=[SkippedLayer("0", "x")]))
        ['1.weight']
    """
    return [f"{owner}.{p}" if owner else p for owner, params in _unaccounted(model, report, exempt).items() for p in params]


def unlisted_layers(model: nn.Module, report: Report, reason: ReasonFn, *, exempt: ExemptFn | None = None) -> list[SkippedLayer]:
    """A skipped entry for every module holding parameters ``report`` does not account for, with ``reason``'s why.

    ``reason(name, module, params)`` gets the module's own unaccounted parameter names;
    when it returns ``None`` the parameters belong to the transform and get no entry.

    Example:
        >>> model = nn.Sequential(nn.Embedding(5, 2))
        >>> [(s.name, s.reason) for s in unlisted_layers(model, Report("t"), lambda n, m, p: f"{type(m).__name__}: {p}")]
        [('0', "Embedding: ['weight']")]
    """
    out = []
    modules = dict(model.named_modules())
    for owner, params in _unaccounted(model, report, exempt).items():
        why = reason(owner, modules[owner], params)
        if why is not None:
            out.append(SkippedLayer(owner, why))
    return out



def left_as_was(params: Sequence[str]) -> str:
    """``"weight left as it was"`` / ``"weight, bias left as they were"``: the tail of a skip reason.

    Example:
        >>> left_as_was(["weight", "bias"])
        'weight, bias left as they were'
    """
    return f"{', '.join(params)} left as {'they were' if len(params) > 1 else 'it was'}"

def skip_reason(
    name: str, module: nn.Module, params: list[str], verb: str, done: str, handles: tuple[type[nn.Module], ...] = ()
) -> str:
    """The generic reason ``verb`` left ``module``'s parameters ``params`` as they were.

    Args:
        name: the module's qualified name (``""``: the model itself).
        module: the module.
        params: its own parameters left alone.
        verb: the verb, as users call it (``"prune_"``).
        done: what the verb does, in the past tense (``"pruned"``).
        handles: the layer kinds the verb transforms (named when ``module`` is none of them).

    Example:
        >>> skip_reason("emb", nn.Embedding(4, 2), ["weight"], "prune_", "pruned", (nn.Linear, nn.Conv2d))
        'Embedding: prune_ handles Linear, Conv2d (not this layer kind); weight left as it was'
        >>> skip_reason("emb", nn.Embedding(4, 2), ["weight"], "fold_", "folded")
        'Embedding: not folded by fold_; weight left as it was'
        >>> skip_reason("", nn.Module(), ["scale"], "prune_", "pruned")
        'Module (the model itself) holds scale directly: prune_ transforms layers, not parameters held by the model'
    """
    kind = type(module).__name__
    held = ", ".join(params)
    left = left_as_was(params)
    if name == "":
        return f"{kind} (the model itself) holds {held} directly: {verb} transforms layers, not parameters held by the model"
    if isinstance(module, NORMALIZATIONS):
        return f"{kind}: normalisation parameters ({held}) are not {done}"
    if not handles:
        return f"{kind}: not {done} by {verb}; {left}"
    if not isinstance(module, handles):
        return f"{kind}: {verb} handles {', '.join(t.__name__ for t in handles)} (not this layer kind); {left}"
    return f"{kind}: not {done} by {verb} (not chosen); {left}"
