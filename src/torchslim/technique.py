"""The technique protocol and its driver: every verb is one :func:`run` of one technique object.

A technique is a small object with its config class and four steps:

- ``candidates(model)``: the ``(name, module)`` layers it could act on;
- ``select(model, cfg, filter_fn)``: the chosen layers and the skipped ones with why
  (default: the one targets grammar, :func:`torchslim.targets.select_layers`);
- ``plan(model, cfg, selection, inputs)``: reads the model (and calibration data),
  decides everything, may refuse with :class:`~torchslim.errors.TransformRefusedError`
  naming the layer; mutates nothing;
- ``apply(model, plan)``: the only mutation; returns the per-layer reports;
- ``report(model, cfg, plan, layers)``: the :class:`~torchslim.report.Report`.

:func:`run` parses the config, then runs selection, plan, apply and report inside
one :func:`~torchslim.graph.transaction.transaction`: an exception in any of them,
torchslim's or not, leaves the model exactly as it was. A technique whose plan works
only on copies (:attr:`Technique.plan_reads_only`: the language-model methods, which
calibrate copies of one decoder block at a time) is planned before the transaction
opens, so the transaction's model-sized snapshot is not held while the plan's own
memory is in use; apply and report still run inside it. Training-time techniques
also give ``callbacks(cfg)`` for the training loop.

No silent skip: after the report, :func:`run` lists every module still holding a
parameter the report does not account for (:func:`~torchslim.report.coverage.unlisted_layers`)
as skipped, with :meth:`Technique.skip_reason`'s why (by default the generic reason
naming the layer kind and the kinds in :attr:`Technique.handles`), so every parameter
tensor is transformed or listed in ``report.skipped``.

Example:
    A toy technique that scales every Linear weight (``docs/architecture.md``
    adds one the same way):

    >>> from torchslim.config import Config
    >>> class ScaleConfig(Config):
    ...     factor: float = 0.5
    ...     targets: dict | None = None
    >>> class Scale(Technique):
    ...     name, title, config = "scale", "scale", ScaleConfig
    ...     def candidates(self, model):
    ...         return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    ...     def plan(self, model, cfg, selection, inputs):
    ...         return Plan(selection.skipped, {"factor": cfg.factor}, [(n, m, cfg.factor) for n, m, _ in selection.chosen])
    ...     def apply(self, model, plan):
    ...         for name, module, factor in plan.work:
    ...             module.weight.data.mul_(factor)
    ...         return [LayerReport.of(name, module, "scaled") for name, module, _ in plan.work]
    >>> model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    >>> report = run(Scale(), model, {"factor": 2.0, "targets": {"0": {}}})
    >>> [l.name for l in report.layers], [s.name for s in report.skipped]
    (['0'], ['2'])
    >>> model = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
    >>> [(s.name, s.reason) for s in run(Scale(), model).skipped]     # no silent skip
    [('1', 'LayerNorm: normalisation parameters (weight, bias) are not transformed')]
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import nn

from torchslim.config import Config
from torchslim.errors import TransformRefusedError
from torchslim.graph.transaction import transaction
from torchslim.report import LayerReport, Report, SkippedLayer
from torchslim.report.coverage import skip_reason, unlisted_layers
from torchslim.targets import Match, select_layers
from torchslim.train.loop import Callback

C = TypeVar("C", bound=Config)
P = TypeVar("P", bound="Plan")
FilterFn = Callable[[nn.Module, str], bool]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Inputs:
    """What a technique may read besides the model and its config.

    Attributes:
        calibration: batches (tensors, ``(x, y)`` pairs or dicts of tensors) for
            techniques that need data; at most ``config.calibration.batches`` are used.
        example_input: one input batch (tracing, MAC counting).
        loss_fn: ``(outputs, labels) -> loss`` for criteria that need gradients.
    """

    calibration: Iterable[Any] | None = None
    example_input: Any = None
    loss_fn: LossFn | None = None


@dataclass
class Selection:
    """The layers a technique acts on (``(name, module, targets match or None)``) and those it skips."""

    chosen: list[tuple[str, nn.Module, Match[Any] | None]]
    skipped: list[SkippedLayer] = field(default_factory=list)


@dataclass
class Plan:
    """What :meth:`Technique.apply` will do: the skipped layers, report metadata, and the technique's own work list."""

    skipped: list[SkippedLayer] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    work: Any = None


