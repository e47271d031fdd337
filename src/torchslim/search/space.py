"""The option kinds a sensitivity analysis (and later the search) applies: one setting to one unit.

A *unit* is what one option changes: a layer (unstructured pruning, weight bits,
low-rank) or a group of coupled channels (structured pruning: the layers that
produce the channels and every layer that reads them, found by
:func:`torchslim.graph.deps.dependency_groups`, named after its first producer).
An :class:`Analysis` knows its units on a model and applies one setting to one unit
of a copy through the technique's own verb (``prune_``, ``quantize_``,
``factorize_``), so that what is measured is exactly what a recipe stage with the
same setting would do; a layer the verb leaves alone is a refusal with the verb's
reason.

The four analyses (:data:`ANALYSES`) and their settings:

- ``unstructured``: fraction of the layer's weights set to zero (magnitude, masks);
- ``structured``: fraction of the group's channels removed (L2 norm, surgery);
- ``bits``: weight bits (weight-only, symmetric, per output channel by default);
- ``lowrank``: fraction of the layer's parameters kept (SVD, Tucker-2 for k×k convs).

Example:
    >>> model = ts.create_model("lenet5")
    >>> x = torch.randn(1, 1, 28, 28)
    >>> [(u.name, u.layers, u.refused) for u in ANALYSES.get("structured").units(model, x, ["conv1", "fc2"])]
    [('conv1', ('conv1', 'conv2'), None), ('fc2', ('fc2',), 'frozen: reaches the model output')]
    >>> [u.name for u in ANALYSES.get("bits").units(model, x, ["conv1", "fc2"])]
    ['conv1', 'fc2']
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from torch import nn

from torchslim.errors import TorchslimError
from torchslim.graph.deps import dependency_groups
from torchslim.graph.surgery import get_module
from torchslim.lowrank import factorize_
from torchslim.lowrank.api import FACTORIZE
from torchslim.prune import PRUNE, PRUNE_STRUCTURED, prune_
from torchslim.quant import QUANTIZE, quantize_
from torchslim.registry import Registry
from torchslim.report import LayerReport, Report
from torchslim.technique import Technique

#: the analyses, in the order they run
AnalysisName = Literal["unstructured", "structured", "bits", "lowrank"]
ANALYSIS_NAMES: tuple[str, ...] = ("unstructured", "structured", "bits", "lowrank")

__all__ = ["ANALYSES", "ANALYSIS_NAMES", "Analysis", "AnalysisName", "Applied", "Unit", "weight_bytes"]


@dataclass(frozen=True)
class Unit:
    """What one option changes.

    Attributes:
        name: the layer, or a group's first producer layer (the name ``targets`` keys use).
        layers: every layer the option changes (a group's producers and consumers).
        kind: the layer's class name, or ``channel group``.
        refused: why no setting applies to it (every option is then a refusal with this reason).
    """

    name: str
    layers: tuple[str, ...]
    kind: str
    refused: str | None = None


@dataclass(frozen=True)
class Applied:
    """What applying one setting did: the achieved amount and the cost change of the whole model."""

    achieved: float | None
    d_params: int = 0
    d_nonzeros: int = 0
    d_bytes: int = 0
    d_macs: int = 0


def own_parameters(model: nn.Module, layers: Iterable[str]) -> list[tuple[str, Any]]:
    """``(qualified name, tensor)`` of the parameters the named layers hold themselves."""
    out = []
    for layer in layers:
        for pname, p in get_module(model, layer).named_parameters(recurse=False):
            out.append((f"{layer}.{pname}", p))
    return out


def weight_bytes(numel: int, channels: int, bits: int, granularity: str, symmetric: bool = True) -> int:
    """Bytes of a weight of ``numel`` elements stored at ``bits`` bits with its scales (fp32) and zero points (int8).

    Example:
        >>> weight_bytes(400_000, 500, 4, "channel")       # 200,000 B of codes + 500 fp32 scales
        202000
    """
    scales = channels if granularity == "channel" else 1
    return math.ceil(numel * bits / 8) + scales * (4 if symmetric else 5)


class Analysis:
    """One option kind: its units on a model, and one setting applied to one unit of a copy.

    Subclasses set ``name``, ``setting`` (what the numbers mean), ``technique`` (whose
    :meth:`~torchslim.technique.Technique.candidates` are the layers it may change) and
    ``stronger`` (``up``: a larger setting compresses more; ``down``: a smaller one does).
    """

    name: ClassVar[str]
    setting: ClassVar[str]
    technique: ClassVar[Technique[Any, Any]]
    stronger: ClassVar[Literal["up", "down"]] = "up"
    #: whether the option can change the model's MACs (measured after it when so)
    changes_macs: ClassVar[bool] = False

    def units(self, model: nn.Module, x: Any, layers: list[str]) -> list[Unit]:
        """A unit per chosen layer (in ``layers`` order); a layer the technique does not handle is refused with why."""
        candidates = {n for n, _ in self.technique.candidates(model)}
        out = []
        for name in layers:
            module = get_module(model, name)
            refused = None
            if name not in candidates:
                params = [n for n, _ in module.named_parameters(recurse=False)]
                refused = self.technique.skip_reason(name, module, params) or f"{type(module).__name__}: not handled"
            out.append(Unit(name, (name,), type(module).__name__, refused))
        return out

    def apply(self, work: nn.Module, unit: Unit, setting: float, options: dict[str, Any], x: Any) -> Report:
        """Apply ``setting`` to ``unit`` of ``work`` in place, through the technique's verb."""
        raise NotImplementedError

    def achieved(self, layer: LayerReport, setting: float) -> float | None:
        """The amount the verb achieved on the unit (its report entry), in the setting's units."""
        return setting

    def bytes_change(self, base: nn.Module, unit: Unit, setting: float, options: dict[str, Any]) -> int | None:
        """The change of the stored bytes when it is not the sparse-bytes difference of the models (``None``)."""
        return None


class Unstructured(Analysis):
    name, setting, technique = "unstructured", "sparsity", PRUNE

    def apply(self, work: nn.Module, unit: Unit, setting: float, options: dict[str, Any], x: Any) -> Report:
        cfg = {"sparsity": setting, "scope": "layer", "keep_first_last": False, "targets": {unit.name: {}}}
        return prune_(work, cfg)

    def achieved(self, layer: LayerReport, setting: float) -> float | None:
        return layer.sparsity


class Structured(Analysis):
    name, setting, technique, changes_macs = "structured", "channels removed", PRUNE_STRUCTURED, True

    def units(self, model: nn.Module, x: Any, layers: list[str]) -> list[Unit]:
        """A unit per coupled channel group with a chosen producer; a chosen layer that produces none is refused."""
        try:
            deps = dependency_groups(model, x)
        except Exception as exc:  # noqa: BLE001 - a model the dependency engine fails on: every layer refused, with why
            why = f"no channel groups: {exc}" if isinstance(exc, TorchslimError) else f"no channel groups: {type(exc).__name__}: {exc}"
            return [Unit(n, (n,), type(get_module(model, n)).__name__, why) for n in layers]
        chosen = set(layers)
        out, covered = [], set()
        for g in deps.groups:
            if not g.producers or not chosen & set(g.producers):
                continue
            members = tuple(dict.fromkeys(m.module for m in g.members))
            refused = f"frozen: {g.frozen}" if g.frozen else None
            out.append(Unit(g.producers[0], members, "channel group", refused))
            covered.update(g.producers)
        for name in layers:
            if name not in covered:
                why = deps.blocked.get(name) or "produces no prunable channel group"
                out.append(Unit(name, (name,), type(get_module(model, name)).__name__, why))
        order = {n: i for i, n in enumerate(layers)}
        return sorted(out, key=lambda u: order.get(u.name, len(order)))

    def apply(self, work: nn.Module, unit: Unit, setting: float, options: dict[str, Any], x: Any) -> Report:
        cfg = {"granularity": "channel", "sparsity": setting, "round_to": options["round_to"],
               "keep_first_last": False, "targets": {unit.name: {}}}
        return prune_(work, cfg, example_input=x)

    def achieved(self, layer: LayerReport, setting: float) -> float | None:
        before, after = layer.details.get("width_before", {}), layer.details.get("width_after", {})
        if isinstance(before, dict) and isinstance(after, dict) and before.get("out") and "out" in after:
            return 1.0 - after["out"] / before["out"]
        return None


class Bits(Analysis):
    name, setting, technique, stronger = "bits", "weight bits", QUANTIZE, "down"

    def apply(self, work: nn.Module, unit: Unit, setting: float, options: dict[str, Any], x: Any) -> Report:
        weight = {"bits": int(setting), "granularity": options["granularity"]}
        cfg = {"mode": "weight_only", "weight": weight, "keep_first_last": False, "targets": {unit.name: {}}}
        return quantize_(work, cfg)

    def bytes_change(self, base: nn.Module, unit: Unit, setting: float, options: dict[str, Any]) -> int | None:
        """The weight at ``setting`` bits with its scales instead of its float bytes (the bias stays float)."""
        weight = getattr(get_module(base, unit.name), "weight", None)
        if weight is None:
            return 0
        packed = weight_bytes(weight.numel(), int(weight.shape[0]), int(setting), options["granularity"])
        return packed - weight.numel() * weight.element_size()


class LowRank(Analysis):
    name, setting, technique, stronger, changes_macs = "lowrank", "parameters kept", FACTORIZE, "down", True

    def apply(self, work: nn.Module, unit: Unit, setting: float, options: dict[str, Any], x: Any) -> Report:
        cfg = {"ratio": setting, "keep_first_last": False, "targets": {unit.name: {}}}
        return factorize_(work, cfg, example_input=x)

    def achieved(self, layer: LayerReport, setting: float) -> float | None:
        before, after = layer.details.get("params_before"), layer.details.get("params_after")
        if isinstance(before, int) and isinstance(after, int) and before > 0:
            return after / before
        return None


#: the analyses by name (``unstructured``, ``structured``, ``bits``, ``lowrank``)
ANALYSES: Registry[Analysis] = Registry("sensitivity analysis")
for _analysis in (Unstructured(), Structured(), Bits(), LowRank()):
    ANALYSES.register(_analysis.name)(_analysis)
