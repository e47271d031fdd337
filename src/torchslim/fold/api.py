"""The ``fold_`` verb: find every foldable pattern with torch.fx and fold it exactly.

Patterns, found on the traced graph (or, when the whole model does not trace, on
every largest sub-module that does):

* **Conv/Linear → BatchNorm** (eval mode): the BatchNorm is absorbed into the
  layer (:func:`~torchslim.fold.batchnorm.fold_bn`) and replaced by ``nn.Identity``.
* **Linear → Linear** and **Conv → 1×1 Conv** with nothing between (after the
  BatchNorm folds, so Conv → BN → 1×1 Conv merges too): one layer
  (:func:`~torchslim.fold.linear.merge_linear`); by default only when the merged
  layer has fewer parameters than the pair.

What cannot fold is reported with the reason: a non-linearity between, a
producer whose output is also used elsewhere, a BatchNorm in training mode or
without running statistics, a module called more than once, a BatchNorm whose
input is not a conv/linear output, a part of the model torch.fx cannot trace.

``fold_`` runs :data:`FOLD` through :func:`torchslim.technique.run`: its
selection traces the model (:func:`~torchslim.graph.trace.trace_parts`) and
applies ``targets``/``filter_fn`` to the absorbed layers; its plan is the one
fold planner (:mod:`torchslim.fold.planner`, which quantization's BatchNorm
folding shares); its apply swaps the planned modules in.

Example:
    >>> model = ts.create_model("mobilenet_v2", width_mult=0.5, num_classes=10)
    >>> report = ts.fold_(model.eval(), {})
    >>> [(l.name, l.details["absorbed"]) for l in report.layers][:2]
    [('features.0.0', 'features.0.1'), ('features.1.conv.0.0', 'features.1.conv.0.1')]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from torch import nn

from torchslim.config import Config
from torchslim.fold.bnmath import BATCHNORMS, FOLDABLE
from torchslim.fold.planner import NONLINEAR_FUNCTIONS, NONLINEAR_MODULES, Fold, candidate_layers, plan_parts
from torchslim.graph.surgery import replace_module
from torchslim.graph.trace import TracedPart, TraceError, trace_parts
from torchslim.report import LayerReport, Report, SkippedLayer
from torchslim.report.coverage import left_as_was
from torchslim.targets import select_layers
from torchslim.technique import Inputs, Plan, Selection, Technique, legacy_inputs, run

FilterFn = Callable[[nn.Module, str], bool]
#: how the report names the whole model among the traced parts
ROOT = "<root>"

__all__ = [
    "FOLD",
    "NONLINEAR_FUNCTIONS",
    "NONLINEAR_MODULES",
    "ROOT",
    "Fold",
    "FoldConfig",
    "FoldPlan",
    "FoldSelection",
    "FoldTechnique",
    "fold_",
    "plan_folds",
]


class FoldConfig(Config):
    """What ``fold_`` folds.

    Attributes:
        batchnorm: fold eval-mode BatchNorms into the preceding Conv/Linear.
        linear: merge adjacent linear maps: ``never``, ``if_smaller`` (only when the
            merged layer has fewer parameters than the pair) or ``always``.
        targets: optional ordered map (exact name or ``re:`` pattern → ``{}`` or
            ``null``) over the *absorbed* layers (the BatchNorm, or the first layer of
            a merged pair); ``null`` keeps that pattern unfolded. Unmatched layers
            are skipped when ``targets`` is given.
    """

    batchnorm: bool = True
    linear: Literal["never", "if_smaller", "always"] = "if_smaller"
    targets: dict[str, dict[str, Any] | None] | None = None


@dataclass
class FoldSelection(Selection):
    """The selection of ``fold_`` (candidates: the BatchNorms and Conv/Linear layers of the traced graphs).

    ``chosen``/``skipped`` say which absorbed layers ``targets`` and ``filter_fn`` allow;
    a skipped one is reported only where it would otherwise fold. ``parts`` are the
    graphs traced, ``failures`` the parts that did not trace (each reported).
    """

    parts: list[TracedPart] = field(default_factory=list)
    failures: list[TraceError] = field(default_factory=list)


@dataclass
class FoldPlan(Plan):
    """Everything ``fold_`` will do: the folds in order and the module swaps they need."""

    folds: list[Fold] = field(default_factory=list)
    replacements: dict[str, nn.Module] = field(default_factory=dict)
    traced: list[str] = field(default_factory=list)

    @property
    def layers(self) -> list[LayerReport]:
        """One ``folded`` report per fold (``details["absorbed"]`` names what went into it)."""
        return [f.report() for f in self.folds]

    @property
    def tracer(self) -> list[str]:
        """The traced parts (the name :func:`plan_folds` results had before ``traced``)."""
        return self.traced


class FoldTechnique(Technique[FoldConfig, FoldPlan]):
    """``fold_`` as a technique: select over the traced layers, plan every fold, swap the modules in."""

    name: ClassVar[str] = "fold"
    title: ClassVar[str] = "fold"
    config: ClassVar[type[Config]] = FoldConfig
    verb: ClassVar[str] = "fold"
    handles: ClassVar[tuple[type[nn.Module], ...]] = (*BATCHNORMS, *FOLDABLE)

    def candidates(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """The BatchNorms and Conv/Linear layers called in the parts of ``model`` that trace."""
        return candidate_layers(trace_parts(model)[0])

    def select(self, model: nn.Module, cfg: FoldConfig, filter_fn: FilterFn | None) -> FoldSelection:
        """Trace once (:func:`~torchslim.graph.trace.trace_parts`), then the one targets grammar over the layers."""
        parts, failures = trace_parts(model)
        chosen, skipped = select_layers(candidate_layers(parts), cfg.targets, filter_fn=filter_fn)
        return FoldSelection(chosen, [SkippedLayer(n, r) for n, r in skipped], parts, failures)

    def plan(self, model: nn.Module, cfg: FoldConfig, selection: Selection, inputs: Inputs) -> FoldPlan:
        """Plan on the traced parts; every part that did not trace is reported as skipped, with why."""
        if not isinstance(selection, FoldSelection):  # a selection made elsewhere: trace here
            selection = FoldSelection(selection.chosen, selection.skipped, *trace_parts(model))
        parts, failures = selection.parts, selection.failures
        excluded = {s.name: s.reason for s in selection.skipped}
        planned = plan_parts(model, parts, batchnorm=cfg.batchnorm, linear=cfg.linear, excluded=excluded)
        traced = [p.prefix or ROOT for p in parts]
        meta: dict[str, Any] = {"traced": traced, "folded": len(planned.folds)}
        if failures:
            meta["not_traced"] = [f.module or ROOT for f in failures]
        skipped = [SkippedLayer(f.module or ROOT, f"not searched for folds: {f}") for f in failures]
        return FoldPlan(
            skipped=skipped + planned.skipped, meta=meta, folds=planned.folds, replacements=planned.replacements, traced=traced
        )

    def apply(self, model: nn.Module, plan: FoldPlan) -> list[LayerReport]:
        """Swap in the folded and merged layers and the ``nn.Identity`` of what they absorbed."""
        for name, new in plan.replacements.items():
            replace_module(model, name, new)
        return plan.layers

    def skip_reason(self, name: str, module: nn.Module, params: list[str]) -> str | None:
        """A BatchNorm, Conv or Linear no fold pattern reached: nothing to fold with; otherwise the generic reason.

        Example:
            >>> FOLD.skip_reason("fc", nn.Linear(2, 2), ["weight", "bias"])
            'Linear: nothing to fold with (no BatchNorm after it, no layer to merge it with); weight, bias left as they were'
        """
        if not name or not isinstance(module, self.handles):
            return super().skip_reason(name, module, params)
        left = left_as_was(params)
        what = "no Conv/Linear before it" if isinstance(module, BATCHNORMS) else "no BatchNorm after it, no layer to merge it with"
        return f"{type(module).__name__}: nothing to fold with ({what}); {left}"


#: the ``fold_`` technique
FOLD = FoldTechnique()


def plan_folds(model: nn.Module, config: FoldConfig | dict[str, Any] | None = None, *, filter_fn: FilterFn | None = None) -> FoldPlan:
    """Everything ``fold_`` would do, computed without touching ``model``.

    Example:
        >>> model = ts.create_model("mobilenet_v2", width_mult=0.5, num_classes=10)
        >>> plan = plan_folds(model.eval(), {})
        >>> sorted(plan.replacements)[:2]                # the folded conv, the BatchNorm's Identity
        ['features.0.0', 'features.0.1']
        >>> type(model.features[0][1]).__name__          # the model itself is untouched
        'BatchNorm2d'
    """
    cfg = FoldConfig.parse(config)
    return FOLD.plan(model, cfg, FOLD.select(model, cfg, filter_fn), Inputs())


def fold_(
    model: nn.Module,
    config: FoldConfig | dict[str, Any] | None = None,
    *,
    filter_fn: FilterFn | None = None,
    calibration: Any = None,
    example_input: Any = None,
    **deprecated: Any,
) -> Report:
    """Fold BatchNorms and merge adjacent linear maps in ``model``, in place, exactly.

    Everything is planned first (on a torch.fx trace), then applied; folded
    BatchNorms and absorbed first layers become ``nn.Identity``. Put the model in
    eval mode first: a BatchNorm in training mode is reported and left alone.

    Args:
        model: the model (modified in place; left bit-identical when anything fails).
        config: a :class:`FoldConfig` or a mapping validated into one (``None``: defaults).
        filter_fn: optional ``(module, name) -> bool`` over the absorbed layers.
        calibration: unused (folding needs no data); accepted for the common signature.
        example_input: unused (the model is traced symbolically).

    Returns:
        A :class:`Report`: one ``folded`` layer per fold (``details["absorbed"]`` names what
        went into it), every pattern that could not fold with the reason, and every part
        of the model torch.fx could not trace (``meta["not_traced"]``, and a skipped entry
        with torch.fx's reason); ``meta["traced"]`` lists the parts searched.

    Example:
        >>> model = ts.create_model("mobilenet_v2", pretrained=True).eval()
        >>> report = ts.fold_(model)
        >>> len(report.layers)
        52
    """
    inputs = legacy_inputs("fold_", Inputs(calibration, example_input), deprecated)
    return run(FOLD, model, config, filter_fn=filter_fn, inputs=inputs)