class Technique(Generic[C, P]):
    """Base class of a technique; subclasses set ``name``, ``title``, ``config`` and define the steps."""

    name: ClassVar[str]
    title: ClassVar[str] = ""
    config: ClassVar[type[Config]]
    #: what the technique calls the layers it refuses with an empty selection ("no layer left to ...")
    verb: ClassVar[str] = "transform"
    #: the verb users call, named in skip reasons (default: ``name`` + ``"_"``)
    function: ClassVar[str] = ""
    #: the layer kinds the technique transforms, named in the reason of a layer of another kind it leaves alone
    handles: ClassVar[tuple[type[nn.Module], ...]] = ()
    #: ``plan`` reads the model and changes nothing, not even temporarily outside a ``finally`` (it works on
    #: copies): :func:`run` then plans before taking its snapshot (one copy of the model) for ``apply``
    plan_reads_only: ClassVar[bool] = False

    def candidates(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """Every ``(name, module)`` the technique could act on, in registration order."""
        raise NotImplementedError

    def select(self, model: nn.Module, cfg: C, filter_fn: FilterFn | None) -> Selection:
        """The one targets grammar over :meth:`candidates` (``cfg.targets``, ``cfg.keep_first_last``)."""
        layers = self.candidates(model)
        if not layers:
            raise TransformRefusedError(f"{self.name}: the model has no layer to {self.verb}")
        chosen, skipped = select_layers(
            layers,
            getattr(cfg, "targets", None),
            filter_fn=filter_fn,
            keep_first_last=bool(getattr(cfg, "keep_first_last", False)),
            kept_note=f"name it in targets to {self.verb} it",
        )
        return Selection(chosen, [SkippedLayer(n, r) for n, r in skipped])

    def plan(self, model: nn.Module, cfg: C, selection: Selection, inputs: Inputs) -> P:
        """Decide everything (may refuse, naming the layer); must not change the model."""
        raise NotImplementedError

    def apply(self, model: nn.Module, plan: P) -> list[LayerReport]:
        """Carry out ``plan`` on ``model`` (the only mutation); returns one report per layer changed."""
        raise NotImplementedError

    def report(self, model: nn.Module, cfg: C, plan: P, layers: list[LayerReport]) -> Report:
        """The :class:`Report` of a run (default: the layers, the plan's skipped layers and meta)."""
        return Report(title=self.title or self.name, technique=self.name, layers=layers, skipped=plan.skipped, meta=plan.meta)

    def skip_reason(self, name: str, module: nn.Module, params: list[str]) -> str | None:
        """Why the run left ``module``'s own parameters ``params`` as they were (the report lists nothing for them).

        Default: :func:`~torchslim.report.coverage.skip_reason`, naming the layer kind and
        :attr:`handles`. A technique overrides it for a more specific reason, or returns
        ``None`` for parameters that belong to its own transform (a quantizer's step size).
        """
        return skip_reason(name, module, params, self.function or f"{self.name}_", past_tense(self.verb), self.handles)

    def callbacks(self, cfg: C) -> list[Callback]:
        """Training-loop callbacks that keep the technique's state while training (default: none)."""
        return []


def past_tense(verb: str) -> str:
    """``"prune"`` -> ``"pruned"``, ``"fold"`` -> ``"folded"`` (the verbs techniques use).

    Example:
        >>> past_tense("prune"), past_tense("fold"), past_tense("factorise")
        ('pruned', 'folded', 'factorised')
    """
    return verb + ("d" if verb.endswith("e") else "ed")


def account_for_parameters(tech: Technique[Any, Any], model: nn.Module, report: Report) -> Report:
    """``report`` with a skipped entry, with ``tech``'s reason, for every module holding a parameter it leaves out.

    Entries already in the report (a selection's reasons) are kept as they are; parameters
    a transform removed are gone from ``model`` and need none.
    """
    report.skipped = [*report.skipped, *unlisted_layers(model, report, tech.skip_reason)]
    return report


def refuse_if_empty(work: list[Any], skipped: list[SkippedLayer], what: str) -> None:
    """Raise :class:`TransformRefusedError` listing every skipped layer and why when ``work`` is empty."""
    if not work:
        raise TransformRefusedError(f"no layer left to {what}: " + "; ".join(f"{s.name}: {s.reason}" for s in skipped))


def run(
    tech: Technique[Any, Any],
    model: nn.Module,
    config: Config | Mapping[str, Any] | None = None,
    *,
    filter_fn: FilterFn | None = None,
    inputs: Inputs | None = None,
) -> Report:
    """Run ``tech`` on ``model`` in place: parse, select, plan, apply, report, all or nothing.

    Every parameter of ``model`` is then transformed or listed in ``report.skipped``
    (:func:`account_for_parameters`).

    Raises:
        ConfigError: the config is invalid (before anything else happens).
        TransformRefusedError: the technique refused, naming the layer; the model is unchanged.
        Exception: anything raised on the way; the model is unchanged.
    """
    cfg = tech.config.parse(config)
    with contextlib.ExitStack() as stack:
        if not tech.plan_reads_only:
            stack.enter_context(transaction(model))
        selection = tech.select(model, cfg, filter_fn)
        plan = tech.plan(model, cfg, selection, inputs or Inputs())
        if tech.plan_reads_only:  # the snapshot once the plan's memory is free again
            stack.enter_context(transaction(model))
        layers = tech.apply(model, plan)
        return account_for_parameters(tech, model, tech.report(model, cfg, plan, layers))


#: keyword arguments the verbs took before they shared one signature: old name -> new name
LEGACY_KEYWORDS = {"loader": "calibration", "data": "calibration"}


def legacy_inputs(verb: str, inputs: Inputs, deprecated: dict[str, Any]) -> Inputs:
    """Fold a verb's deprecated keyword arguments (``loader=``) into ``inputs``, warning with the new call.

    Raises:
        TypeError: an unknown keyword, or an old keyword given together with its new name.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     inputs = legacy_inputs("prune_", Inputs(), {"loader": [1]})
        >>> inputs.calibration, str(caught[0].message)
        ([1], 'prune_(..., loader=...) is deprecated; call prune_(..., calibration=...)')
    """
    if not deprecated:
        return inputs
    updates: dict[str, Any] = {}
    for old, value in deprecated.items():
        new = LEGACY_KEYWORDS.get(old)
        if new is None:
            raise TypeError(f"{verb}() got an unexpected keyword argument {old!r}")
        if getattr(inputs, new) is not None or new in updates:
            raise TypeError(f"{verb}() got both {old}= (deprecated) and {new}=; pass only {new}=")
        warnings.warn(f"{verb}(..., {old}=...) is deprecated; call {verb}(..., {new}=...)", DeprecationWarning, stacklevel=3)
        updates[new] = value
    return Inputs(**{**inputs.__dict__, **updates})
